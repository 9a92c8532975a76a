"""The latency lookup table: per-block costs measured on one machine under one profile, plus a calibration.

Prediction (microseconds, no model in sight): fixed part + sum over layers of attention[heads] + ffn(width),
where ffn(width) interpolates linearly between measured grid widths (the table says so in `interpolation`),
then the stored calibration `scale * sum + offset_ms` fitted on whole subnets measured end-to-end.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError, warn
from ..files import json_digest, read_json, write_json_atomic
from ..resources import tables_dir
from ..subnet import BertShape, SubnetConfig
from .fingerprint import fingerprint_differences, hardware_fingerprint
from .profiles import Profile

FORMAT = "eftnas-hw latency table"
VERSION = 1
# The dimensions that change cost; vocabulary size and label count only change a gather / a tiny matmul.
COST_FIELDS = ("num_layers", "hidden_size", "num_heads", "head_size", "intermediate_size")


class LatencyTable:
    """A measured table (see module docstring). `data` is the JSON document; the rest is derived from it."""

    def __init__(self, data: dict):
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"'format' is {data.get('format')!r}, expected {FORMAT!r}")
            self.data = data
            self.path: Path | None = None  # where it was loaded from, if it was
            self.shape = BertShape.from_dict(data["shape"])
            self.profile = Profile.from_dict(data["profile"], "table profile")
            self.fingerprint: dict = data["fingerprint"]
            if not data.get("complete"):
                raise UserError("the table is incomplete (profiling was interrupted): run the same "
                                "`eftnas-hw profile` command again to resume it")
            blocks = data["blocks"]
            self.fixed_ms = float(blocks["fixed_ms"])
            self.attention_ms = [float(v) for v in blocks["attention_ms"]]
            grid = np.asarray(blocks["ffn_grid"], dtype=float)
            ffn_ms = np.asarray(blocks["ffn_ms"], dtype=float)
            if len(self.attention_ms) != self.shape.num_heads + 1 or len(grid) != len(ffn_ms) or len(grid) < 2 \
                    or grid[0] != 0 or grid[-1] != self.shape.intermediate_size or np.any(np.diff(grid) <= 0):
                raise ValueError("block arrays do not match the shape")
            # Every integer width precomputed once: a prediction is then a few list look-ups.
            self.ffn_ms = np.interp(np.arange(self.shape.intermediate_size + 1), grid, ffn_ms).tolist()
            self.scale = float(data["calibration"]["scale"])
            self.offset_ms = float(data["calibration"]["offset_ms"])
            self.validation: dict = data.get("validation") or {}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"not a valid latency table ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike, force: bool = False) -> "LatencyTable":
        """Read a table; refuse one measured on another machine/OpenVINO unless `force` (then warn)."""
        data = read_json(path, "latency table")
        if not isinstance(data, dict):
            raise UserError(f"latency table {path} is not a JSON object")
        table = cls(data)
        table.path = Path(path)
        diffs = fingerprint_differences(table.fingerprint, hardware_fingerprint(table.profile))
        if diffs:
            message = f"latency table {path} was measured elsewhere: " + "; ".join(diffs)
            if not force:
                raise UserError(message + " (pass --force to use it anyway)")
            warn(message + " (used anyway because of --force)")
        return table

    @property
    def digest(self) -> str:
        """Content hash: what a run's stage records identify the table by (not its path or modification time)."""
        return json_digest(self.data)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(Path(path), self.data)

    def raw_ms(self, subnet: SubnetConfig) -> float:
        """Uncalibrated sum of the measured blocks."""
        att, ffn = self.attention_ms, self.ffn_ms
        return self.fixed_ms + sum(att[h] for h in subnet.heads) + sum(ffn[f] for f in subnet.ffn)

    def predict_ms(self, subnet: SubnetConfig) -> float:
        """Predicted latency of the exported subnet in ms under the table's profile (table look-ups only)."""
        if len(subnet.heads) != self.shape.num_layers:
            raise UserError(f"subnet has {len(subnet.heads)} layers, the table's model has {self.shape.num_layers}")
        try:
            return self.scale * self.raw_ms(subnet) + self.offset_ms
        except IndexError:
            subnet.validate(self.shape)  # names the layer and width out of range
            raise

    def check_shape(self, shape: BertShape) -> None:
        """Raise UserError when `shape` (a supernet's) differs from the table's in a cost-relevant dimension."""
        diffs = [f"{f} {getattr(shape, f)} (table {getattr(self.shape, f)})" for f in COST_FIELDS
                 if getattr(shape, f) != getattr(self.shape, f)]
        if diffs:
            raise UserError("the latency table was built for another model shape: " + ", ".join(diffs))


def find_shipped_table(shape: BertShape, profile_name: str, force: bool = False) -> LatencyTable | None:
    """The first shipped table (latency_tables/<cpu>/) for this shape and profile that is valid on this machine,
    loaded (its `path` says which file it is)."""
    for path in sorted(tables_dir().rglob(f"*_{profile_name}.json")):
        try:
            table = LatencyTable.load(path, force=force)
            table.check_shape(shape)
        except UserError as e:
            print(f"[latency] {path.name} not usable here: {e}")
            continue
        return table
    return None
