"""Elastic BERT equivalence, the distillation loss, sandwich-rule training with exact resume, supernet outputs."""
from __future__ import annotations

import copy
import json
import random
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from eftnas_hw.context import RunContext
from eftnas_hw.data import compute_metrics, glue_spec
from eftnas_hw.elastic import ElasticBert
from eftnas_hw.errors import UserError
from eftnas_hw.evaluate import SubnetEvaluator, evaluate_subnets
from eftnas_hw.importance import SCORES_NAME, channel_importance, save_scores
from eftnas_hw.models import load_model, load_tokenizer, random_bert
from eftnas_hw.runtime import native_bf16
from eftnas_hw.settings import RunConfig, SupernetSettings
from eftnas_hw.subnet import BertShape, SearchSpace, SubnetConfig
from eftnas_hw.supernet import (distillation_loss, fit_supernet, load_search_space, load_supernet, sandwich_subnets,
                                train_supernet)
from conftest import token_batch

TINY_SPACE = SearchSpace(heads=((0, 2, 4), (1, 4)), ffn=((0, 64, 128), (32, 128)))


def _logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**token_batch(seed)).logits


@pytest.mark.parametrize("seed", range(6))
def test_active_subnet_equals_extracted_model(tiny_shape, seed):
    rng = random.Random(seed)
    supernet = ElasticBert(random_bert(tiny_shape, seed=seed)).eval()
    space = SearchSpace(heads=((0, 1, 2, 3, 4),) * 2, ffn=((0, 1, 50, 128),) * 2)
    cfg = supernet.sample_active_subnet(space, rng)
    if seed == 0:  # make sure removed blocks are covered whatever the RNG gives
        cfg = SubnetConfig((0, 3), (50, 0))
        supernet.set_active_subnet(cfg)
    standalone = supernet.get_active_subnet()
    assert torch.allclose(_logits(supernet, seed), _logits(standalone, seed), atol=1e-5)
    assert sum(p.numel() for p in standalone.parameters()) == cfg.params(tiny_shape)


def test_active_subnet_equals_full_model_with_dropped_units_zeroed(tiny_shape):
    """An independent check of the slicing: zeroing the dropped heads' and channels' output columns."""
    full = random_bert(tiny_shape, seed=7)
    cfg = SubnetConfig((1, 3), (40, 100))
    masked = copy.deepcopy(full)
    with torch.no_grad():
        for layer, heads, width in zip(masked.bert.encoder.layer, cfg.heads, cfg.ffn):
            layer.attention.output.dense.weight[:, heads * tiny_shape.head_size:] = 0
            layer.output.dense.weight[:, width:] = 0
    supernet = ElasticBert(full).set_active_subnet(cfg).eval()
    real = token_batch()["attention_mask"].bool()  # padded positions are never used (and unpadded, not computed)
    with torch.no_grad():  # hidden states, not logits: a random classifier squashes differences to ~1e-4
        hidden = supernet.model.bert(**token_batch()).last_hidden_state
        assert torch.allclose(hidden[real], masked.eval().bert(**token_batch()).last_hidden_state[real], atol=1e-5)
        supernet.set_active_subnet(tiny_shape.full_subnet())
        assert (supernet.model.bert(**token_batch()).last_hidden_state - hidden).abs().max() > 1e-2


def test_distillation_loss_terms():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(student, labels)
    same = distillation_loss(student, student.clone(), labels, False, kd_alpha=1.0, ce_alpha=0.5, temperature=3.0)
    assert torch.isclose(same, 0.5 * ce)  # KL of identical distributions is 0
    teacher = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    t = 2.0
    p_t, log_p_s = torch.softmax(teacher / t, -1), torch.log_softmax(student / t, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    loss = distillation_loss(student, teacher, labels, False, kd_alpha=0.7, ce_alpha=0.0, temperature=t)
    assert torch.isclose(loss, 0.7 * t * t * kl)
    reg = distillation_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [2.0]]), torch.tensor([1.0, 4.0]),
                            True, kd_alpha=1.0, ce_alpha=2.0, temperature=5.0)
    assert torch.isclose(reg, torch.tensor(0.5 + 2.0 * 2.0))


def test_sandwich_subnets_are_a_function_of_seed_and_step():
    a = sandwich_subnets(TINY_SPACE, 3, seed=1, step=5)
    assert a == sandwich_subnets(TINY_SPACE, 3, seed=1, step=5)
    assert a[0] == TINY_SPACE.smallest() and a[-1] == TINY_SPACE.largest() and len(a) == 5
    assert all(TINY_SPACE.contains(c) for c in a)
    draws = {tuple(sandwich_subnets(TINY_SPACE, 3, seed=1, step=s)[1:-1]) for s in range(10)}
    assert len(draws) > 1


def _token_dataset(n: int = 24, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = [[101] + rng.integers(1000, 3000, rng.integers(3, 12)).tolist() + [102] for _ in range(n)]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                              "label": rng.integers(0, 2, n).tolist()})


class _KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("killed after the first checkpoint")


def _train(tiny_shape, work_dir, callbacks=(), resume=True, sampler="random") -> dict[str, torch.Tensor]:
    teacher = random_bert(tiny_shape, seed=11)
    supernet = ElasticBert(copy.deepcopy(teacher))
    settings = SupernetSettings(max_steps=4, batch_size=8, lr=1e-3, num_random=1, save_minutes=1e-9, logging_steps=2,
                                **({sampler: True} if sampler != "random" else {}))
    steps = fit_supernet(supernet, teacher, TINY_SPACE, _token_dataset(), load_tokenizer(None), work_dir, settings,
                         seed=3, is_regression=False, resume=resume, callbacks=callbacks)
    assert steps == 4
    return {k: v.clone() for k, v in supernet.model.state_dict().items()}


@pytest.mark.parametrize("sampler", ["random", "length_buckets"])
def test_killed_and_resumed_training_matches_uninterrupted(tiny_shape, tmp_path, sampler):
    straight = _train(tiny_shape, tmp_path / "straight", sampler=sampler)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_shape, tmp_path / "killed", callbacks=[_KillAfterSave()], sampler=sampler)
    assert (tmp_path / "killed" / "checkpoint-1").is_dir()
    resumed = _train(tiny_shape, tmp_path / "killed", sampler=sampler)
    initial = random_bert(tiny_shape, seed=11).state_dict()
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    assert not torch.allclose(straight[name], initial[name])  # training really moved the weights
    for key, value in straight.items():
        assert torch.allclose(resumed[key], value, atol=1e-6), key


def test_length_grouped_batches_pad_less_and_see_the_same_examples(tiny_shape, tmp_path, monkeypatch):
    """length_buckets and HF's group_by_length: the same examples (one epoch), in batches of similar lengths."""
    import eftnas_hw.supernet as supernet_module

    seen = {}

    class Recording(supernet_module.DataCollatorWithPadding):
        def __call__(self, features):
            batch = super().__call__(features)
            seen.setdefault(self.key, []).append((batch["input_ids"].numel(), int(batch["attention_mask"].sum()),
                                                  sorted(tuple(f["input_ids"]) for f in features)))
            return batch

    rng = np.random.default_rng(5)
    # 320 examples: HF groups within mega-batches of min(n / 4 batches, 50) batches
    ids = [[101] + rng.integers(1000, 3000, n).tolist() + [102] for n in rng.integers(2, 60, 320)]
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                              "label": rng.integers(0, 2, 320).tolist()})
    monkeypatch.setattr(supernet_module, "DataCollatorWithPadding", Recording)
    # only the batches matter here: steps that skip the forward and backward
    monkeypatch.setattr(supernet_module.SandwichTrainer, "training_step", lambda *args, **kwargs: torch.zeros(()))
    for sampler in ("random", "group_by_length", "length_buckets"):
        Recording.key = sampler
        teacher = random_bert(tiny_shape, seed=11)
        settings = SupernetSettings(epochs=1, batch_size=8, num_random=0, save_minutes=1e6,
                                    **({sampler: True} if sampler != "random" else {}))
        fit_supernet(ElasticBert(copy.deepcopy(teacher)), teacher, TINY_SPACE, data, load_tokenizer(None),
                     tmp_path / sampler, settings, seed=3, is_regression=False, resume=False)
    padded = {k: sum(b[0] for b in v) / sum(b[1] for b in v) for k, v in seen.items()}
    assert padded["length_buckets"] < 1.2 < padded["random"]  # random batches of 2-60 tokens pad to their longest
    assert padded["group_by_length"] < 1.2
    examples = {k: sorted(x for b in v for x in b[2]) for k, v in seen.items()}
    assert examples["length_buckets"] == examples["group_by_length"] == examples["random"]


def test_evaluate_subnets_matches_one_by_one_predictions(tiny_shape):
    dataset = _token_dataset(n=13, seed=5)
    supernet = ElasticBert(random_bert(tiny_shape, seed=2))
    cfgs = [TINY_SPACE.largest(), SubnetConfig((2, 1), (0, 32))]
    results = evaluate_subnets(supernet, cfgs, dataset, glue_spec("sst2"), batch_size=4)
    assert supernet.active == tiny_shape.full_subnet()  # the active subnet is restored
    for cfg, result in zip(cfgs, results):
        standalone = supernet.set_active_subnet(cfg).get_active_subnet().eval()
        with torch.no_grad():
            preds = [int(standalone(input_ids=torch.tensor([ids])).logits.argmax()) for ids in dataset["input_ids"]]
        assert result == compute_metrics(glue_spec("sst2"), np.array(preds), np.array(dataset["label"]))


def test_subnets_sharing_leading_layers_start_from_their_stored_output():
    """The prefix cache skips the layers a subnet shares with one evaluated before, and changes no output."""
    shape = BertShape(num_layers=4, hidden_size=64, num_heads=4, head_size=16, intermediate_size=128,
                      max_position=128)
    dataset = _token_dataset(n=13, seed=3)
    cached = SubnetEvaluator(ElasticBert(random_bert(shape, seed=4)), dataset, glue_spec("sst2"), batch_size=4)
    plain = SubnetEvaluator(ElasticBert(random_bert(shape, seed=4)), dataset, glue_spec("sst2"), batch_size=4,
                            cache_bytes=0)
    cfgs = [SubnetConfig((4, 2, 3, 1), (128, 64, 0, 32)), SubnetConfig((4, 2, 3, 4), (128, 64, 0, 128)),
            SubnetConfig((4, 2, 1, 1), (128, 64, 32, 32)), SubnetConfig((4, 0, 3, 1), (128, 64, 0, 32))]
    runs = {i: 0 for i in range(4)}
    for i, layer in enumerate(cached.supernet.layers):
        layer.attention.register_forward_hook(lambda *a, i=i: runs.__setitem__(i, runs[i] + 1))
    for cfg in cfgs:
        assert np.array_equal(cached.subnet_outputs(cfg), plain.subnet_outputs(cfg))
    batches = len(cached.batches)  # 4 subnets ran layer 0 once; the 2nd reused 3 layers, the 3rd 2, the 4th 1
    assert runs == {0: batches, 1: 2 * batches, 2: 3 * batches, 3: 4 * batches}
    assert all(layer.replay is None for layer in cached.supernet.layers)
    assert not plain.prefixes.entries and len(cached.prefixes.entries) == 3 + 0 + 1 + 2


def test_train_supernet_writes_a_loadable_supernet(tiny_model_dir, glue_dir, tmp_path):
    teacher_dir = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher_dir)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(p.shape, generator=g) for n, p in load_model(teacher_dir).named_parameters()
              if n.startswith("bert.encoder.layer.") and "LayerNorm" not in n}
    save_scores(scores, teacher_dir / SCORES_NAME)
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"space": TINY_SPACE.to_dict(), "configs": []}))
    space = load_search_space(space_file)
    assert space == TINY_SPACE
    out = tmp_path / "supernet"
    ctx = RunContext(RunConfig(model=str(teacher_dir), task="mrpc", data_dir=str(glue_dir)))
    settings = SupernetSettings(reorder="first-order", max_train=32, max_steps=2, batch_size=16, report_random=2,
                                bf16="auto", group_by_length=True)
    report = train_supernet(ctx, teacher_dir, space, out, settings)
    assert report["trained_in"] == ("bf16" if native_bf16() else "f32")  # auto: bf16 where the CPU computes it
    assert [s["name"] for s in report["subnets"]] == ["largest", "smallest", "random_0", "random_1"]
    assert report["steps"] == 2 and report["train_examples"] == 32
    assert report["settings"] == settings.to_dict() and report["seed"] == 0
    seq_len = report["gmacs_seq_len"]
    assert seq_len == ctx.profile.seq_len
    shape = BertShape.from_config(load_model(teacher_dir).config)
    assert report["subnets"][0]["gmacs"] == pytest.approx(TINY_SPACE.largest().gmacs(shape, seq_len), abs=1e-4)
    assert report["subnets"][1]["gmacs"] < report["subnets"][0]["gmacs"]
    assert not out.with_name("supernet.partial").exists()
    supernet, space = load_supernet(out)
    assert space == TINY_SPACE
    assert json.loads((out / "report.json").read_text()) == report
    ordering = json.loads((out / "ordering.json").read_text())
    channels = channel_importance(scores, supernet.shape)
    assert ordering["ffn"][0] == torch.argsort(-channels[0], stable=True).tolist()
    teacher = load_model(teacher_dir)
    assert not torch.equal(teacher.bert.encoder.layer[0].intermediate.dense.weight,
                           supernet.model.bert.encoder.layer[0].intermediate.dense.weight)
    with pytest.raises(UserError, match="exists"):
        train_supernet(ctx, teacher_dir, space, out, SupernetSettings(reorder="l1", max_steps=1))


def test_bad_inputs_are_user_errors(tiny_model_dir, tmp_path):
    def ctx(task: str) -> RunContext:
        return RunContext(RunConfig(model=str(tiny_model_dir), task=task))

    bad_space = tmp_path / "bad.json"
    bad_space.write_text(json.dumps(SearchSpace(heads=((4, 9),) * 2, ffn=((128,),) * 2).to_dict()))
    no_reorder = SupernetSettings(reorder="none")
    with pytest.raises(UserError, match="9 heads"):
        train_supernet(ctx("sst2"), tiny_model_dir, load_search_space(bad_space), tmp_path / "o", no_reorder)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(TINY_SPACE.to_dict()))
    with pytest.raises(UserError, match="needs 1"):
        train_supernet(ctx("stsb"), tiny_model_dir, load_search_space(good), tmp_path / "o", no_reorder)
    with pytest.raises(UserError, match="importance.safetensors not found"):
        train_supernet(ctx("sst2"), tiny_model_dir, load_search_space(good), tmp_path / "o",
                       SupernetSettings(reorder="first-order"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()  # refused before any work
    with pytest.raises(UserError, match="not found"):
        load_supernet(tmp_path / "nothing")


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from eftnas_hw.cli import main

    code = main(["train-supernet", "--teacher", str(tmp_path / "missing"), "--space", str(tmp_path / "s.json"),
                 "--task", "sst2", "--out", str(tmp_path / "out"), "--max-steps", "1"])
    assert code == 2
    assert capsys.readouterr().err.startswith("eftnas-hw: error: ")


def test_length_buckets_are_shuffled_batches_of_similar_lengths():
    """Every example once per epoch; batches of near-equal lengths in random order (no long-to-short sweep); the
    short last batch stays last; the same seed and epoch give the same order, another epoch another."""
    from eftnas_hw.runtime import LengthBuckets

    lengths = np.random.default_rng(0).integers(3, 64, 1000)
    sampler = LengthBuckets(lengths.tolist(), batch_size=32, seed=7, mega=10)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order == list(sampler)
    batches = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert len(batches[-1]) == 1000 % 32 and all(len(b) == 32 for b in batches[:-1])
    spread = np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
    assert spread < 8 < np.ptp(lengths)  # random batches of 3-63 tokens spread ~55
    widths = [lengths[b].max() for b in batches[:-1]]
    falls = sum(a > b for a, b in zip(widths, widths[1:]))
    assert 0.25 < falls / (len(widths) - 1) < 0.75  # batch order random, not sorted
    sampler.set_epoch(1)
    assert list(sampler) != order
    mixed = list(LengthBuckets(lengths.tolist(), batch_size=32, seed=7, mega=2))  # pairs of batches sorted together
    assert spread < np.mean([np.ptp(lengths[mixed[i:i + 32]]) for i in range(0, 992, 32)]) < np.ptp(lengths)
