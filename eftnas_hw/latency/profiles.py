"""Deployment profiles: the inference condition (device, threads, batch, length, precision) a table is valid for.

A latency measured with 1 thread says nothing about 2 threads or another sequence length, so every table
carries its profile and every measurement compiles with exactly the profile's OpenVINO settings.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import UserError
from ..resources import profiles_dir
from ..settings import read_yaml

PRECISIONS = ("auto", "f32", "bf16", "int8")
HINTS = ("LATENCY", "THROUGHPUT")


def default_precision(device: str = "CPU") -> str:
    """What OpenVINO runs an f32 IR in when nobody asks: its own answer (bf16 on CPUs with AMX or AVX512-BF16,
    f32 elsewhere), so `auto` follows the plugin rather than a list of CPU flags kept here."""
    from .measure import core

    return core().get_property(device, "INFERENCE_PRECISION_HINT").to_string()


def supported_precisions(device: str = "CPU") -> tuple[str, ...]:
    """The precisions a profile can ask for on this machine (bf16 only where the plugin offers it)."""
    from .measure import core

    bf16 = "BF16" in core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    return ("f32", "bf16", "int8") if bf16 else ("f32", "int8")


@dataclass(frozen=True)
class Profile:
    """One deployment condition. `precision`: f32 or bf16 execution of the f32 IR, an NNCF INT8 IR, or `auto`:
    what OpenVINO runs by default on this CPU, resolved when the profile is made (`auto` is then True), so a
    profile always names the precision that runs and tables and cards record both."""

    name: str = "custom"
    device: str = "CPU"
    threads: int = 1
    streams: int = 1
    batch: int = 1
    seq_len: int = 128
    precision: str = "auto"
    hint: str = "LATENCY"
    auto: bool = False

    def __post_init__(self) -> None:
        if self.device != "CPU":
            raise UserError(f"profile {self.name}: device {self.device!r} is not supported (only CPU)")
        for field in ("threads", "streams", "batch", "seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"profile {self.name}: {field} must be a positive integer, got {value!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"profile {self.name}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.hint.upper() not in HINTS:
            raise UserError(f"profile {self.name}: hint must be one of {HINTS}, got {self.hint!r}")
        object.__setattr__(self, "hint", self.hint.upper())
        if self.precision == "auto":
            object.__setattr__(self, "precision", default_precision(self.device))
            object.__setattr__(self, "auto", True)
        if self.precision not in PRECISIONS[1:]:
            raise UserError(f"profile {self.name}: OpenVINO's default precision here is {self.precision!r}, "
                            "which this tool does not support; name f32, bf16 or int8")

    @property
    def condition(self) -> str:
        """The measured condition as a name, e.g. cpu-1t-b1-s128-bf16 (what shipped tables are named by)."""
        extra = (f"-{self.streams}st" if self.streams > 1 else "") + ("-tput" if self.hint == "THROUGHPUT" else "")
        return f"{self.device.lower()}-{self.threads}t-b{self.batch}-s{self.seq_len}-{self.precision}{extra}"

    def describe_precision(self) -> str:
        """e.g. "bf16 (OpenVINO's default on this CPU)"."""
        return f"{self.precision} (OpenVINO's default on this CPU)" if self.auto else self.precision

    def same_condition(self, other: "Profile") -> bool:
        """Whether latencies under `other` are latencies under this profile (names and `auto` aside)."""
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in
                   ("name", "auto"))

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "Profile":
        """A shipped profile by name ('cpu-1t-b1-s128' -> profiles/cpu-1t-b1-s128.yaml) or a YAML path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = profiles_dir() / f"{path.name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in profiles_dir().glob("*.yaml")))
            raise UserError(f"profile not found: {name_or_path} (shipped profiles: {known})")
        data = read_yaml(path, "profile")
        return cls.from_dict({"name": path.stem, **data}, str(path))

    @classmethod
    def from_dict(cls, data: dict, what: str = "profile") -> "Profile":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"{what}: unknown settings {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def ov_config(self) -> dict:
        """Properties for `core.compile_model`.

        Explicit threads and streams take precedence over the hint's own choice (checked on the compiled model),
        so the profile's thread count is what runs. f32 and bf16 are requested explicitly, also when they came from
        `auto` (the default could change with OpenVINO; the table then keeps meaning what it measured);
        `measure_compiled` checks that the compiled model really runs the precision asked for.
        """
        config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": self.streams,
                  "PERFORMANCE_HINT": self.hint}
        if self.precision != "int8":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config
