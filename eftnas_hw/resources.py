"""The data that ships with eftnas-hw: deployment profiles (`profiles/`) and measured latency tables
(`latency_tables/<cpu>/`). They are top-level folders of the repository and data packages of the wheel
(`eftnas_hw.profiles`, `eftnas_hw.latency_tables`, mapped in pyproject.toml), so they are found the same way in
a source checkout, an editable install and a plain `pip install .`, from any working directory."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder(package: str) -> Path:
    return Path(str(resources.files(package)))


def profiles_dir() -> Path:
    return _folder("eftnas_hw.profiles")


def tables_dir() -> Path:
    return _folder("eftnas_hw.latency_tables")
