"""Feed-forward blocks on real tokens only: the same logits and gradients, plain classes again for export."""
from __future__ import annotations

import copy

import torch
from transformers import BertConfig, BertForQuestionAnswering
from transformers.models.bert.modeling_bert import BertLayer, BertModel

from eftnas_hw.elastic import ElasticBert
from eftnas_hw.models import random_bert
from eftnas_hw.subnet import SubnetConfig
from eftnas_hw.unpadding import UnpaddedBertLayer, UnpaddedBertModel, strip_unpadding, unpad_feed_forward
from conftest import token_batch


def _loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1]))
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_unpadded_classifier_has_the_same_logits_and_gradients(tiny_shape):
    plain = random_bert(tiny_shape, seed=3)  # eval mode: no dropout, so both see the same function
    unpadded = unpad_feed_forward(copy.deepcopy(plain))
    assert type(unpadded.bert) is UnpaddedBertModel
    assert all(type(layer) is UnpaddedBertLayer for layer in unpadded.bert.encoder.layer)
    calls = []
    unpadded.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    batch = token_batch(seed=1)  # the second of three sequences is padded from 8 of 12 tokens
    logits, grads = _loss_and_grads(plain, batch)
    logits_u, grads_u = _loss_and_grads(unpadded, batch)
    assert calls == [torch.Size([3 * 12 - 4, tiny_shape.hidden_size])]  # the FFN saw the 32 real tokens only
    assert torch.allclose(logits, logits_u, atol=1e-5)
    assert grads.keys() == grads_u.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_u[name], atol=1e-5), name
    assert all(layer.token_mask is None for layer in unpadded.bert.encoder.layer)  # nothing left behind


def test_strip_unpadding_gives_plain_transformers_classes(tiny_shape):
    model = unpad_feed_forward(random_bert(tiny_shape))
    strip_unpadding(model)
    assert type(model.bert) is BertModel
    assert all(type(layer) is BertLayer and "token_mask" not in vars(layer) for layer in model.bert.encoder.layer)


def test_qa_models_stay_padded():
    config = BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    model = unpad_feed_forward(BertForQuestionAnswering(config))
    assert type(model.bert) is BertModel and type(model.bert.encoder.layer[0]) is BertLayer


def test_extracted_subnet_of_an_unpadded_supernet_is_plain(tiny_shape):
    supernet = ElasticBert(random_bert(tiny_shape, seed=5))
    assert type(supernet.model.bert) is UnpaddedBertModel
    sub = supernet.set_active_subnet(SubnetConfig((2, 0), (64, 128))).get_active_subnet()
    assert type(sub.bert) is BertModel
    assert all(type(layer) is BertLayer for layer in sub.bert.encoder.layer)
