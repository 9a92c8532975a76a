"""Reordering strategies: a reordered full model computes the same function, and the chosen units come first."""
from __future__ import annotations

import copy

import pytest
import torch

from eftnas_hw.errors import UserError
from eftnas_hw.importance import channel_importance, head_importance
from eftnas_hw.models import random_bert
from eftnas_hw.reorder import l1_importance, ordering_from_importance, reorder_model
from conftest import token_batch


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**token_batch()).logits


def random_scores(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Stand-in for fine-tuning's importance.safetensors: one random score per elastic weight."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()
            if name.startswith("bert.encoder.layer.") and "LayerNorm" not in name}


def test_ordering_from_importance_is_descending_and_stable():
    heads = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
    channels = torch.tensor([[3.0, 1.0, 2.0]])
    ordering = ordering_from_importance(heads, channels)
    assert ordering.heads == ((1, 3, 2, 0),)  # the tie 1/3 keeps the original order
    assert ordering.ffn == ((0, 2, 1),)


@pytest.mark.parametrize("strategy", ["none", "l1", "first-order"])
def test_reordered_model_computes_the_same_function(tiny_shape, strategy):
    model = random_bert(tiny_shape, seed=1)
    before = _logits(model)
    ordering = reorder_model(model, strategy, random_scores(model))
    assert torch.allclose(_logits(model), before, atol=1e-5)
    identity = tuple(range(tiny_shape.num_heads))
    if strategy == "none":
        assert all(p == identity for p in ordering.heads)
    else:
        assert any(p != identity for p in ordering.heads)  # random weights: some layer really is permuted


def test_l1_moves_the_heaviest_units_first(tiny_shape):
    model = random_bert(tiny_shape, seed=2)
    with torch.no_grad():  # make head 2 of layer 0 and FFN channel 77 of layer 1 by far the heaviest
        model.bert.encoder.layer[0].attention.self.value.weight[32:48] *= 10
        model.bert.encoder.layer[1].intermediate.dense.weight[77] *= 50
    original = copy.deepcopy(model)
    ordering = reorder_model(model, "l1")
    assert ordering.heads[0][0] == 2 and ordering.ffn[1][0] == 77
    new_value = model.bert.encoder.layer[0].attention.self.value.weight
    assert torch.equal(new_value[:16], original.bert.encoder.layer[0].attention.self.value.weight[32:48])
    heads, channels = l1_importance(model)  # after reordering, importance is non-increasing along each layer
    assert (heads[:, :-1] >= heads[:, 1:]).all() and (channels[:, :-1] >= channels[:, 1:]).all()


def test_first_order_follows_the_scores(tiny_shape):
    model = random_bert(tiny_shape, seed=3)
    scores = random_scores(model, seed=4)
    ordering = reorder_model(model, "first-order", scores)
    heads = head_importance(scores, tiny_shape)
    channels = channel_importance(scores, tiny_shape)
    for layer in range(tiny_shape.num_layers):
        assert ordering.heads[layer][0] == int(heads[layer].argmax())
        assert ordering.ffn[layer][0] == int(channels[layer].argmax())
        assert sorted(ordering.ffn[layer]) == list(range(tiny_shape.intermediate_size))


def test_bad_strategy_and_missing_scores_are_user_errors(tiny_shape):
    model = random_bert(tiny_shape)
    with pytest.raises(UserError, match="unknown reordering"):
        reorder_model(model, "random")
    with pytest.raises(UserError, match="needs the importance scores"):
        reorder_model(model, "first-order", None)
