"""Elastic BERT: one weight tree, any per-layer (heads, FFN width) active, removed blocks skipped.

Slicing is prefix slicing of the (importance-reordered) weights. `ElasticLinear.active_weight()` is the one
slicing code path: the elastic forward uses its views, `get_active_subnet()` copies them into plain
`nn.Linear`s, so an activated subnet and its extracted standalone model cannot disagree.

A removed sub-block (0 heads or FFN width 0) is skipped outright: the layer passes its input through on the
residual path (no projection bias, no LayerNorm), so there are no zero-size tensors in PyTorch or the IR.
"""
from __future__ import annotations

import copy
import random
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertLayer, BertOutput

from .subnet import BertShape, SearchSpace, SubnetConfig
from .unpadding import UnpaddedBertLayer, strip_unpadding, unpad_feed_forward


class ElasticLinear(nn.Linear):
    """nn.Linear whose leading rows (outputs) and columns (inputs) can be narrowed without copying."""

    active_out: int | None = None
    active_in: int | None = None

    def active_weight(self) -> torch.Tensor:
        return self.weight[: self.active_out, : self.active_in]

    def active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[: self.active_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())

    def get_active_linear(self) -> nn.Linear:
        w, b = self.active_weight(), self.active_bias()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        return lin


class RemovedAttention(nn.Module):
    """Stands in for a layer's attention when it has 0 heads: the residual path only."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return hidden_states, None


class RemovedFFNOutput(nn.Module):
    """Stands in for BertOutput when the FFN has width 0 (BertIntermediate becomes nn.Identity)."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor


class ElasticBertAttention(BertAttention):
    active_heads: int = -1

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.active_heads == 0:
            return RemovedAttention.forward(self, hidden_states)
        return super().forward(hidden_states, *args, **kwargs)


class ElasticBertIntermediate(BertIntermediate):
    active_width: int = -1

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.active_width == 0 else super().forward(hidden_states)


class ElasticBertOutput(BertOutput):
    active_width: int = -1

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor if self.active_width == 0 else super().forward(hidden_states, input_tensor)


class ElasticBertLayer(UnpaddedBertLayer):
    """A BertLayer that can return a known output instead of computing it: `replay`, set by evaluation when this
    layer's output for the active prefix of layers was computed before (`evaluate.PrefixCache`). Its feed-forward
    block runs on real tokens only in a sequence classifier (`unpadding.py`)."""

    replay: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.replay if self.replay is not None else super().forward(hidden_states, *args, **kwargs)


_ELASTIC_CLASS = {BertLayer: ElasticBertLayer, UnpaddedBertLayer: ElasticBertLayer,
                  BertAttention: ElasticBertAttention, BertIntermediate: ElasticBertIntermediate,
                  BertOutput: ElasticBertOutput}


def _layer_linears(layer: BertLayer) -> dict[str, nn.Linear]:
    att = layer.attention
    return {"query": att.self.query, "key": att.self.key, "value": att.self.value,
            "attention_output": att.output.dense, "intermediate": layer.intermediate.dense,
            "output": layer.output.dense}


class ElasticBert(nn.Module):
    """A BERT classifier (`BertForSequenceClassification`-like, with `.bert`) made elastic in place.

    The wrapped model keeps its parameter names, so its state dict and `save_pretrained` are unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.shape = BertShape.from_config(model.config)
        for layer in self.layers:
            for module in (layer, layer.attention, layer.intermediate, layer.output):
                if type(module) in _ELASTIC_CLASS:
                    module.__class__ = _ELASTIC_CLASS[type(module)]
            for lin in _layer_linears(layer).values():
                lin.__class__ = ElasticLinear
        unpad_feed_forward(model)
        self.active = self.shape.full_subnet()

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.bert.encoder.layer

    @property
    def config(self):
        return self.model.config

    def forward(self, *args: Any, **kwargs: Any):
        return self.model(*args, **kwargs)

    def set_active_subnet(self, cfg: SubnetConfig) -> "ElasticBert":
        cfg.validate(self.shape)
        for layer, heads, width in zip(self.layers, cfg.heads, cfg.ffn):
            inner = heads * self.shape.head_size
            lin = _layer_linears(layer)
            lin["query"].active_out = lin["key"].active_out = lin["value"].active_out = inner
            lin["attention_output"].active_in = inner
            lin["intermediate"].active_out = lin["output"].active_in = width
            layer.attention.active_heads = heads
            layer.intermediate.active_width = layer.output.active_width = width
        self.active = cfg
        return self

    def sample_active_subnet(self, space: SearchSpace, rng: random.Random) -> SubnetConfig:
        cfg = space.sample(rng)
        self.set_active_subnet(cfg)
        return cfg

    def get_active_subnet(self) -> nn.Module:
        """A standalone copy of the active subnet: plain transformers modules with physically smaller layers."""
        sub = copy.deepcopy(self.model)
        strip_unpadding(sub)
        for layer, heads, width in zip(sub.bert.encoder.layer, self.active.heads, self.active.ffn):
            if heads == 0:
                layer.attention = RemovedAttention()
            else:
                layer.attention.__class__ = BertAttention
                for name in ("query", "key", "value"):
                    setattr(layer.attention.self, name, getattr(layer.attention.self, name).get_active_linear())
                layer.attention.output.dense = layer.attention.output.dense.get_active_linear()
            if width == 0:
                layer.intermediate, layer.output = nn.Identity(), RemovedFFNOutput()
            else:
                layer.intermediate.__class__, layer.output.__class__ = BertIntermediate, BertOutput
                layer.intermediate.dense = layer.intermediate.dense.get_active_linear()
                layer.output.dense = layer.output.dense.get_active_linear()
        sub.config.eftnas_subnet = self.active.to_dict()
        return sub
