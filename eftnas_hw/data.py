"""Task data: the user's own dataset or a GLUE task, through one mechanism; the search split, tokenisation, metrics.

A `DataSource` says where the rows come from (local files: CSV, TSV, JSON, JSONL, Parquet, one per split or one
that is split here, seeded; or a `datasets` hub dataset) and which columns hold the text (one, or two for sentence
pairs) and the label. GLUE task names are presets of it (`glue_source`): their files or hub columns, class names
and official metric. `load_data` reads any source into the same splits and a `TaskSpec`:

- labels: strings become class ids in the order of the given class names (a teacher's `id2label`, `--labels`, a
  GLUE preset), else sorted; integers are class ids; a float label (or a Pearson/Spearman metric) is regression.
  The class names travel into the exported model's config, so an IR's predictions read as the user's labels.
- splits: `validation` is the evaluation file (or hub split), or a seeded share carved from the one training file;
  `search` is carved, seeded and stratified, from the training data, never from the evaluation split: the
  architecture search must not select on the data results are reported on. `train` is the rest.

Extractive QA (`qa.py`) goes through the same mechanism: a SQuAD-format JSON file, rows with question, context
and answers columns (the `squad` hub dataset's layout, also as JSON lines or Parquet), or the `squad` preset. Its
held-out splits are carved by article, and its TaskSpec carries the window stride and the answer settings.

Local TSV files of GLUE are read with `csv.QUOTE_NONE`, as the GLUE/HF loaders do: several hold unmatched quotes
that default CSV quoting would silently merge into neighbouring rows.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets.utils.stratify import stratified_shuffle_split_generate_indices

from . import qa
from .errors import UserError
from .files import read_json
from .settings import CLASSIFICATION_METRICS, QA_METRICS, REGRESSION_METRICS

GLUE_DIR_ENV = "EFTNAS_GLUE_DIR"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataSource:
    """Where a task's rows come from and how their columns read (module docstring)."""

    name: str
    text_columns: tuple[str | int, ...]
    label_column: str | int = "label"
    train_file: str | None = None
    eval_file: str | None = None  # None: carved from train_file (eval_fraction, seeded)
    hub: str | None = None
    hub_config: str | None = None
    hub_eval_split: str = "validation"
    labels: tuple[str, ...] = ()  # class names in id order; () = sorted string labels / integer ids
    metric: str | None = None  # main metric; None = accuracy (2 classes), macro_f1 (more), spearman (regression)
    eval_fraction: float = 0.1
    read_options: dict[str, Any] = field(default_factory=dict)  # pandas options (GLUE: QUOTE_NONE, no header)
    qa: "QAOptions | None" = None  # the QA settings (used when the rows turn out to be QA examples)


@dataclass(frozen=True)
class QAOptions:
    """Extractive QA: window length, tokens shared by consecutive windows, longest answer, candidates per window
    (`qa.py`)."""

    window: int = 384
    doc_stride: int = 128
    max_answer_length: int = 30
    n_best: int = 20


@dataclass(frozen=True)
class TaskSpec:
    """What the stages need to know of a loaded task: its name, inputs, label set and the metric reported."""

    name: str
    pair: bool  # two text inputs (sentence pairs) or one
    num_labels: int  # 1 = regression; 2 for QA (start and end logits per token)
    label_names: tuple[str, ...]  # class names in id order (empty for regression and QA)
    main_metric: str
    qa: QAOptions | None = None  # set: extractive QA (question, context -> answer span)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1 and self.qa is None

    @property
    def text_keys(self) -> tuple[str, ...]:
        if self.qa is not None:
            return ("question", "context")
        return ("text", "text_pair") if self.pair else ("text",)


@dataclass(frozen=True)
class _Glue:
    """A GLUE task: TSV folder and columns (header names, or indices without a header), hub columns, classes."""

    folder: str
    tsv_columns: tuple[str | int, ...]  # text column(s), then the label column
    hub_columns: tuple[str, ...]
    labels: tuple[str, ...]  # class names in the hub's id order ((): regression)
    metric: str = "accuracy"
    dev_file: str = "dev.tsv"
    hub_dev_split: str = "validation"
    header: bool = True


_NLI = ("entailment", "not_entailment")
GLUE: dict[str, _Glue] = {
    "sst2": _Glue("SST-2", ("sentence", "label"), ("sentence",), ("negative", "positive")),
    "cola": _Glue("CoLA", (3, 1), ("sentence",), ("unacceptable", "acceptable"), "matthews", header=False),
    "rte": _Glue("RTE", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"), _NLI),
    # MRPC and QQP report accuracy (the EFTNAS tables' number); F1 is computed alongside.
    "mrpc": _Glue("MRPC", ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2"),
                  ("not_equivalent", "equivalent")),
    "stsb": _Glue("STS-B", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2"), (), "spearman"),
    "qnli": _Glue("QNLI", ("question", "sentence", "label"), ("question", "sentence"), _NLI),
    "mnli": _Glue("MNLI", ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis"),
                  ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv",
                  hub_dev_split="validation_matched"),
    "qqp": _Glue("QQP", ("question1", "question2", "is_duplicate"), ("question1", "question2"),
                 ("not_duplicate", "duplicate")),
}
DEFAULT_TASK = "sst2"
SQUAD = "squad"  # the SQuAD v1.1 preset: train-v1.1.json and dev-v1.1.json of --data-dir, else the hub's


def glue_source(task: str, data_dir: str | os.PathLike | None = None) -> DataSource:
    """The DataSource of a GLUE task: the TSV files of a local GLUE folder (`data_dir`, else $EFTNAS_GLUE_DIR), else
    `nyu-mll/glue` on the hub."""
    if task not in GLUE:
        raise UserError(f"unknown task {task!r}: a GLUE task ({', '.join(GLUE)}), or give your own data "
                        "(--train-file or --dataset)")
    g = GLUE[task]
    common = dict(name=task, labels=g.labels, metric=g.metric)
    folder = data_dir or os.environ.get(GLUE_DIR_ENV)
    if not folder:
        return DataSource(text_columns=g.hub_columns, hub="nyu-mll/glue", hub_config=task,
                          hub_eval_split=g.hub_dev_split, **common)
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"GLUE data folder not found: {folder}")
    options = {"quoting": csv.QUOTE_NONE, "header": 0 if g.header else None}
    return DataSource(text_columns=g.tsv_columns[:-1], label_column=g.tsv_columns[-1],
                      train_file=str(folder / g.folder / "train.tsv"), eval_file=str(folder / g.folder / g.dev_file),
                      read_options=options, **common)


def task_name(task: str | None, data) -> str:
    """The name a run goes by: `task` if given, else the data file's stem (its folder's name for a file called
    train.*) or the hub dataset's name, else the default GLUE task. (`data` is the run config's DataSettings.)"""
    if task:
        return task
    if data.train_file:
        path = Path(data.train_file).absolute()
        return path.parent.name if path.stem.lower() in ("train", "training") else path.stem
    if data.dataset:
        return data.dataset.rsplit("/", 1)[-1]
    return DEFAULT_TASK


def data_source(task: str | None, data_dir: str | os.PathLike | None, data,
                teacher_labels: tuple[str, ...] = ()) -> DataSource:
    """The run's DataSource: the user's own data when `data` (DataSettings) names files or a hub dataset, else the
    GLUE task `task` (default sst2). A fine-tuned teacher's class names (`teacher_labels`, in its id order) fix
    the class ids: the data's string labels must be among them."""
    if data.train_file or data.dataset:
        source = _own_source(task, data)
    elif data.eval_file:
        raise UserError("--eval-file needs --train-file")
    elif task == SQUAD:
        source = _squad_source(data_dir, data)
    else:
        source = glue_source(task or DEFAULT_TASK, data_dir)
        source = dataclasses.replace(source, metric=data.eval_metric or source.metric)
    if teacher_labels:
        if data.labels and source.labels != teacher_labels:
            raise UserError(f"--labels {', '.join(source.labels)} differ from the teacher's classes "
                            f"{', '.join(teacher_labels)} (its id2label)")
        source = dataclasses.replace(source, labels=teacher_labels)
    return source


def _own_source(task: str | None, data) -> DataSource:
    if data.train_file and data.dataset:
        raise UserError("give your data as files (--train-file) or as a hub dataset (--dataset), not both")
    columns = tuple(c.strip() for c in data.text_columns.split(","))
    if not 1 <= len(columns) <= 2 or not all(columns):
        raise UserError(f"--text-columns takes one column or two (a sentence pair) separated by a comma, "
                        f"got {data.text_columns!r}")
    labels = tuple(n.strip() for n in data.labels.split(",")) if data.labels else ()
    if len(set(labels)) != len(labels) or "" in labels:
        raise UserError(f"--labels must name each class once, got {data.labels!r}")
    return DataSource(name=task_name(task, data), text_columns=columns, label_column=data.label_column,
                      train_file=data.train_file, eval_file=data.eval_file, hub=data.dataset,
                      hub_config=data.dataset_config, hub_eval_split=data.eval_split, labels=labels,
                      metric=data.eval_metric, eval_fraction=data.eval_fraction, qa=_qa_options(data))


def _qa_options(data) -> QAOptions:
    return QAOptions(data.window, data.doc_stride, data.max_answer_length, data.n_best)


def _squad_source(data_dir: str | os.PathLike | None, data) -> DataSource:
    """SQuAD v1.1: train-v1.1.json and dev-v1.1.json in `data_dir`, else the hub's `rajpurkar/squad`."""
    common = dict(name=SQUAD, text_columns=("question", "context"), label_column="answers",
                  metric=data.eval_metric, qa=_qa_options(data))
    if not data_dir:
        return DataSource(hub="rajpurkar/squad", **common)
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"SQuAD data folder not found: {folder}")
    return DataSource(train_file=str(folder / "train-v1.1.json"), eval_file=str(folder / "dev-v1.1.json"), **common)


# ---------------------------------------------------------------------------------------------------------------
# Reading

def _read_file(path: str, options: dict[str, Any]) -> pd.DataFrame:
    """One local file as a DataFrame (CSV/TSV cells as strings: labels are typed later, texts stay texts); a
    SQuAD-format JSON file as its flattened questions."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data file not found: {path}")
    if qa.is_squad_file(p):
        return qa.read_squad(p)
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown data format {p.suffix!r} (CSV, TSV, JSON, JSONL or Parquet)")
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(p, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False,
                               encoding="utf-8-sig", **options)
        if kind == "parquet":
            return pd.read_parquet(p)
        try:
            return pd.read_json(p, lines=kind == "jsonl", dtype=False)
        except ValueError:
            if kind == "jsonl":
                raise
            return pd.read_json(p, lines=True, dtype=False)  # .json files holding JSON lines (as HF writes them)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UserError(f"{path} is not a readable {kind.upper()} file ({str(e).splitlines()[0][:150]})") from None


def _read_hub(source: DataSource) -> tuple[pd.DataFrame, pd.DataFrame, tuple[str, ...]]:
    """train and evaluation splits of a hub dataset, and the class names its label feature carries."""
    import datasets

    try:
        hub = datasets.load_dataset(source.hub, source.hub_config)
    except Exception as e:  # no network, no cache, no such dataset: the library raises many different types
        hint = {"nyu-mll/glue": f"; pass --data-dir with the GLUE TSV folder or set {GLUE_DIR_ENV}",
                "rajpurkar/squad": "; pass --data-dir with train-v1.1.json and dev-v1.1.json, or --train-file"
                }.get(source.hub, "; give local files with --train-file instead")
        raise UserError(f"cannot load {source.hub} from the dataset hub ({str(e).splitlines()[0][:120]}){hint}") \
            from None
    for split in ("train", source.hub_eval_split):
        if split not in hub:
            raise UserError(f"{source.hub} has no {split!r} split (it has {', '.join(hub)}): choose --eval-split")
    feature = hub["train"].features.get(source.label_column)
    names = tuple(feature.names) if isinstance(feature, ClassLabel) else ()
    return hub["train"].to_pandas(), hub[source.hub_eval_split].to_pandas(), names


def _label_values(values: pd.Series, where: str) -> tuple[str, pd.Series]:
    """('int' | 'float' | 'str', values) for a label column; mixed kinds and empty labels are refused."""
    missing = values.map(lambda v: v is None or v != v or (isinstance(v, str) and not v.strip()))  # v != v: NaN
    if missing.any():
        raise UserError(f"{where}: row {int(np.flatnonzero(missing)[0])} has no label")
    if values.map(lambda v: isinstance(v, bool)).any():
        return "str", values.astype(str)
    numbers = pd.to_numeric(values.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    parsed = numbers.notna()
    if not parsed.any():
        return "str", values.astype(str)
    if not parsed.all():
        raise UserError(f"{where}: mixed label types: {values[parsed].iloc[0]!r} is a number, "
                        f"{values[~parsed].iloc[0]!r} is not")
    if (numbers != np.round(numbers)).any():
        return "float", numbers.astype(np.float32)
    return "int", numbers.astype(np.int64)


def _frame(df: pd.DataFrame, source: DataSource, where: str) -> tuple[pd.DataFrame, str]:
    """The text column(s), the raw label and the row index under canonical names; the label's kind."""
    if df.empty:
        raise UserError(f"{where} holds no examples")
    wanted = [*source.text_columns, source.label_column]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        known = ", ".join(map(str, df.columns[:12]))
        raise UserError(f"{where} lacks column(s) {missing} (it has: {known}); name yours with --text-columns and "
                        "--label-column")
    kind, labels = _label_values(df[source.label_column], where)
    out = pd.DataFrame({key: df[c].astype(str) for key, c in zip(("text", "text_pair"), source.text_columns)})
    out["label"], out["idx"] = labels.to_numpy(), np.arange(len(df))
    return out, kind


def _class_ids(frames: dict[str, pd.DataFrame], kind: str, names: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Replace string labels by class ids in place; returns the class names in id order."""
    if kind == "str":
        names = names or tuple(sorted(set().union(*(f["label"] for f in frames.values()))))
        index = {n: i for i, n in enumerate(names)}
        for split, frame in frames.items():
            unknown = sorted(set(frame["label"]) - set(index))
            if unknown:
                raise UserError(f"{where}: label {unknown[0]!r} in the {split} data is not one of the classes "
                                f"{', '.join(names)}")
            frame["label"] = frame["label"].map(index).astype(np.int64)
        return names
    top = max(int(f["label"].max()) for f in frames.values())
    if min(int(f["label"].min()) for f in frames.values()) < 0 or (names and top >= len(names)):
        bad = next(v for f in frames.values() for v in f["label"] if v < 0 or (names and v >= len(names)))
        raise UserError(f"{where}: label {bad} is outside the classes 0..{(len(names) or top + 1) - 1}")
    return names or tuple(str(i) for i in range(top + 1))


def _dataset(frame: pd.DataFrame, spec: TaskSpec) -> Dataset:
    label = Value("float32") if spec.is_regression else ClassLabel(names=list(spec.label_names))
    features = Features({**{k: Value("string") for k in spec.text_keys}, "label": label, "idx": Value("int64")})
    return Dataset.from_pandas(frame[[*spec.text_keys, "label", "idx"]], features=features, preserve_index=False)


def _carve(dataset: Dataset, fraction: float, seed: int, spec: TaskSpec, what: str) -> tuple[Dataset, Dataset]:
    """(rest, seeded share) of `dataset`, stratified by class for a classifier.

    The same split as `dataset.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")`, whose
    stratified path in datasets 5 reads the labels row by row (9-11 s of every run on SST-2's 67k rows); here they
    are read as one column and handed to the same datasets routine with the same generator.
    """
    try:
        if spec.is_regression:
            split = dataset.train_test_split(test_size=fraction, seed=seed)
            return split["train"], split["test"]
        n_test = math.ceil(fraction * len(dataset))
        n_train = len(dataset) - n_test
        if n_train <= 0:
            raise ValueError("the resulting train set would be empty")
        labels = np.asarray(dataset.select_columns(["label"]).to_dict()["label"])
        train, test = next(stratified_shuffle_split_generate_indices(labels, n_train, n_test,
                                                                     rng=np.random.default_rng(seed)))
    except ValueError as e:  # too few examples (per class)
        reason = "a class has a single example" if str(e) == "Minimum class count error" else str(e).splitlines()[0]
        raise UserError(f"{spec.name}: cannot carve a {fraction:.0%} {what} split from {len(dataset)} training "
                        f"examples ({reason})") from None
    return dataset.select(train), dataset.select(test)


def load_data(source: DataSource, search_fraction: float = 0.1, seed: int = 0) -> tuple[DatasetDict, TaskSpec]:
    """Splits 'train', 'search' and 'validation' of `source` (module docstring) and its TaskSpec."""
    if not 0 < search_fraction < 1:
        raise UserError(f"search fraction must be in (0, 1), got {search_fraction}")
    names = source.labels
    if source.hub:
        train, evaluation, hub_names = _read_hub(source)
        names = names or hub_names
        where = {"train": f"{source.hub} train", "eval": f"{source.hub} {source.hub_eval_split}"}
    else:
        train = _read_file(source.train_file, source.read_options)
        evaluation = _read_file(source.eval_file, source.read_options) if source.eval_file else None
        where = {"train": source.train_file, "eval": source.eval_file}
    if source.qa is not None and all(c in train.columns for c in qa.QA_COLUMNS):
        return _load_qa(source, train, evaluation, where, search_fraction, seed)
    frames, kinds = {}, {}
    for split, df in (("train", train), ("eval", evaluation)):
        if df is not None:
            frames[split], kinds[split] = _frame(df, source, where[split])
    if "str" in kinds.values() and len(set(kinds.values())) > 1:
        raise UserError(f"{source.name}: mixed label types: class names in one split, numbers in the other "
                        f"({', '.join(f'{s}: {k}' for s, k in kinds.items())})")
    regression = "float" in kinds.values() or source.metric in REGRESSION_METRICS
    if regression and "str" in kinds.values():
        raise UserError(f"{source.name}: metric {source.metric} needs a numeric label; "
                        f"{source.label_column!r} holds class names")
    if regression and names:
        raise UserError(f"{source.name}: classes are named ({', '.join(names)}) but {source.label_column!r} is a "
                        "score (regression)")
    if regression:
        for frame in frames.values():
            frame["label"] = frame["label"].astype(np.float32)
    else:
        names = _class_ids(frames, kinds["train"], names, source.name)
    spec = _spec(source, names, regression)
    data = {split: _dataset(frame, spec) for split, frame in frames.items()}
    if "eval" not in data:
        data["train"], data["eval"] = _carve(data["train"], source.eval_fraction, seed, spec, "evaluation")
    if not regression:
        _check_classes(data["train"], data["eval"], spec)
    train, search = _carve(data["train"], search_fraction, seed, spec, "search")
    return DatasetDict(train=train, search=search, validation=data["eval"]), spec


_QA_FEATURES = Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                         "question": Value("string"), "idx": Value("int64"),
                         "answers": {"text": [Value("string")], "answer_start": [Value("int32")]}})


def _load_qa(source: DataSource, train: pd.DataFrame, evaluation: pd.DataFrame | None, where: dict,
             search_fraction: float, seed: int) -> tuple[DatasetDict, TaskSpec]:
    """QA splits: the evaluation and search splits are whole articles (qa.split_by_article)."""
    metric = source.metric or "f1"
    if metric not in QA_METRICS:
        raise UserError(f"metric {metric} does not fit extractive QA (choose {', '.join(QA_METRICS)})")
    if evaluation is not None and not all(c in evaluation.columns for c in qa.QA_COLUMNS):
        raise UserError(f"{where['eval']} holds no QA examples (question, context, answers) while the training "
                        "data does")
    train = qa.check_examples(train, where["train"])
    if evaluation is None:
        train, evaluation = qa.split_by_article(train, source.eval_fraction, seed)
    else:
        evaluation = qa.check_examples(evaluation, where["eval"])
    train, search = qa.split_by_article(train, search_fraction, seed)
    splits = {name: Dataset.from_pandas(frame, features=_QA_FEATURES, preserve_index=False)
              for name, frame in (("train", train), ("search", search), ("validation", evaluation))}
    return DatasetDict(splits), TaskSpec(source.name, True, 2, (), metric, source.qa)


def _main_metric(metric: str | None, regression: bool, num_classes: int) -> str:
    if metric is None:
        return "spearman" if regression else "accuracy" if num_classes <= 2 else "macro_f1"
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    if metric not in allowed:  # (exact_match: a QA metric, and these rows are no QA examples)
        raise UserError(f"metric {metric} does not fit a {'regression' if regression else 'classification'} "
                        f"label (choose {', '.join(allowed)})")
    if metric == "f1" and num_classes != 2:
        raise UserError(f"metric f1 is binary; with {num_classes} classes choose macro_f1")
    return metric


def _check_classes(train: Dataset, evaluation: Dataset, spec: TaskSpec) -> None:
    """A classifier needs two classes to learn from, and is evaluated only on classes it was trained on."""
    seen = {int(v) for v in train["label"]}
    if len(seen) < 2:
        only = spec.label_names[next(iter(seen))] if seen else "none"
        raise UserError(f"{spec.name}: the training data holds one class only ({only})")
    unseen = sorted(spec.label_names[i] for i in {int(v) for v in evaluation["label"]} - seen)
    if unseen:
        raise UserError(f"{spec.name}: the evaluation data has label(s) {unseen} that the training data lacks")


def load_task(task: str, data_dir: str | os.PathLike | None = None, search_fraction: float = 0.1, seed: int = 0,
              max_train: int | None = None) -> DatasetDict:
    """A GLUE task's splits (`load_data` of its preset), `train` subsampled to `max_train`.

    The search split is carved from the full training set before `max_train` subsamples what remains, so a
    given seed always yields the same search split whatever the training budget; every stage of a run must use
    the run's seed, or its search split overlaps the data the super-network was trained on.
    """
    data, _ = load_data(glue_source(task, data_dir), search_fraction, seed)
    data["train"] = subsample(data["train"], max_train, seed)
    return data


def known_spec(source: DataSource) -> TaskSpec | None:
    """The TaskSpec when the source fixes it without reading data (named classes, or a regression metric), as
    for every GLUE task: checks can then run before any data is read. `load_data` derives the same one."""
    if source.qa is not None or (not source.labels and source.metric not in REGRESSION_METRICS):
        return None  # (own data may turn out to be QA: only its rows tell)
    return _spec(source, source.labels, regression=not source.labels)


def _spec(source: DataSource, names: tuple[str, ...], regression: bool) -> TaskSpec:
    return TaskSpec(source.name, len(source.text_columns) == 2, 1 if regression else len(names),
                    () if regression else names, _main_metric(source.metric, regression, len(names)))


def glue_spec(task: str) -> TaskSpec:
    """The TaskSpec of a GLUE task, without reading its data."""
    if task not in GLUE:
        raise UserError(f"unknown task {task!r}")
    g = GLUE[task]
    return known_spec(DataSource(task, g.hub_columns, labels=g.labels, metric=g.metric))


def check_trained_task(record: str | os.PathLike, task: str, what: str) -> None:
    """Refuse a model trained on another task: shapes cannot tell, when the label counts agree (an SST-2 teacher
    distilled as CoLA). `record` is the JSON its training wrote (no record, e.g. a user's own model: no check)."""
    record = Path(record)
    if record.is_file():
        trained = read_json(record, f"{what} record").get("task")
        if trained is not None and trained != task:
            raise UserError(f"{what} {record.parent} was trained on {trained}, not {task}")


def subsample(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded subset of `n` examples (all of them when n is None or not smaller)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def tokenize(dataset: Dataset, tokenizer, spec: TaskSpec, max_length: int = 128, training: bool = True) -> Dataset:
    """Token ids and `label`, without padding (batches are padded to their own longest sequence). QA: windows of
    the contexts (`qa.py`), with answer positions for training, else with what scoring needs (each window's
    example `idx`, token offsets, the context and the gold answer texts)."""
    if spec.qa is not None:
        return _qa_tokenize(dataset, tokenizer, spec.qa, training)
    keys = spec.text_keys

    def encode(batch: dict) -> dict:
        return tokenizer(*(batch[k] for k in keys), truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c != "label"],
                       desc="tokenize")


def _qa_tokenize(dataset: Dataset, tokenizer, options: QAOptions, training: bool) -> Dataset:
    def encode(batch: dict) -> dict:
        if training:
            return qa.train_features(batch, tokenizer, options.window, options.doc_stride)
        enc = qa.eval_features(batch, tokenizer, options.window, options.doc_stride)
        rows = enc.pop("example")
        enc["example"] = [batch["idx"][j] for j in rows]
        enc["context"] = [batch["context"][j] for j in rows]
        enc["gold"] = [batch["answers"][j]["text"] for j in rows]
        return enc

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                       desc="QA windows" + (" (training)" if training else ""))


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray,
                    main_only: bool = False) -> dict[str, float]:
    """The task's metrics from logits (or class ids / regression outputs); 'metric' = the main one.

    `main_only`: the main metric alone. A bootstrap computes it hundreds of times, and sklearn's input checks made
    all four classification metrics cost ~10 ms per resample: seconds per front subnet.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if spec.is_regression:
        predictions = predictions.reshape(-1)
        constant = np.ptp(predictions) == 0  # a constant predictor ranks nothing: 0, as sklearn's MCC does, not NaN
        metrics = {"pearson": lambda: 0.0 if constant else float(pearsonr(predictions, labels)[0]),
                   "spearman": lambda: 0.0 if constant else float(spearmanr(predictions, labels)[0])}
    else:
        if predictions.ndim == 2:
            predictions = predictions.argmax(-1)
        classes = list(range(spec.num_labels))
        metrics = {"accuracy": lambda: float(np.mean(predictions == labels)),
                   "macro_f1": lambda: float(f1_score(labels, predictions, average="macro", labels=classes,
                                                      zero_division=0)),
                   "matthews": lambda: float(matthews_corrcoef(labels, predictions))}
        if spec.num_labels == 2:
            metrics["f1"] = lambda: float(f1_score(labels, predictions, zero_division=0))
    out = {name: compute() for name, compute in metrics.items() if not main_only or name == spec.main_metric}
    out["metric"] = out[spec.main_metric]
    return out


def calibration_texts(spec: TaskSpec, train: Dataset, n: int, seed: int = 0) -> list[str | tuple[str, str]]:
    """`n` seeded training inputs (a sentence or a sentence pair) for INT8 calibration."""
    rows = subsample(train, n, seed)
    columns = [rows[k] for k in spec.text_keys]
    return list(columns[0]) if len(columns) == 1 else list(zip(*columns))
