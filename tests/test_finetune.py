"""Teacher fine-tuning: the importance score against hand-computed cases, outputs, resume, structured scores."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from eftnas_hw.context import RunContext
from eftnas_hw.data import glue_spec, load_task, tokenize
from eftnas_hw.errors import UserError
from eftnas_hw.finetune import finetune
from eftnas_hw.importance import (SCORES_NAME, ImportanceCallback, channel_importance, elastic_weight_names,
                                  head_importance, load_scores)
from eftnas_hw.models import load_model, load_tokenizer, random_bert, save_model
from eftnas_hw.settings import FinetuneSettings, RunConfig

WORDS = ["good", "bad", "fine", "awful", "great", "dull", "film", "plot", "actor", "scene"]


@pytest.fixture(scope="module")
def fake_glue(tmp_path_factory):
    """A 40-row SST-2 in GLUE's TSV format, with an unmatched quote that QUOTE_NONE must keep."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for name, n in (("train.tsv", 40), ("dev.tsv", 12)):
        rows = [('"' if i == 3 else "") + " ".join(WORDS[(i * k + i % 2) % 10] for k in range(1, 6)) + f"\t{i % 2}"
                for i in range(n)]
        (root / "SST-2" / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


def _context(model_dir, glue) -> RunContext:
    return RunContext(RunConfig(model=str(model_dir), task="sst2", data_dir=str(glue)))


def test_callback_accumulates_minus_alpha_grad_times_weight(tiny_shape):
    model = random_bert(tiny_shape)
    callback = ImportanceCallback(alpha=0.5)
    names = elastic_weight_names(model)
    assert len(names) == 6 * tiny_shape.num_layers and not any("embeddings" in n for n in names)
    params = dict(model.named_parameters())
    expected = {}
    for step in range(2):
        for name, p in params.items():
            p.grad = torch.full_like(p, float(step + 1))
        callback.on_pre_optimizer_step(None, None, None, model=model)
        for name in names:
            expected[name] = expected.get(name, 0) - 0.5 * (step + 1) * params[name].detach().clone()
        with torch.no_grad():  # the optimizer would move the weights between steps
            for p in params.values():
                p.mul_(2.0)
    # step 1: -0.5 * 1 * W ; step 2: -0.5 * 2 * (2W)  -> -2.5 W of the original weights
    assert set(callback.scores) == set(names)
    for name in names:
        torch.testing.assert_close(callback.scores[name], expected[name])


def test_trainer_step_scores_match_manual_gradient(tiny_model_dir, fake_glue, tmp_path):
    """One Trainer step on one full batch: S must equal -grad(L) * W computed by hand at the same weights."""
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, num_labels=2)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    train = tokenize(load_task("sst2", fake_glue, max_train=8)["train"], tokenizer, glue_spec("sst2"))
    collator = DataCollatorWithPadding(tokenizer)
    batch = collator([train[i] for i in range(8)])
    reference = load_model(tiny_model_dir, num_labels=2)
    reference.load_state_dict(model.state_dict())
    reference.train()
    for m in reference.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    reference(**{k: v for k, v in batch.items()}).loss.backward()
    ref_params = dict(reference.named_parameters())

    callback = ImportanceCallback()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8,
                             max_grad_norm=0.0, report_to="none", save_strategy="no", learning_rate=1e-3)
    Trainer(model=model, args=args, train_dataset=train, data_collator=collator,
            callbacks=[callback]).train()
    assert set(callback.scores) == set(elastic_weight_names(model))
    for name, score in callback.scores.items():
        manual = -ref_params[name].grad * ref_params[name].detach()
        torch.testing.assert_close(score, manual, rtol=1e-4, atol=1e-7)


def test_finetune_writes_teacher_scores_and_metrics(tiny_model_dir, fake_glue, tmp_path, tiny_shape):
    out = tmp_path / "teacher"
    settings = FinetuneSettings(epochs=1, batch_size=8)
    metrics = finetune(_context(tiny_model_dir, fake_glue), out, settings)
    assert metrics["optimizer_steps"] == 5 and 0.0 <= metrics["dev"]["metric"] <= 1.0
    written = json.loads((out / "metrics.json").read_text())
    assert written["dev"]["accuracy"] == metrics["dev"]["accuracy"]
    assert written["settings"] == settings.to_dict() and written["settings"]["epochs"] == 1.0
    teacher = load_model(out)
    scores = load_scores(out)
    params = dict(teacher.named_parameters())
    assert set(scores) == set(elastic_weight_names(teacher))
    assert all(scores[k].shape == params[k].shape and scores[k].abs().sum() > 0 for k in scores)
    assert not (tmp_path / "teacher.checkpoints").exists()
    with pytest.raises(UserError, match="exists"):
        finetune(_context(tiny_model_dir, fake_glue), out, FinetuneSettings(epochs=1, batch_size=8))


def test_same_seed_same_teacher_even_with_a_new_head(tiny_model_dir, fake_glue, tmp_path):
    """The run's seed fixes the newly drawn classifier head too (torch's own seed is random per process)."""
    three_labels = tmp_path / "three"
    save_model(load_model(tiny_model_dir, num_labels=3), three_labels, load_tokenizer(tiny_model_dir))
    teachers = []
    for i, rng_state in enumerate((1, 2)):
        torch.manual_seed(rng_state)  # whatever the process drew before
        finetune(_context(three_labels, fake_glue), tmp_path / f"t{i}", FinetuneSettings(epochs=1, batch_size=8))
        teachers.append(load_model(tmp_path / f"t{i}").state_dict())
    for name, value in teachers[0].items():
        torch.testing.assert_close(value, teachers[1][name], rtol=0, atol=0)


def test_interrupted_finetune_resumes_with_its_scores(tiny_model_dir, fake_glue, tmp_path, monkeypatch):
    full = tmp_path / "full"
    finetune(_context(tiny_model_dir, fake_glue), full, FinetuneSettings(epochs=2, batch_size=8))
    every_step = FinetuneSettings(epochs=2, batch_size=8, save_minutes=1e-9)

    original_on_save = ImportanceCallback.on_save

    def interrupt_after_first_checkpoint(self, args, state, control, **kwargs):
        original_on_save(self, args, state, control, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ImportanceCallback, "on_save", interrupt_after_first_checkpoint)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(_context(tiny_model_dir, fake_glue), resumed, every_step)
    assert (tmp_path / "resumed.checkpoints" / "checkpoint-1" / SCORES_NAME).is_file() and not resumed.exists()
    monkeypatch.setattr(ImportanceCallback, "on_save", original_on_save)
    metrics = finetune(_context(tiny_model_dir, fake_glue), resumed, every_step)
    assert metrics["optimizer_steps"] == 10
    a, b = load_scores(full), load_scores(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_structured_importance(tiny_shape):
    model = random_bert(tiny_shape)
    scores = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in elastic_weight_names(model)}
    d, layer = tiny_shape.head_size, "bert.encoder.layer.1."
    scores[layer + "attention.self.query.weight"][2 * d:3 * d] = 1.0  # head 2: Q rows
    scores[layer + "attention.output.dense.weight"][:, d:2 * d] = 2.0  # head 1: output columns
    scores[layer + "intermediate.dense.weight"][5] = 3.0  # channel 5: intermediate row
    scores[layer + "output.dense.weight"][:, 7] = 3.0  # channel 7: output column
    heads = head_importance(scores, tiny_shape)
    assert heads.shape == (2, 4) and heads[0].abs().sum() == 0
    per_head = 4 * d * tiny_shape.hidden_size  # Q, K, V rows and output columns of one head
    assert heads[1, 2] == pytest.approx(d * tiny_shape.hidden_size / per_head)
    assert heads[1, 1] == pytest.approx(2 * d * tiny_shape.hidden_size / per_head)
    channels = channel_importance(scores, tiny_shape)
    assert channels.shape == (2, 128)
    assert channels[1, 5] == pytest.approx(1.5) and channels[1, 7] == pytest.approx(1.5) and channels[1, 6] == 0
    del scores[layer + "output.dense.weight"]
    with pytest.raises(UserError, match="layer.1.output.dense"):
        channel_importance(scores, tiny_shape)


def test_finetune_cli_rejects_unknown_task(tmp_path, capsys):
    from eftnas_hw.cli import main

    assert main(["finetune", "--task", "imagenet", "--out", str(tmp_path / "t")]) == 2
    assert "unknown task" in capsys.readouterr().err
