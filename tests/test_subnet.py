import random

import pytest

from eftnas_hw.errors import UserError
from eftnas_hw.models import random_bert
from eftnas_hw.subnet import BertShape, EvaluatedSubnet, SearchSpace, SubnetConfig

BERT_BASE = BertShape(num_layers=12, hidden_size=768, num_heads=12, head_size=64, intermediate_size=3072)


def test_bert_base_macs_match_hand_count():
    # Hand count (paper's "11.2 GFLOPs" = MACs): per layer 4*768*768 + 2*768*3072 weights per token, times 128
    # tokens, plus the two attention matmuls 2*128*128*768; pooler 768*768, classifier 768*2.
    per_layer = (4 * 768 * 768 + 2 * 768 * 3072) * 128 + 2 * 128 * 128 * 768
    expected = 12 * per_layer + 768 * 768 + 768 * 2
    full = BERT_BASE.full_subnet()
    assert full.macs(BERT_BASE, seq_len=128) == expected
    assert round(full.gmacs(BERT_BASE, 128), 1) == 11.2
    assert full.macs(BERT_BASE, 128, batch=4) == 4 * expected


def test_removed_blocks_cost_nothing(tiny_shape):
    full = tiny_shape.full_subnet()
    no_attention = SubnetConfig((0, 4), (128, 128))
    assert no_attention.macs(tiny_shape) < full.macs(tiny_shape)
    assert SubnetConfig((0, 0), (0, 0)).macs(tiny_shape) == tiny_shape.hidden_size * (tiny_shape.hidden_size + 2)


@pytest.mark.parametrize("cfg", [SubnetConfig((4, 2), (128, 64)), SubnetConfig((0, 3), (96, 0))])
def test_params_counted_like_the_model(tiny_shape, cfg):
    from eftnas_hw.models import build_subnet

    model = build_subnet(random_bert(tiny_shape), cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.params(tiny_shape)


def test_json_round_trip(tmp_path):
    cfg = SubnetConfig((12, 8, 6, 4, 4, 2), (1536, 1024, 768, 512, 384, 256))
    cfg.save(tmp_path / "s.json")
    assert SubnetConfig.load(tmp_path / "s.json") == cfg
    space = SearchSpace.from_subnets([cfg, SubnetConfig((12,) * 6, (1536,) * 6)])
    assert SearchSpace.from_dict(space.to_dict()) == space
    record = EvaluatedSubnet(cfg, 0.8, cfg.gmacs(BertShape.named("minilm-l6"), 128), latency_ms=3.5)
    assert EvaluatedSubnet.from_dict(record.to_dict()) == record
    assert (record.cost("latency_ms"), record.cost("gmacs")) == (3.5, record.gmacs)
    with pytest.raises(UserError, match="not an evaluated-subnet record"):
        EvaluatedSubnet.from_dict({"config": cfg.to_dict(), "gmacs": 0.1})  # no metric


def test_named_shapes():
    assert BertShape.named("minilm-l6") == BertShape(6, 384, 12, 32, 1536)
    assert round(BertShape.named("bert-base").full_subnet().gmacs(BertShape.named("bert-base"), 128), 1) == 11.2
    with pytest.raises(UserError, match="unknown shape 'gpt2'"):
        BertShape.named("gpt2")


@pytest.mark.parametrize("cfg, message", [
    (SubnetConfig((5, 4), (128, 128)), "layer 0: 5 heads"),
    (SubnetConfig((4, 4, 4), (128, 128, 128)), "3 layers, the model has 2"),
    (SubnetConfig((4, 4), (128, 129)), "FFN width 129"),
])
def test_validation_names_the_problem(tiny_shape, cfg, message):
    with pytest.raises(UserError, match=message):
        cfg.validate(tiny_shape)


@pytest.mark.parametrize("heads", [(4, -1), (1.5, 2), (True, 2), (float("nan"), 2), ("2", 2)])
def test_widths_are_whole_non_negative_numbers_never_truncated(heads):
    with pytest.raises(UserError, match="whole number >= 0"):
        SubnetConfig(heads, (128, 128))
    assert SubnetConfig((2.0, 3), (128, 0)).heads == (2, 3)


def test_bad_json_is_a_user_error(tmp_path):
    (tmp_path / "bad.json").write_text('{"heads": [1, 2]')
    with pytest.raises(UserError, match="corrupt or truncated"):
        SubnetConfig.load(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text('{"heads": [1, 2]}')
    with pytest.raises(UserError, match="not a subnet config"):
        SubnetConfig.load(tmp_path / "wrong.json")
    with pytest.raises(UserError, match="not found"):
        SubnetConfig.load(tmp_path / "missing.json")


def test_search_space_encoding():
    space = SearchSpace(((2, 4), (0, 2, 4)), ((64, 128), (32,)))
    assert space.size == 2 * 3 * 2 * 1 == len(list(space))
    assert space.largest() == SubnetConfig((4, 4), (128, 32))
    assert space.smallest() == SubnetConfig((2, 0), (64, 32))
    rng = random.Random(0)
    for _ in range(20):
        cfg = space.sample(rng)
        assert space.contains(cfg)
        assert space.decode(space.encode(cfg)) == cfg
    assert not space.contains(SubnetConfig((3, 4), (64, 32)))
