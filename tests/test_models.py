import json
import random

import pytest
import torch

from eftnas_hw.elastic import ElasticBert, RemovedAttention, RemovedFFNOutput
from eftnas_hw.errors import UserError
from eftnas_hw.models import build_subnet, load_model, load_tokenizer, save_model
from eftnas_hw.reorder import Ordering
from eftnas_hw.subnet import BertShape, SearchSpace, SubnetConfig

SENTENCES = ["a gripping, beautifully acted film", "the plot goes nowhere and the jokes fall flat",
             "it is neither good nor bad"]


@pytest.fixture(scope="module")
def batch():
    return dict(load_tokenizer(None)(SENTENCES, padding=True, return_tensors="pt"))


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_elastic_equals_extracted_for_random_subnets(tiny_model_dir, batch):
    model = load_model(tiny_model_dir)
    space = SearchSpace(((0, 1, 2, 3, 4),) * 2, ((0, 32, 100, 128),) * 2)
    elastic = ElasticBert(model).eval()
    rng = random.Random(0)
    for _ in range(8):
        cfg = elastic.sample_active_subnet(space, rng)
        standalone = elastic.get_active_subnet()
        assert torch.allclose(logits(elastic, batch), logits(standalone, batch), atol=1e-5), cfg


def test_full_subnet_is_the_model_and_narrower_differs(tiny_model_dir, batch):
    model = load_model(tiny_model_dir)
    full = logits(model, batch)
    shape = BertShape.from_config(model.config)
    assert torch.allclose(logits(build_subnet(model, shape.full_subnet()), batch), full, atol=1e-6)
    assert not torch.allclose(logits(build_subnet(model, SubnetConfig((2, 4), (128, 64))), batch), full, atol=1e-4)


def test_subnet_layers_are_physically_smaller(tiny_model_dir):
    sub = build_subnet(load_model(tiny_model_dir), SubnetConfig((3, 0), (0, 64)))
    l0, l1 = sub.bert.encoder.layer
    assert l0.attention.self.query.weight.shape == (3 * 16, 64)
    assert l0.attention.output.dense.weight.shape == (64, 3 * 16)
    assert isinstance(l0.output, RemovedFFNOutput) and isinstance(l1.attention, RemovedAttention)
    assert l1.intermediate.dense.weight.shape == (64, 64)
    assert all(p.numel() > 0 for p in sub.parameters())


def test_removed_blocks_are_the_residual_path(tiny_model_dir):
    sub = build_subnet(load_model(tiny_model_dir), SubnetConfig((0, 4), (0, 128)))
    x = torch.randn(1, 5, 64)
    layer = sub.bert.encoder.layer[0]
    assert torch.equal(layer(x), x)


def test_ordering_selects_the_units_kept(tiny_model_dir, batch):
    model = load_model(tiny_model_dir)
    ordering = Ordering(heads=((3, 1, 0, 2), (0, 1, 2, 3)), ffn=(tuple(range(127, -1, -1)), tuple(range(128))))
    sub = build_subnet(model, SubnetConfig((1, 4), (2, 128)), ordering)
    q = model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(sub.bert.encoder.layer[0].attention.self.query.weight, q[48:64])
    inter = model.bert.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(sub.bert.encoder.layer[0].intermediate.dense.weight, inter[[127, 126]])


def test_save_load_round_trip(tiny_model_dir, tmp_path, batch):
    sub = build_subnet(load_model(tiny_model_dir), SubnetConfig((3, 0), (0, 96)))
    save_model(sub, tmp_path / "sub", load_tokenizer(tiny_model_dir))
    config = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert config["eftnas_subnet"] == {"heads": [3, 0], "ffn": [0, 96]}
    assert torch.equal(logits(load_model(tmp_path / "sub"), batch), logits(sub, batch))
    with pytest.raises(UserError, match="exists"):
        save_model(sub, tmp_path / "sub")


def test_packaged_minilm_heterogeneous_subnet(batch):
    model = load_model(None, num_labels=2)
    assert BertShape.from_config(model.config) == BertShape(6, 384, 12, 32, 1536)
    cfg = SubnetConfig((12, 8, 6, 4, 4, 2), (1536, 1024, 768, 512, 384, 256))
    sub = build_subnet(model, cfg)
    elastic = ElasticBert(model).set_active_subnet(cfg)
    assert torch.allclose(logits(elastic, batch), logits(sub, batch), atol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) == cfg.params(BertShape.from_config(model.config))


def test_bad_models_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="supported families: bert"):
        load_model(tmp_path / "gpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_other_label_count_gets_a_new_head_keeping_the_encoder(tiny_model_dir, tmp_path, capsys):
    two = load_model(tiny_model_dir)  # saved as a 2-label classifier
    one = load_model(tiny_model_dir, num_labels=1, problem_type="regression")  # e.g. reused for STS-B
    assert one.classifier.out_features == 1 and one.config.id2label == {0: "LABEL_0"}
    assert "a new head is initialised" in capsys.readouterr().out
    assert torch.equal(one.bert.encoder.layer[1].output.dense.weight, two.bert.encoder.layer[1].output.dense.weight)
    subnet_dir = tmp_path / "subnet"
    save_model(build_subnet(two, SubnetConfig((2, 4), (64, 128))), subnet_dir, load_tokenizer(tiny_model_dir))
    with pytest.raises(UserError, match="classifies into 2 outputs, not 3"):
        load_model(subnet_dir, num_labels=3)
