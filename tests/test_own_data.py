"""The user's own data: every file format, single texts and pairs, string/integer/float labels, the evaluation
split carved from one file, a fine-tuned teacher (scored, not fine-tuned again), and the mistakes users make."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eftnas_hw.context import RunContext
from eftnas_hw.data import compute_metrics, data_source, load_data
from eftnas_hw.errors import UserError
from eftnas_hw.finetune import finetune
from eftnas_hw.importance import load_scores
from eftnas_hw.models import load_model, packaged_minilm_path
from eftnas_hw.settings import DataSettings, FinetuneSettings, RunConfig

WORDS = ["good", "bad", "fine", "awful", "great", "dull", "superb", "boring", "warm", "cold"]


def reviews(n: int, offset: int = 0) -> pd.DataFrame:
    """Reviews with string labels under unusual column names (the README's CSV example, made up)."""
    rows = [(f"{WORDS[(i + offset) % 10]} film, take {i}", "pos" if (i + offset) % 2 == 0 else "neg",
             f"question {i}?", round(0.37 * (i % 7), 2), i % 3) for i in range(n)]
    return pd.DataFrame(rows, columns=["review", "sentiment", "question", "score", "stars"])


def write(frame: pd.DataFrame, path) -> str:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return str(path)


def load(tmp_path, train: pd.DataFrame, evaluation: pd.DataFrame | None = None, suffix: str = ".csv",
         teacher_labels: tuple[str, ...] = (), **settings):
    train_file = write(train, tmp_path / f"train{suffix}")
    eval_file = write(evaluation, tmp_path / f"eval{suffix}") if evaluation is not None else None
    data = DataSettings(train_file=train_file, eval_file=eval_file, **settings)
    return load_data(data_source(None, None, data, teacher_labels), seed=0)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    splits, spec = load(tmp_path, reviews(60), reviews(20, 1), suffix, text_columns="review",
                        label_column="sentiment")
    assert spec.name == tmp_path.name and spec.label_names == ("neg", "pos") and spec.main_metric == "accuracy"
    assert not spec.pair and not spec.is_regression
    dev = splits["validation"]
    assert len(dev) == 20 and dev.features["label"].names == ["neg", "pos"]
    assert [dev.features["label"].int2str(v) for v in dev["label"][:2]] == ["neg", "pos"]
    assert dev["text"][0] == "bad film, take 0"
    assert len(splits["train"]) + len(splits["search"]) == 60


def test_pairs_integer_classes_and_float_regression(tmp_path):
    splits, spec = load(tmp_path, reviews(90), reviews(30), text_columns="review, question", label_column="stars")
    assert spec.pair and spec.label_names == ("0", "1", "2") and spec.main_metric == "macro_f1"
    assert splits["validation"][0]["text_pair"] == "question 0?"
    _, regression = load(tmp_path, reviews(90), reviews(30), text_columns="review", label_column="score")
    assert regression.is_regression and regression.main_metric == "spearman"
    _, named = load(tmp_path, reviews(90), reviews(30), text_columns="review", label_column="sentiment",
                    labels="pos,neg", eval_metric="matthews")
    assert named.label_names == ("pos", "neg") and named.main_metric == "matthews"


def test_one_file_is_split_seeded_and_the_search_split_never_touches_evaluation(tmp_path):
    splits, _ = load(tmp_path, reviews(200), text_columns="review", label_column="sentiment", eval_fraction=0.2)
    train, search, dev = (set(splits[s]["idx"]) for s in ("train", "search", "validation"))
    assert len(dev) == 40 and not (train & search) and not (train & dev) and not (search & dev)
    assert len(train | search | dev) == 200
    again, _ = load(tmp_path, reviews(200), text_columns="review", label_column="sentiment", eval_fraction=0.2)
    assert list(again["validation"]["idx"]) == list(splits["validation"]["idx"])
    assert abs(np.mean(splits["validation"]["label"]) - 0.5) < 0.05  # stratified


def test_metrics_against_hand_computed_values(tmp_path):
    _, spec = load(tmp_path, reviews(90), reviews(30), text_columns="review", label_column="stars")
    predictions, labels = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 1, 2, 2, 0])
    m = compute_metrics(spec, predictions, labels)
    # per-class F1: class 0: 1.0; class 1: P 1/2, R 1/2 -> 0.5; class 2: 0.5; macro = 2/3
    assert m["accuracy"] == pytest.approx(4 / 6) and m["macro_f1"] == pytest.approx(2 / 3)
    assert m["metric"] == m["macro_f1"] and "f1" not in m


@pytest.mark.parametrize("change, message", [
    (dict(label_column="rating"), "lacks column"),
    (dict(text_columns="review,question,sentiment"), "one column or two"),
    (dict(eval_metric="pearson"), "needs a numeric label"),
    (dict(eval_metric="f1", label_column="stars"), "binary"),
    (dict(labels="pos,pos"), "each class once"),
    (dict(labels="good,bad"), "not one of the classes"),
    (dict(labels="low,high", label_column="score"), "is a score"),
])
def test_bad_settings_are_one_line_errors(tmp_path, change, message):
    settings = {"text_columns": "review", "label_column": "sentiment", **change}
    with pytest.raises(UserError, match=message):
        load(tmp_path, reviews(40), reviews(10), **settings)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_data(data_source(None, None, DataSettings(train_file=str(tmp_path / "empty.csv"))))
    one_class = reviews(40)
    one_class["sentiment"] = "pos"
    with pytest.raises(UserError, match="one class only"):
        load(tmp_path, one_class, reviews(10), text_columns="review", label_column="sentiment")
    unseen = reviews(10)
    unseen.loc[3, "sentiment"] = "meh"
    with pytest.raises(UserError, match=r"evaluation data has label\(s\) \['meh'\] that the training data lacks"):
        load(tmp_path, reviews(40), unseen, text_columns="review", label_column="sentiment")
    with pytest.raises(UserError, match="'meh' in the eval data is not one of the classes neg, pos"):
        load(tmp_path, reviews(40), unseen, text_columns="review", label_column="sentiment", labels="neg,pos")
    mixed = reviews(40).astype({"sentiment": object})
    mixed.loc[5, "sentiment"] = 1
    with pytest.raises(UserError, match="mixed label types"):
        load(tmp_path, mixed, None, ".jsonl", text_columns="review", label_column="sentiment")
    missing = reviews(40)
    missing.loc[7, "sentiment"] = ""
    with pytest.raises(UserError, match="row 7 has no label"):
        load(tmp_path, missing, None, text_columns="review", label_column="sentiment")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(UserError, match="unknown data format"):
        load_data(data_source(None, None, DataSettings(train_file=str(tmp_path / "x.xlsx"))))
    with pytest.raises(UserError, match="not both"):
        data_source(None, None, DataSettings(train_file="a.csv", dataset="imdb"))


def test_a_fine_tuned_teacher_is_scored_not_trained_and_its_labels_rule(tiny_model_dir, tmp_path):
    """--teacher: the scoring pass reads gradients at learning rate 0 (weights unchanged, scores non-zero); the
    data's class names must be the teacher's, in the teacher's id order, and its label count must fit."""
    train, evaluation = write(reviews(64), tmp_path / "t.csv"), write(reviews(16, 1), tmp_path / "e.csv")
    data = {"train_file": train, "eval_file": evaluation, "text_columns": "review", "label_column": "sentiment",
            "labels": "pos,neg"}
    first = RunConfig(model=str(tiny_model_dir), data=DataSettings(**data))
    finetune(RunContext(first), tmp_path / "tuned", FinetuneSettings(epochs=1, batch_size=16))
    tuned = load_model(tmp_path / "tuned")
    assert tuned.config.id2label == {0: "pos", 1: "neg"}  # the user's classes, in the order they gave

    teacher = RunConfig(teacher=str(tmp_path / "tuned"), data=DataSettings(**{**data, "labels": None}))
    ctx = RunContext(teacher)
    assert ctx.spec.label_names == ("pos", "neg")  # the teacher's id order, not sorted
    metrics = finetune(ctx, tmp_path / "scored", FinetuneSettings(scoring_epochs=1, batch_size=16))
    assert metrics["fine_tuned_here"] is False and metrics["optimizer_steps"] == 4
    scored = load_model(tmp_path / "scored")
    for name, value in tuned.state_dict().items():
        assert np.array_equal(value.numpy(), scored.state_dict()[name].numpy()), name
    assert all(s.abs().sum() > 0 for s in load_scores(tmp_path / "scored").values())

    other = reviews(64)
    other["sentiment"] = other["sentiment"].map({"pos": "good", "neg": "bad"})
    with pytest.raises(UserError, match="not one of the classes pos, neg"):
        RunContext(RunConfig(teacher=str(tmp_path / "tuned"), data=DataSettings(
            train_file=write(other, tmp_path / "o.csv"), text_columns="review", label_column="sentiment"))).splits
    with pytest.raises(UserError, match="outside the classes 0..1"):
        finetune(RunContext(RunConfig(teacher=str(tmp_path / "tuned"), data=DataSettings(
            **{**data, "labels": None, "label_column": "stars"}))), tmp_path / "x", FinetuneSettings())
    with pytest.raises(UserError, match="not a fine-tuned sequence classifier"):
        RunContext(RunConfig(teacher=str(packaged_minilm_path()), data=DataSettings(**data))).spec
    with pytest.raises(UserError, match="not both"):
        RunConfig(teacher=str(tmp_path / "tuned"), model=str(tiny_model_dir))


def test_a_hub_dataset_keeps_its_class_names_and_needs_its_evaluation_split(tmp_path, monkeypatch):
    """--dataset goes through datasets.load_dataset (faked here: no hub on this machine); a ClassLabel's names
    become the classes, and a missing evaluation split is named with the ones there are."""
    import datasets

    names = datasets.ClassLabel(names=["neg", "pos"])
    split = datasets.Dataset.from_dict({"content": [f"{w} film {i}" for i, w in enumerate(WORDS * 4)],
                                        "polarity": [i % 2 for i in range(40)]},
                                       features=datasets.Features({"content": datasets.Value("string"),
                                                                   "polarity": names}))
    calls = []

    def fake_load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict(train=split, test=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    settings = DataSettings(dataset="someone/reviews", dataset_config="en", eval_split="test",
                            text_columns="content", label_column="polarity")
    splits, spec = load_data(data_source(None, None, settings))
    assert calls == [("someone/reviews", "en")] and spec.name == "reviews"
    assert spec.label_names == ("neg", "pos") and len(splits["validation"]) == 40
    with pytest.raises(UserError, match="no 'validation' split \\(it has train, test\\)"):
        load_data(data_source(None, None, DataSettings(**{**settings.to_dict(), "eval_split": "validation"})))
