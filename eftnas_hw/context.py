"""The run context: what every stage of one run shares, derived once and passed down.

The task's splits are carved with the run's seed (the search split must be disjoint from the training data every
stage trains on), the tokenizer is loaded once, and the deployment profile and latency table are resolved once:
stages receive them instead of re-deriving them from paths. Each part loads on first use, so a command that
needs only the data never touches OpenVINO.
"""
from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .settings import RunConfig

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from .data import DataSource, TaskSpec
    from .latency import LatencyTable, Profile


class RunContext:
    """`config` holds the common settings (model, task, data, seed, length, profile); `tokenizer_source` is the
    folder whose tokenizer the stages use (default: the model's)."""

    def __init__(self, config: RunConfig, tokenizer_source: str | os.PathLike | None = None,
                 table: "LatencyTable | None" = None):
        self.config = config
        self.tokenizer_source = tokenizer_source if tokenizer_source is not None else config.base_model
        self.table = table  # the one loaded latency table (None: no table, costs are GMACs)

    @cached_property
    def spec(self) -> "TaskSpec":
        """The task: its inputs, classes and metric (read from the data only where the settings do not fix them)."""
        from .data import known_spec

        return known_spec(self.source) or self._loaded[1]

    @cached_property
    def source(self) -> "DataSource":
        """Where the data comes from: the user's files or hub dataset, or a GLUE task's (data.py)."""
        from .data import data_source

        config = self.config
        return data_source(config.task, config.data_dir, config.data, self.label_names)

    @cached_property
    def splits(self) -> "DatasetDict":
        """train (all of it), search (carved from train with the run's seed) and validation."""
        return self._loaded[0]

    @cached_property
    def _loaded(self) -> "tuple[DatasetDict, TaskSpec]":
        from .data import load_data

        return load_data(self.source, seed=self.config.seed)

    @property
    def label_names(self) -> tuple[str, ...]:
        """A fine-tuned teacher's class names, in its id order: the data's labels must be these."""
        from .models import teacher_labels

        return teacher_labels(self.config.teacher) if self.config.teacher else ()

    @cached_property
    def tokenizer(self) -> Any:
        from .models import load_tokenizer

        return load_tokenizer(self.tokenizer_source)

    @cached_property
    def profile(self) -> "Profile":
        from .latency import Profile

        return Profile.load(self.config.latency.profile)

    def train(self, max_train: int | None) -> "Dataset":
        """The training split, or a seeded subset of `max_train` examples of it."""
        from .data import subsample

        return subsample(self.splits["train"], max_train, self.config.seed)

    def search_split(self, max_search: int | None) -> "Dataset":
        """The search split, or a seeded subset of `max_search` examples of it."""
        from .data import subsample

        return subsample(self.splits["search"], max_search, self.config.seed)

    def tokenized(self, dataset: "Dataset", training: bool = True) -> "Dataset":
        """Model inputs of `dataset`: to train on, or (training=False) to score (QA windows differ)."""
        from .data import tokenize

        return tokenize(dataset, self.tokenizer, self.spec, self.config.max_length, training)

    @cached_property
    def dev(self) -> "Dataset":
        """The tokenized evaluation split (GLUE dev), shared by every stage that reports a dev metric."""
        return self.tokenized(self.splits["validation"], training=False)
