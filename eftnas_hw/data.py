"""GLUE tasks: loading (local GLUE TSV folder or the `datasets` hub), the search split, tokenisation, metrics.

The architecture search must not select on the dev set that results are reported on, so `load_task` carves a
seeded, stratified `search` split out of the training set; `train` is the rest and `validation` is GLUE dev.
Local files are read with `csv.QUOTE_NONE`, as the GLUE/HF loaders do: several files hold unmatched quotes that
default CSV quoting would silently merge into neighbouring rows.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .errors import UserError
from .files import read_json

GLUE_DIR_ENV = "EFTNAS_GLUE_DIR"


@dataclass(frozen=True)
class TaskSpec:
    """A GLUE task: its text columns (hub names), label set and the metric results are reported in."""

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    main_metric: str
    folder: str  # local GLUE folder name
    columns: dict[str, str | int]  # hub column -> TSV header name (or column index when there is no header)
    label_names: tuple[str, ...] = ()  # TSV label strings in class-id order; empty = integer labels in the file
    dev_file: str = "dev.tsv"
    hub_dev_split: str = "validation"
    has_header: bool = True

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


_NLI = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("sst2", ("sentence",), 2, "accuracy", "SST-2", {"sentence": "sentence", "label": "label"}),
    TaskSpec("cola", ("sentence",), 2, "matthews", "CoLA", {"sentence": 3, "label": 1}, has_header=False),
    TaskSpec("rte", ("sentence1", "sentence2"), 2, "accuracy", "RTE",
             {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}, _NLI),
    # MRPC and QQP report accuracy (the EFTNAS tables' number); F1 is computed alongside.
    TaskSpec("mrpc", ("sentence1", "sentence2"), 2, "accuracy", "MRPC",
             {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    TaskSpec("stsb", ("sentence1", "sentence2"), 1, "spearman", "STS-B",
             {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    TaskSpec("qnli", ("question", "sentence"), 2, "accuracy", "QNLI",
             {"question": "question", "sentence": "sentence", "label": "label"}, _NLI),
    TaskSpec("mnli", ("premise", "hypothesis"), 3, "accuracy", "MNLI",
             {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
             ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv",
             hub_dev_split="validation_matched"),
    TaskSpec("qqp", ("question1", "question2"), 2, "accuracy", "QQP",
             {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
)}


def check_trained_task(record: str | os.PathLike, task: str, what: str) -> None:
    """Refuse a model trained on another task: shapes cannot tell, when the label counts agree (an SST-2 teacher
    distilled as CoLA). `record` is the JSON its training wrote (no record, e.g. a user's own model: no check)."""
    record = Path(record)
    if record.is_file():
        trained = read_json(record, f"{what} record").get("task")
        if trained is not None and trained != task:
            raise UserError(f"{what} {record.parent} was trained on {trained}, not {task}")


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


def _read_tsv(path: Path, spec: TaskSpec) -> Dataset:
    """One GLUE TSV as a Dataset with the hub's column names, an integer/float `label` and the file row `idx`."""
    if not path.is_file():
        raise UserError(f"{spec.name}: GLUE file not found: {path}")
    try:
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, header=0 if spec.has_header else None,
                            dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable GLUE TSV ({str(e).splitlines()[0]})") from None
    if frame.empty:
        raise UserError(f"{path} holds no examples")
    missing = [c for c in spec.columns.values() if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing}; is it the original GLUE TSV for {spec.name}?")
    frame = frame[list(spec.columns.values())].set_axis(list(spec.columns), axis=1)
    if spec.label_names:
        labels = frame["label"].map({n: i for i, n in enumerate(spec.label_names)})
        if labels.isna().any():
            raise UserError(f"{path}: unknown label {frame['label'][labels.isna()].iloc[0]!r}")
        frame["label"] = labels.astype(np.int64)
    else:
        try:
            frame["label"] = frame["label"].astype(np.float32 if spec.is_regression else np.int64)
        except (ValueError, TypeError) as e:
            raise UserError(f"{path}: a label is not a number ({e})") from None
        if not spec.is_regression and not frame["label"].between(0, spec.num_labels - 1).all():
            bad = frame["label"][~frame["label"].between(0, spec.num_labels - 1)].iloc[0]
            raise UserError(f"{path}: label {bad} is outside {spec.name}'s classes 0..{spec.num_labels - 1}")
    frame["idx"] = np.arange(len(frame))
    features = Features({**{k: Value("string") for k in spec.text_keys}, "label": _label_feature(spec),
                         "idx": Value("int64")})
    return Dataset.from_pandas(frame, features=features, preserve_index=False)


def _label_feature(spec: TaskSpec) -> Value | ClassLabel:
    if spec.is_regression:
        return Value("float32")
    return ClassLabel(names=list(spec.label_names)) if spec.label_names else ClassLabel(num_classes=spec.num_labels)


def _glue_dir(data_dir: str | os.PathLike | None) -> Path | None:
    folder = data_dir or os.environ.get(GLUE_DIR_ENV)
    if not folder:
        return None
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"GLUE data folder not found: {folder}")
    return folder


def _load_raw(spec: TaskSpec, data_dir: str | os.PathLike | None) -> DatasetDict:
    """train + validation with a typed `label` (ClassLabel for classification) and `idx`, from disk or hub."""
    folder = _glue_dir(data_dir)
    if folder is not None:
        return DatasetDict(train=_read_tsv(folder / spec.folder / "train.tsv", spec),
                           validation=_read_tsv(folder / spec.folder / spec.dev_file, spec))
    import datasets

    try:
        hub = datasets.load_dataset("nyu-mll/glue", spec.name)
    except Exception as e:  # no network, no cache: the library raises many different types
        raise UserError(f"cannot load {spec.name} from the dataset hub ({str(e).splitlines()[0][:120]}); "
                        f"pass --data-dir with the GLUE TSV folder or set {GLUE_DIR_ENV}") from None
    return DatasetDict(train=hub["train"], validation=hub[spec.hub_dev_split])


def _check_classes(raw: DatasetDict, spec: TaskSpec) -> None:
    """A classifier needs two classes to learn from, and is evaluated only on classes it was trained on."""
    seen = set(raw["train"]["label"])
    if len(seen) < 2:
        raise UserError(f"{spec.name}: the training data holds one class only ({next(iter(seen), 'none')})")
    unseen = sorted(set(raw["validation"]["label"]) - seen)
    if unseen:
        raise UserError(f"{spec.name}: the evaluation data has label(s) {unseen} that the training data lacks")


def load_task(task: str, data_dir: str | os.PathLike | None = None, search_fraction: float = 0.1, seed: int = 0,
              max_train: int | None = None) -> DatasetDict:
    """Splits 'train', 'search' (seeded, carved from GLUE train, stratified by label unless the task is a
    regression) and 'validation' (GLUE dev; MNLI: matched).

    The search split is carved from the full training set before `max_train` subsamples what remains, so a
    given seed always yields the same search split whatever the training budget; every stage of a run must use
    the run's seed, or its search split overlaps the data the super-network was trained on.
    """
    spec = task_spec(task)
    if not 0 < search_fraction < 1:
        raise UserError(f"search fraction must be in (0, 1), got {search_fraction}")
    raw = _load_raw(spec, data_dir)
    if not spec.is_regression:
        _check_classes(raw, spec)
    stratify = None if spec.is_regression else "label"
    try:
        split = raw["train"].train_test_split(test_size=search_fraction, seed=seed, stratify_by_column=stratify)
    except ValueError as e:  # too few examples (per class) to carve a search split from
        raise UserError(f"{spec.name}: cannot carve a {search_fraction:.0%} search split from "
                        f"{len(raw['train'])} training examples ({str(e).splitlines()[0]})") from None
    return DatasetDict(train=subsample(split["train"], max_train, seed), search=split["test"],
                       validation=raw["validation"])


def subsample(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded subset of `n` examples (all of them when n is None or not smaller)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def tokenize(dataset: Dataset, tokenizer, task: str, max_length: int = 128) -> Dataset:
    """Token ids and `label`, without padding (batches are padded to their own longest sequence)."""
    keys = task_spec(task).text_keys

    def encode(batch: dict) -> dict:
        return tokenizer(*(batch[k] for k in keys), truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c != "label"],
                       desc="tokenize")


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's official metrics from logits (or class ids / regression outputs); 'metric' = the main one."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = task_spec(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if spec.is_regression:
        predictions = predictions.reshape(-1)
        if np.ptp(predictions) == 0:  # a constant predictor ranks nothing: 0, as sklearn's MCC does, not NaN
            out = {"pearson": 0.0, "spearman": 0.0}
        else:
            out = {"pearson": float(pearsonr(predictions, labels)[0]),
                   "spearman": float(spearmanr(predictions, labels)[0])}
    else:
        if predictions.ndim == 2:
            predictions = predictions.argmax(-1)
        out = {"accuracy": float(accuracy_score(labels, predictions))}
        if spec.name == "cola":
            out["matthews"] = float(matthews_corrcoef(labels, predictions))
        if spec.name in ("mrpc", "qqp"):
            out["f1"] = float(f1_score(labels, predictions))
    out["metric"] = out[spec.main_metric]
    return out


def calibration_texts(task: str, train: Dataset, n: int, seed: int = 0) -> list[str | tuple[str, str]]:
    """`n` seeded training inputs (a sentence or a sentence pair) for INT8 calibration."""
    rows = subsample(train, n, seed)
    columns = [rows[k] for k in task_spec(task).text_keys]
    return list(columns[0]) if len(columns) == 1 else list(zip(*columns))
