"""Physical reordering of heads and FFN channels, so that prefix slices keep the chosen units.

A head permutation moves the head's rows of Q, K and V and its columns of the attention output projection
together: Q and K must share it for the attention scores, V and the output columns for the head's
contribution, so the full model computes exactly the same function after reordering.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .importance import channel_importance, head_importance
from .settings import REORDER_STRATEGIES
from .subnet import BertShape


@dataclass(frozen=True)
class Ordering:
    """Per-layer order of heads and FFN channels, most important first (plain data, JSON-able)."""

    heads: tuple[tuple[int, ...], ...]
    ffn: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict:
        return {"heads": [list(p) for p in self.heads], "ffn": [list(p) for p in self.ffn]}

    @classmethod
    def from_dict(cls, d: dict) -> "Ordering":
        return cls(tuple(tuple(p) for p in d["heads"]), tuple(tuple(p) for p in d["ffn"]))


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    with torch.no_grad():
        linear.weight.copy_(linear.weight.index_select(dim, index))
        if dim == 0 and linear.bias is not None:
            linear.bias.copy_(linear.bias.index_select(0, index))


def apply_ordering(model: nn.Module, ordering: Ordering) -> nn.Module:
    """Permute a full-width BERT's weights in place so layer l's units come in `ordering`'s order."""
    layers = model.bert.encoder.layer
    head_size = model.config.hidden_size // model.config.num_attention_heads
    if len(ordering.heads) != len(layers) or len(ordering.ffn) != len(layers):
        raise UserError(f"ordering has {len(ordering.heads)} layers, the model has {len(layers)}")
    for i, (layer, heads, channels) in enumerate(zip(layers, ordering.heads, ordering.ffn)):
        if sorted(heads) != list(range(model.config.num_attention_heads)) or \
                sorted(channels) != list(range(layer.intermediate.dense.out_features)):
            raise UserError(f"layer {i}: ordering is not a permutation of the model's heads / FFN channels")
        rows = torch.tensor([h * head_size + j for h in heads for j in range(head_size)])
        att = layer.attention
        for lin in (att.self.query, att.self.key, att.self.value):
            _take(lin, rows, 0)
        _take(att.output.dense, rows, 1)
        ffn = torch.tensor(channels)
        _take(layer.intermediate.dense, ffn, 0)
        _take(layer.output.dense, ffn, 1)
    return model


def ordering_from_importance(head_scores: torch.Tensor, channel_scores: torch.Tensor) -> Ordering:
    """Most important first per layer; ties keep the original order (stable sort), so equal scores = identity."""
    def descending(scores: torch.Tensor) -> tuple[tuple[int, ...], ...]:
        order = torch.argsort(-scores.detach().float(), dim=1, stable=True)
        return tuple(tuple(row) for row in order.tolist())

    return Ordering(descending(head_scores), descending(channel_scores))


def l1_importance(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroth-order unit importance: the L1 norm of all the weights that belong to a unit.

    The magnitude criterion of earlier weight-sharing NAS (OFA's channel sorting, NNCF BootstrapNAS's default
    `filter_importance: L1`), extended to whole units: a head's Q/K/V rows plus its attention-output columns,
    an FFN channel's intermediate row plus its output column. Returns ([L, H], [L, F]).
    """
    heads, channels = [], []
    num_heads = model.config.num_attention_heads
    for layer in model.bert.encoder.layer:
        att = layer.attention
        rows = sum(lin.weight.abs().sum(1) for lin in (att.self.query, att.self.key, att.self.value))
        per_inner = rows + att.output.dense.weight.abs().sum(0)
        heads.append(per_inner.view(num_heads, -1).sum(1))
        channels.append(layer.intermediate.dense.weight.abs().sum(1) + layer.output.dense.weight.abs().sum(0))
    return torch.stack(heads).detach(), torch.stack(channels).detach()


def importance_ordering(model: nn.Module, strategy: str, scores: dict[str, torch.Tensor] | None = None) -> Ordering:
    """The ordering a reordering `strategy` picks for `model` (first-order needs the fine-tuning `scores`)."""
    shape = BertShape.from_config(model.config)
    if strategy == "none":
        return Ordering(tuple(tuple(range(shape.num_heads)) for _ in range(shape.num_layers)),
                        tuple(tuple(range(shape.intermediate_size)) for _ in range(shape.num_layers)))
    if strategy == "l1":
        return ordering_from_importance(*l1_importance(model))
    if strategy == "first-order":
        if scores is None:
            raise UserError("reordering 'first-order' needs the importance scores saved by fine-tuning")
        return ordering_from_importance(head_importance(scores, shape), channel_importance(scores, shape))
    raise UserError(f"unknown reordering strategy {strategy!r}; choose from {', '.join(REORDER_STRATEGIES)}")


def reorder_model(model: nn.Module, strategy: str, scores: dict[str, torch.Tensor] | None = None) -> Ordering:
    """Reorder `model` in place by `strategy` so prefix slices keep the most important units; returns the order."""
    ordering = importance_ordering(model, strategy, scores)
    apply_ordering(model, ordering)
    return ordering
