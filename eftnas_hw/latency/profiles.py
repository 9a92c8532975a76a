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

PRECISIONS = ("f32", "bf16", "int8")
HINTS = ("LATENCY", "THROUGHPUT")


@dataclass(frozen=True)
class Profile:
    """One deployment condition. `precision`: f32 or bf16 execution of the f32 IR, or an NNCF INT8 IR."""

    name: str = "custom"
    device: str = "CPU"
    threads: int = 1
    streams: int = 1
    batch: int = 1
    seq_len: int = 128
    precision: str = "f32"
    hint: str = "LATENCY"

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
        so the profile's thread count is what runs. f32 and bf16 are requested explicitly because the CPU
        plugin picks by itself (bf16 on CPUs with AMX/AVX512-BF16, f32 elsewhere); `measure_compiled` checks
        that the compiled model really runs the precision asked for.
        """
        config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": self.streams,
                  "PERFORMANCE_HINT": self.hint}
        if self.precision != "int8":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config
