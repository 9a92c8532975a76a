"""EFTNAS's first-order importance (eq. 3): accumulated during fine-tuning, stored, reduced to heads and channels.

S = -alpha * sum_t dL/dW^(t) * W^(t), element-wise, for the weights of every linear that can be made elastic.
-dL/dW * W is the first-order Taylor estimate of how much the loss would rise if that weight were set to zero,
so a large S marks a weight the task needs. `ImportanceCallback` reads gradients just before each optimizer step
of the HF Trainer, when they are complete (accumulated over micro-batches and synchronised across processes).
The scores file (importance.safetensors) is read by Algorithm 1 (`space.py`) and the reordering (`reorder.py`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from .errors import UserError
from .files import atomic_file
from .subnet import BertShape

SCORES_NAME = "importance.safetensors"
ELASTIC_SUFFIXES = ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                    "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight")


def elastic_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of every elastic linear: Q, K, V, attention output, FFN intermediate and output."""
    return [name for name, _ in model.named_parameters()
            if ".encoder.layer." in name and name.endswith(ELASTIC_SUFFIXES)]


class ImportanceCallback(TrainerCallback):
    """Accumulates S = -alpha * sum_t grad * W over optimizer steps; saved beside every Trainer checkpoint."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha
        self.scores: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model: nn.Module = None, **kwargs):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in elastic_weight_names(model):
                p = params[name]
                if p.grad is None:
                    continue
                step = -self.alpha * p.grad.float() * p.float()
                self.scores[name] = step + self.scores[name].to(step.device) if name in self.scores else step

    def on_save(self, args, state, control, **kwargs):
        """Scores are training state: a resumed run must continue the sum, so each checkpoint carries it."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir() and self.scores:
            save_scores(self.scores, checkpoint / SCORES_NAME)

    def resume_from(self, checkpoint: str | os.PathLike) -> None:
        path = Path(checkpoint) / SCORES_NAME
        if not path.is_file():
            raise UserError(f"checkpoint {checkpoint} has no {SCORES_NAME}; remove it to restart fine-tuning")
        self.scores = load_scores(path)


def save_scores(scores: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Written atomically: a checkpoint never holds half a file."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in scores.items()}, str(tmp))


def load_scores(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Raw element scores from importance.safetensors, or from a fine-tuning output folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_NAME
    if not path.is_file():
        raise UserError(f"importance scores not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"importance scores {path} are corrupt ({e})") from None


def _layer_weight(scores: dict[str, torch.Tensor], layer: int, suffix: str) -> torch.Tensor:
    key = f"encoder.layer.{layer}.{suffix}"
    matches = [v for k, v in scores.items() if k.endswith(key) and (k == key or k[: -len(key)].endswith("."))]
    if len(matches) != 1:
        raise UserError(f"importance scores have no single entry for {key} (wrong model or truncated file?)")
    return matches[0].float()


def layer_scores(scores: dict[str, torch.Tensor], shape: BertShape, layer: int) -> dict[str, torch.Tensor]:
    """One layer's element scores keyed by the short names query, key, value, attention_output, intermediate,
    output, checked against `shape`."""
    names = ("query", "key", "value", "attention_output", "intermediate", "output")
    out = {n: _layer_weight(scores, layer, s) for n, s in zip(names, ELASTIC_SUFFIXES)}
    inner, hd, ffn = shape.num_heads * shape.head_size, shape.hidden_size, shape.intermediate_size
    expected = {"query": (inner, hd), "key": (inner, hd), "value": (inner, hd), "attention_output": (hd, inner),
                "intermediate": (ffn, hd), "output": (hd, ffn)}
    for n, t in out.items():
        if tuple(t.shape) != expected[n]:
            raise UserError(f"layer {layer} {n} scores have shape {tuple(t.shape)}, the model needs {expected[n]}")
    return out


def head_importance(scores: dict[str, torch.Tensor], shape: BertShape) -> torch.Tensor:
    """[L, H]: mean element score over everything removing a head removes (its Q, K, V rows and output columns).

    Q and K are combined as in the paper. V and the attention-output columns are included too because removing
    a head deletes them as well, and the first-order estimate of the loss change of removing a group of weights
    is the sum of their element terms; leaving them out would ignore the path through which the head writes
    to the residual stream. All heads hold the same number of weights, so the mean ranks like the sum.
    """
    rows = []
    for layer in range(shape.num_layers):
        s = layer_scores(scores, shape, layer)
        qkv = torch.cat([s["query"], s["key"], s["value"]], dim=1).view(shape.num_heads, -1)
        out = s["attention_output"].T.reshape(shape.num_heads, -1)
        rows.append(torch.cat([qkv, out], dim=1).mean(dim=1))
    return torch.stack(rows)


def channel_importance(scores: dict[str, torch.Tensor], shape: BertShape) -> torch.Tensor:
    """[L, F]: mean element score of each FFN channel's intermediate row and output column."""
    rows = []
    for layer in range(shape.num_layers):
        s = layer_scores(scores, shape, layer)
        rows.append(torch.cat([s["intermediate"], s["output"].T], dim=1).mean(dim=1))
    return torch.stack(rows)
