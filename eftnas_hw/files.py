"""Files that are never half-written, and inputs identified by content.

Every output goes through `atomic_file` (one file) or `atomic_output_dir` (one folder): it is written under a
temporary name beside its destination and renamed when complete, so a reader, or a run resumed after a kill,
never sees half of it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UserError


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it keep working); on success it
    replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_writable(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Refuse, before any work, an output that cannot be written: a parent that is a file, a location nobody can
    write in, or (without `overwrite`) an existing output. Creates nothing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists (pass --overwrite to replace it)")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".eftnas-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {path}: {parent} is not writable ({e.strerror})") from None
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    text = json.dumps(data, indent=1) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """One header from the first row's keys; rows may omit keys (empty cells)."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line UserError naming `what`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated ({e})") from None


def file_digest(path: str | os.PathLike) -> str:
    """Content hash (16 hex digits of SHA-256): the identity of an input, whatever its path or modification time,
    so a fresh clone or a copied run folder recognises the same table or weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def json_digest(data: Any) -> str:
    """Content hash (16 hex digits of SHA-256) of JSON-able data, independent of key order: stage keys, a latency
    table's identity, a data split's identity."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on failure it is removed.

    An existing `out` is refused unless `overwrite`, before any work is done.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} exists (pass --overwrite to replace it)")
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
