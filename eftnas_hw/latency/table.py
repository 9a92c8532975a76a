"""The latency lookup table: per-block costs measured on one machine under one profile, a calibration fitted on
whole subnets, and optionally an anchor that re-fits it to the machine it is used on.

Prediction (microseconds, no model in sight), in three steps:
1. block sum: fixed part + sum over layers of attention[heads] + ffn(width), ffn(width) interpolated linearly
   between measured grid widths, times (1 + the measured penalty) for widths off the CPU's measured alignment
   (`profiler.granularity_from_ms`: 32 in bf16 and 64 in INT8 on a Xeon with AMX, none on the EPYCs);
2. calibration, fitted on whole subnets measured end to end: a linear model (`CALIBRATION_FEATURES`: scale x block
   sum + offset + a cost per attention block and per FFN block kept), or a curve in the log of the block sum
   (`log_curve`: ms = exp(a + b ln(sum) + c ln(sum)^2)). Why the curve: in bf16 on the EPYC the measured/summed ratio
   rises from the full model to mid-sized subnets and falls again for the smallest, a wave no linear form of these
   features follows (mid-sized subnets 4-9% above the linear table); the curve predicts the default run's front within
   1.6% where the linear table missed by up to 9%. Why the counts: a removed sub-block does
   not remove all of its cost once it sits in a real model (fused kernels and layer norms at the seams, and in
   bf16/INT8 the conversions and fixed per-operation costs that dominate small blocks), so subnets with removed
   blocks came out under-predicted by 15-25% from the block sum alone. A third form leaves the block sum out: a cost
   per kept head, per kept FFN channel (off-alignment channels weighted by the measured penalty) and per kept block,
   for short sequences only (`profiler.STRUCTURAL_MAX_SEQ_LEN`). Why: at length 32 the one-layer block models run
   0.03-0.3 ms, where a block's cost alone and in context differ by more than the subnets' spread (session 26, 2-vCPU
   Xeon, MiniLM-L6: unseen subnets within 5% 88-100% against the log curve's 79-88%). The build keeps whichever
   form has the lowest leave-one-out error on its own subnets;
3. anchor (`anchor.py`): `scale * calibrated + offset_ms`, fitted on this machine's end-to-end measurements of a
   few subnets, because machines of the same kind run at different speeds (-27% seen between two Xeons).
"""
from __future__ import annotations

import math
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
VERSION = 2
# What the calibration is linear in (step 2 of the module docstring), in this order.
CALIBRATION_FEATURES = ("block_sum_ms", "one", "attention_blocks", "ffn_blocks", "heads", "ffn_channels")
# Features tables from before session 26 do not name: their coefficient there is 0 (no such candidate existed).
LATER_FEATURES = ("heads", "ffn_channels")
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
            measured = np.asarray([self.fixed_ms, *self.attention_ms, *ffn_ms])
            if not np.all(np.isfinite(measured)) or np.any(measured < 0) or self.fixed_ms <= 0:
                raise ValueError("block latencies must be finite, non-negative milliseconds (fixed cost positive)")
            if len(self.attention_ms) != self.shape.num_heads + 1 or len(grid) != len(ffn_ms) or len(grid) < 2 \
                    or grid[0] != 0 or grid[-1] != self.shape.intermediate_size or np.any(np.diff(grid) <= 0):
                raise ValueError("block arrays do not match the shape")
            # Every integer width precomputed once: a prediction is then a few list look-ups.
            self.ffn_ms = np.interp(np.arange(self.shape.intermediate_size + 1), grid, ffn_ms).tolist()
            granularity = blocks.get("granularity") or {"alignment": 1, "penalty": 0.0}
            self.ffn_alignment, self.ffn_penalty = int(granularity["alignment"]), float(granularity["penalty"])
            if self.ffn_alignment < 1 or not 0 <= self.ffn_penalty < 10:
                raise ValueError("FFN alignment must be a positive width and its penalty a fraction in [0, 10)")
            # Widths off the alignment run slower than the line (step 1): their block and, in the per-channel
            # calibration, each of their kept channels count (1 + penalty) times.
            slower = [1.0 + self.ffn_penalty if self.ffn_alignment > 1 and w % self.ffn_alignment else 1.0
                      for w in range(self.shape.intermediate_size + 1)]
            self.ffn_ms = [v * f for v, f in zip(self.ffn_ms, slower)]
            self.ffn_channels = [w * f for w, f in enumerate(slower)]
            if data.get("version") != VERSION:
                raise UserError(f"latency table format version {data.get('version')} is not {VERSION} (tables of "
                                "earlier versions used another protocol and cost model): build it again")
            coef = data["calibration"]["coef"]
            self.coef = [float(coef.get(name, 0.0) if name in LATER_FEATURES else coef[name])
                         for name in CALIBRATION_FEATURES]
            curve = data["calibration"].get("log_curve")  # {a, b, c}: replaces the linear coefficients when set
            self.log_curve = None if curve is None else {k: float(curve[k]) for k in "abc"}
            anchor = data.get("anchor") or {"scale": 1.0, "offset_ms": 0.0}
            self.anchor_scale, self.anchor_offset_ms = float(anchor["scale"]), float(anchor["offset_ms"])
            numbers = [*self.coef, *(self.log_curve or {}).values(), self.anchor_scale, self.anchor_offset_ms]
            if not np.all(np.isfinite(numbers)) or self.anchor_scale <= 0:
                raise ValueError("calibration and anchor coefficients must be finite (anchor scale positive)")
            if self.predict_ms(self.shape.full_subnet()) <= 0:
                raise ValueError("the full model is predicted at no time or less")
            self.validation: dict = data.get("validation") or {}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"not a valid latency table ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike, force: bool = False) -> "LatencyTable":
        """Read a table; refuse one measured on another machine/OpenVINO unless `force` (then warn)."""
        return cls.read(path).checked_here(force)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "LatencyTable":
        """Read a table without asking where it was measured (`checked_here` does)."""
        data = read_json(path, "latency table")
        if not isinstance(data, dict):
            raise UserError(f"latency table {path} is not a JSON object")
        table = cls(data)
        table.path = Path(path)
        return table

    def checked_here(self, force: bool = False) -> "LatencyTable":
        """This table, unless it was measured on another kind of machine / OpenVINO (then refused, or with
        `force` a warning)."""
        diffs = fingerprint_differences(self.machine, hardware_fingerprint(self.profile))
        if diffs:
            message = f"latency table {self.path} was measured elsewhere: " + "; ".join(diffs)
            if not force:
                raise UserError(message + " (pass --force to use it anyway)")
            warn(message + " (used anyway because of --force)")
        return self

    @property
    def machine(self) -> dict:
        """The fingerprint of the machine the predictions are for: the anchor's, else the builder's."""
        return (self.data.get("anchor") or {}).get("fingerprint") or self.fingerprint

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

    def features(self, subnet: SubnetConfig) -> list[float]:
        """The calibration's inputs (`CALIBRATION_FEATURES`)."""
        return [self.raw_ms(subnet), 1.0, float(sum(h > 0 for h in subnet.heads)),
                float(sum(f > 0 for f in subnet.ffn)), float(sum(subnet.heads)),
                sum(self.ffn_channels[f] for f in subnet.ffn)]

    def calibrated_ms(self, subnet: SubnetConfig) -> float:
        """The prediction on the machine the table was built on (steps 1-2, no anchor)."""
        if self.log_curve is not None:
            return log_curve_ms(self.log_curve, self.raw_ms(subnet))
        return sum(c * x for c, x in zip(self.coef, self.features(subnet)))

    def predict_ms(self, subnet: SubnetConfig) -> float:
        """Predicted latency of the exported subnet in ms under the table's profile (table look-ups only)."""
        if len(subnet.heads) != self.shape.num_layers:
            raise UserError(f"subnet has {len(subnet.heads)} layers, the table's model has {self.shape.num_layers}")
        try:
            return self.anchor_scale * self.calibrated_ms(subnet) + self.anchor_offset_ms
        except IndexError:
            subnet.validate(self.shape)  # names the layer and width out of range
            raise

    def off_alignment(self, ffn_step: int) -> str | None:
        """Why a search space with FFN widths in steps of `ffn_step` would hold widths this CPU runs slower (the
        measured alignment does not divide the step), or None."""
        if ffn_step % self.ffn_alignment == 0:
            return None
        return (f"FFN granularity {ffn_step} puts widths off multiples of {self.ffn_alignment}, which run "
                f"{100 * self.ffn_penalty:.0f}% slower per FFN block under {self.profile.condition} here (measured by "
                f"the latency table, which predicts them so); --set space.ffn_step={self.ffn_alignment} keeps the "
                "space on fast widths")

    def shape_differences(self, shape: BertShape) -> list[str]:
        """The cost-relevant dimensions in which `shape` differs from the table's, e.g. "num_layers 4 (table 6)"."""
        return [f"{f} {getattr(shape, f)} (table {getattr(self.shape, f)})" for f in COST_FIELDS
                if getattr(shape, f) != getattr(self.shape, f)]

    def check_shape(self, shape: BertShape) -> None:
        """Raise UserError when `shape` (a supernet's) differs from the table's in a cost-relevant dimension."""
        diffs = self.shape_differences(shape)
        if diffs:
            raise UserError("the latency table was built for another model shape: " + ", ".join(diffs))


def log_curve_ms(curve: dict, block_sum_ms: float) -> float:
    """The curve calibration (step 2): exp(a + b ln(sum) + c ln(sum)^2)."""
    log_sum = math.log(block_sum_ms)
    return math.exp(curve["a"] + curve["b"] * log_sum + curve["c"] * log_sum * log_sum)


def find_shipped_table(shape: BertShape, profile: Profile, force: bool = False) -> LatencyTable | None:
    """The shipped table (latency_tables/<cpu>/) for this shape and profile (compared by content, so an `auto`
    profile finds the table of the precision it resolved to) that is valid on this machine, loaded (its `path`
    says which file it is); one built on a machine with this very fingerprint first, then one of the same kind."""
    here = hardware_fingerprint(profile)
    found = []
    for path in sorted(tables_dir().rglob("*.json")):
        try:
            table = LatencyTable.read(path)
            if profile.same_condition(table.profile) and not table.shape_differences(shape):
                found.append(table.checked_here(force))
        except UserError as e:
            print(f"[latency] {path.name} not usable here: {e}")
    exact = [t for t in found if all(t.fingerprint.get(k) == v for k, v in here.items() if k != "profile")]
    return (exact or found or [None])[0]
