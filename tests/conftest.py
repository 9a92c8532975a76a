"""Shared fixtures: a tiny random BERT folder (fast) and the real GLUE folder when it is beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from eftnas_hw.models import load_tokenizer, random_bert, save_model
from eftnas_hw.subnet import BertShape

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE = BertShape(num_layers=2, hidden_size=64, num_heads=4, head_size=16, intermediate_size=128,
                       max_position=128)


def load_tool(name: str):
    """A script of tools/ as a module (they are not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_document(shape: BertShape, profile, fixed_ms: float, attention_ms: list[float], ffn_grid: list[int],
                   ffn_ms: list[float], coef: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0)) -> dict:
    """A complete latency table document with known numbers (no measuring), valid on this machine."""
    from eftnas_hw.latency import hardware_fingerprint
    from eftnas_hw.latency.table import CALIBRATION_FEATURES, FORMAT, VERSION

    return {"format": FORMAT, "version": VERSION, "shape": shape.to_dict(), "profile": profile.to_dict(),
            "fingerprint": hardware_fingerprint(profile), "complete": True,
            "blocks": {"fixed_ms": fixed_ms, "attention_ms": attention_ms, "ffn_grid": ffn_grid, "ffn_ms": ffn_ms},
            "calibration": {"coef": dict(zip(CALIBRATION_FEATURES, coef))}, "validation": {"n": 0}}


def token_batch(seed: int = 0, length: int = 12) -> dict:
    """Three random token sequences, the second padded from 2/3 of its length: a batch with a real mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 2000, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 2 * length // 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def tiny_shape() -> BertShape:
    return TINY_SHAPE


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT (hidden 64, 4 heads, FFN 128) with the real MiniLM tokenizer, as an HF folder."""
    out = tmp_path_factory.mktemp("tiny") / "bert"
    save_model(random_bert(TINY_SHAPE, seed=0), out, load_tokenizer(None))
    return out


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """../shared/data/glue (or $EFTNAS_GLUE_DIR); tests that need real GLUE files skip without it."""
    path = Path(os.environ.get("EFTNAS_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    if not (path / "SST-2").is_dir():
        pytest.skip(f"real GLUE files not found at {path} (set EFTNAS_GLUE_DIR)")
    return path
