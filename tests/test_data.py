"""Task data: loaders on the real GLUE files, the search split, tokenisation, metrics."""
from __future__ import annotations

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from eftnas_hw.context import RunContext
from eftnas_hw.data import _carve, calibration_texts, compute_metrics, glue_spec, load_task, tokenize
from eftnas_hw.errors import UserError
from eftnas_hw.models import load_tokenizer
from eftnas_hw.settings import RunConfig

# (task, train rows, dev rows, dev label counts) from the GLUE README beside the files
GLUE_COUNTS = [("sst2", 67349, 872, {0: 428, 1: 444}), ("cola", 8551, 1043, {0: 322, 1: 721}),
               ("rte", 2490, 277, {0: 146, 1: 131}), ("mrpc", 3668, 408, {0: 129, 1: 279})]


@pytest.mark.parametrize("task,train_rows,dev_rows,dev_labels", GLUE_COUNTS)
def test_real_glue_row_counts_and_labels(glue_dir, task, train_rows, dev_rows, dev_labels):
    data = load_task(task, glue_dir)
    assert len(data["train"]) + len(data["search"]) == train_rows
    assert len(data["validation"]) == dev_rows
    assert dict(zip(*np.unique(data["validation"]["label"], return_counts=True))) == dev_labels


def test_stsb_is_regression_and_quotes_survive(glue_dir):
    """Default CSV quoting merges STS-B/MRPC rows at unmatched quotes (5,711 instead of 5,749 rows)."""
    stsb = load_task("stsb", glue_dir)
    assert len(stsb["train"]) + len(stsb["search"]) == 5749
    assert glue_spec("stsb").is_regression and stsb["train"].features["label"].dtype == "float32"
    assert abs(np.mean(stsb["validation"]["label"]) - 2.3639) < 1e-3
    mrpc = load_task("mrpc", glue_dir)
    texts = list(mrpc["train"]["text"]) + list(mrpc["search"]["text"])
    assert sum(t.startswith('"') for t in texts) > 0 and all("\t" not in t and "\n" not in t for t in texts)


def test_search_split_is_disjoint_stratified_and_seeded(glue_dir):
    data = load_task("rte", glue_dir, search_fraction=0.2, seed=3)
    train, search = set(data["train"]["idx"]), set(data["search"]["idx"])
    assert not train & search and len(train | search) == 2490
    dev_pairs = set(zip(data["validation"]["text"], data["validation"]["text_pair"]))
    assert not dev_pairs & set(zip(data["search"]["text"], data["search"]["text_pair"]))
    full, part = np.mean(data["train"]["label"]), np.mean(data["search"]["label"])
    assert abs(full - part) < 0.01  # stratified: same class balance
    again = load_task("rte", glue_dir, search_fraction=0.2, seed=3, max_train=100)
    assert list(again["search"]["idx"]) == list(data["search"]["idx"])  # the training budget does not move the search split
    assert len(again["train"]) == 100 and not set(again["train"]["idx"]) & search
    assert list(load_task("rte", glue_dir, search_fraction=0.2, seed=4)["search"]["idx"]) != list(data["search"]["idx"])


@pytest.mark.parametrize("seed,fraction", [(0, 0.1), (1, 0.1), (7, 0.33)])
def test_carved_split_is_the_datasets_stratified_split(seed, fraction):
    """`_carve` reads the labels as one column but must select exactly what datasets' own stratified
    train_test_split selects (earlier runs' splits, stage keys and result configs depend on it)."""
    rng = np.random.default_rng(seed)
    spec = glue_spec("mrpc")
    dataset = Dataset.from_dict({"idx": list(range(500)), "label": rng.choice(2, 500, p=[0.3, 0.7]).tolist()},
                                features=Features({"idx": Value("int64"), "label": ClassLabel(names=["0", "1"])}))
    rest, share = _carve(dataset.select(range(10, 500)), fraction, seed, spec, "search")  # an indices mapping too
    expected = dataset.select(range(10, 500)).train_test_split(test_size=fraction, seed=seed,
                                                               stratify_by_column="label")
    assert list(rest["idx"]) == list(expected["train"]["idx"])
    assert list(share["idx"]) == list(expected["test"]["idx"])
    few = Dataset.from_dict({"idx": [0, 1, 2], "label": [0, 1, 1]}, features=dataset.features)
    with pytest.raises(UserError, match="cannot carve a 10% search split from 3 training examples"):
        _carve(few, 0.1, seed, spec, "search")


def test_tokenize_keeps_only_model_inputs(glue_dir):
    data = load_task("mrpc", glue_dir, max_train=8)
    tokens = tokenize(data["train"], load_tokenizer(None), glue_spec("mrpc"), max_length=48)
    assert set(tokens.column_names) == {"input_ids", "token_type_ids", "attention_mask", "label"}
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert max(lengths) == 48 and len(set(lengths)) > 1  # truncated, not padded
    assert 1 in tokens[0]["token_type_ids"]  # a sentence pair


def test_calibration_texts_pairs_and_singles(glue_dir):
    rte_train = load_task("rte", glue_dir)["train"]
    pairs = calibration_texts(glue_spec("rte"), rte_train, 5)
    assert len(pairs) == 5 and all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    assert calibration_texts(glue_spec("rte"), rte_train, 5) == pairs
    assert set(pairs) <= set(zip(rte_train["text"], rte_train["text_pair"]))  # drawn from the train split
    singles = calibration_texts(glue_spec("cola"), load_task("cola", glue_dir)["train"], 3)
    assert len(singles) == 3 and all(isinstance(s, str) for s in singles)


def test_run_context_splits_use_the_run_seed(glue_dir):
    """D1: every stage takes its data from the RunContext, whose search split is carved with the run's seed, so
    with seed 1 the search split is load_task(seed=1)'s and never overlaps the examples the stages train on."""
    ctx = RunContext(RunConfig(task="rte", data_dir=str(glue_dir), seed=1))
    expected = load_task("rte", glue_dir, seed=1)
    search = list(ctx.splits["search"]["idx"])
    assert search == list(expected["search"]["idx"])
    assert search != list(load_task("rte", glue_dir, seed=0)["search"]["idx"])  # seed 1 really is another split
    subset = list(ctx.search_split(50)["idx"])
    assert len(subset) == 50 and set(subset) <= set(search)
    assert list(ctx.search_split(None)["idx"]) == search
    for max_train in (None, 200):
        train = list(ctx.train(max_train)["idx"])
        assert len(train) == (len(expected["train"]) if max_train is None else max_train)
        assert not set(train) & set(search), max_train
        assert train == list(load_task("rte", glue_dir, seed=1, max_train=max_train)["train"]["idx"])
    assert len(expected["train"]) + len(search) == 2490


def test_missing_sources_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("EFTNAS_GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--data-dir"):
        load_task("rte")
    with pytest.raises(UserError, match="not found"):
        load_task("rte", tmp_path)
    with pytest.raises(UserError, match="unknown task"):
        load_task("squad", tmp_path)


def test_metrics():
    m = compute_metrics(glue_spec("mrpc"), np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), np.array([1, 0, 0, 0]))
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3) and m["metric"] == m["accuracy"]
    assert compute_metrics(glue_spec("cola"), np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0]))["metric"] == 1.0
    s = compute_metrics(glue_spec("stsb"), np.array([[1.0], [2.0], [3.0]]), np.array([1.5, 2.0, 4.0]))
    assert s["spearman"] == pytest.approx(1.0) and s["pearson"] < 1.0
    # a subnet that collapsed to a constant output must rank last in the search, not poison it with NaN
    flat = compute_metrics(glue_spec("stsb"), np.array([[0.5], [0.5], [0.5]]), np.array([1.5, 2.0, 4.0]))
    assert flat["spearman"] == 0.0 and flat["pearson"] == 0.0 and flat["metric"] == 0.0
    # the bootstrap's shortcut: the main metric alone, the same value
    rng = np.random.default_rng(0)
    for task in ("sst2", "mrpc", "cola", "stsb"):
        spec = glue_spec(task)
        outputs = rng.normal(size=(50, 1 if spec.is_regression else 2))
        labels = rng.normal(size=50) if spec.is_regression else rng.integers(0, 2, 50)
        main = compute_metrics(spec, outputs, labels, main_only=True)
        assert main == {spec.main_metric: compute_metrics(spec, outputs, labels)[spec.main_metric],
                        "metric": compute_metrics(spec, outputs, labels)["metric"]}


def test_malformed_local_file_is_a_user_error(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood film\tpositive\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\n")
    with pytest.raises(UserError, match="mixed label types"):
        load_task("sst2", tmp_path)
    (tmp_path / "SST-2" / "train.tsv").write_text("text\tlabel\ngood film\t1\n")
    with pytest.raises(UserError, match="lacks column"):
        load_task("sst2", tmp_path)
