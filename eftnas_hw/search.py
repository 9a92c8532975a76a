"""The search stage: NSGA-II (`evolution.py`) over a trained super-network, task metric on the search split vs
predicted latency (or GMACs), resumable.

The search split is carved from the training data with the run's seed (the dev set is kept for the final report,
and every stage must use the same seed, or the split overlaps what the super-network was trained on). Evaluating a
subnet dominates the cost, so every metric is appended to `evaluations.jsonl` the moment it is computed: a killed
search run again with the same seed makes the same decisions from the replayed cache and continues where it
stopped. The cache holds metrics only; costs are recomputed from the cost model (a table look-up), so a search
with a rebuilt latency table, or on GMACs instead, reuses every metric already computed for the same weights and
split.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .context import RunContext
from .cost import gmacs_cost, latency_cost
from .data import check_trained_task
from .errors import UserError
from .evaluate import SubnetEvaluator
from .evolution import HV_REFERENCE, EvolutionFinder, SearchResult
from .files import check_writable, file_digest, json_digest, read_json, write_json_atomic
from .reports import SEARCH_FRONT, SEARCH_SETTINGS, write_search_reports
from .runtime import compute_device, native_bf16
from .settings import SearchSettings
from .subnet import EvaluatedSubnet, SubnetConfig
from .supernet import REPORT_FILE, load_supernet

CACHE_NAME = "evaluations.jsonl"


class EvaluationCache:
    """SubnetConfig -> metric, mirrored line by line to evaluations.jsonl (a torn last line is ignored)."""

    def __init__(self, path: Path):
        self.metrics: dict[SubnetConfig, float] = {}
        text = path.read_text() if path.exists() else ""
        if text:
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the write in progress when the previous run was killed
                self.metrics[SubnetConfig.from_dict(record["config"])] = record["metric"]
        self._file = open(path, "a")
        if text and not text.endswith("\n"):
            self._file.write("\n")  # end a torn line, or the next record would be glued to it and lost
        self.fresh = self.replayed = 0
        self.eval_seconds = 0.0

    def accuracy(self, evaluate: Callable[[SubnetConfig], float]) -> Callable[[SubnetConfig], float]:
        """`evaluate` behind the cache: replayed when known, else computed, timed and appended."""
        def cached(cfg: SubnetConfig) -> float:
            if cfg in self.metrics:
                self.replayed += 1
                return self.metrics[cfg]
            start = time.perf_counter()
            metric = float(evaluate(cfg))
            seconds = time.perf_counter() - start
            self.fresh += 1
            self.eval_seconds += seconds
            self.metrics[cfg] = metric
            self._file.write(json.dumps({"config": cfg.to_dict(), "metric": metric, "seconds": seconds}) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            return metric
        return cached

    def close(self) -> None:
        self._file.close()


@dataclass
class SearchRun:
    """A finished search: the finder's result and how it was obtained (`search.json` holds the same)."""

    result: SearchResult
    fresh: int  # evaluations computed in this run
    replayed: int  # metrics that came from evaluations.jsonl (an interrupted or earlier run)
    evals_per_minute: float  # fresh evaluations per minute of evaluation time
    wall_seconds: float
    settings: dict
    out_dir: Path


def _check_settings(out_dir: Path, cache_key: dict) -> None:
    """Cached metrics are only valid for the same super-network weights, task and split: refuse to mix them."""
    path = out_dir / SEARCH_SETTINGS
    if not path.exists():
        return
    # searches before the numerics were recorded all evaluated in f32
    stored = {"numerics": "f32", **read_json(path, "search settings").get("cache_key", {})}
    diffs = [f"{k}: {stored.get(k)!r} there, {cache_key.get(k)!r} now"
             for k in sorted(set(stored) | set(cache_key)) if stored.get(k) != cache_key.get(k)]
    if diffs:
        raise UserError(f"{out_dir} holds a search with other settings ({'; '.join(diffs)}); "
                        f"use another --out to start a new search")


def search_supernet(ctx: RunContext, supernet_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    settings: SearchSettings = SearchSettings(), progress: bool = True) -> SearchRun:
    """Load the super-network and `ctx`'s search split, run NSGA-II with the run's cost, write the reports.

    The objective is `ctx.config.metric`: the predicted latency of `ctx.table`, or GMACs at the profile's
    length. GMACs are recorded always, the predicted latency whenever there is a table, so the front can be cut by
    either budget later.
    """
    supernet_dir, out_dir = Path(supernet_dir), Path(out_dir)
    check_writable(out_dir)
    check_trained_task(supernet_dir / REPORT_FILE, ctx.spec.name, "super-network")
    supernet, space = load_supernet(supernet_dir)
    supernet.model.to(compute_device())  # a GPU, when there is one, evaluates the subnets
    if supernet.shape.num_labels != ctx.spec.num_labels:
        raise UserError(f"the super-network has {supernet.shape.num_labels} outputs, task {ctx.spec.name} needs "
                        f"{ctx.spec.num_labels}")
    table = ctx.table
    if table is not None:
        table.check_shape(supernet.shape)
    elif ctx.config.metric == "latency":
        raise UserError("a search on latency needs a latency table (or choose the GMACs metric)")
    profile = table.profile if table is not None else ctx.profile
    seq_len = profile.seq_len
    gmacs = gmacs_cost(supernet.shape, seq_len)
    latency = latency_cost(table) if table is not None else None
    efficiency = latency if ctx.config.metric == "latency" else gmacs

    split = ctx.search_split(settings.max_search)
    tokenized = ctx.tokenized(split, training=False)
    # subnets deployed in bf16 are scored in bf16 (autocast), where this machine computes it natively
    numerics = "bf16" if profile.precision == "bf16" and native_bf16() else "f32"
    cache_key = {"weights": file_digest(supernet_dir / "model.safetensors"), "task": ctx.spec.name,
                 "seed": ctx.config.seed, "max_length": ctx.config.max_length,
                 "search_split": json_digest(list(split["idx"])), "numerics": numerics}
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, cache_key)
    # Where the inputs live (defaults for `export --front`); not part of the cache identity, so folders may move.
    record = {"cache_key": cache_key, **settings.to_dict(), "cost_name": efficiency.name,
              "supernet": str(supernet_dir.resolve()), "data_dir": ctx.config.data_dir,
              "data": ctx.config.data.to_dict(),
              "table_path": str(table.path.resolve()) if table is not None and table.path else None,
              "table_digest": table.digest if table is not None else None,
              "profile": profile.to_dict(), "gmacs_seq_len": seq_len,
              "search_examples": len(split),
              "hv_reference": {"metric": HV_REFERENCE[0], "cost_over_base_cost": HV_REFERENCE[1]}}
    write_json_atomic(out_dir / SEARCH_SETTINGS, record)

    evaluator = SubnetEvaluator(supernet, tokenized, ctx.spec, settings.batch_size, bf16=numerics == "bf16")
    # Outputs of this run's evaluations, kept for the front's standard errors (a classifier's are [examples,
    # classes]: kilobytes; a QA model's hold every window's token logits, so those are computed again instead).
    kept: dict[SubnetConfig, np.ndarray] = {}

    def metric(cfg: SubnetConfig) -> float:
        outputs = evaluator.subnet_outputs(cfg)
        if ctx.spec.qa is None:
            kept[cfg] = outputs
        return evaluator.score(outputs)["metric"]

    cache = EvaluationCache(out_dir / CACHE_NAME)
    start = time.perf_counter()
    try:
        finder = EvolutionFinder(space, cache.accuracy(metric), efficiency,
                                 [c for c in (gmacs, latency) if c is not None])
        result = finder.run(settings.pop_size, settings.n_evals, ctx.config.seed, progress)
    finally:
        cache.close()
    # how far apart front points must be before the search split can tell them apart
    result.front = [replace(r, metric_se=evaluator.standard_error(
                        kept[r.config] if r.config in kept else evaluator.subnet_outputs(r.config)))
                    for r in tqdm(result.front, desc="front standard errors", disable=not progress)]
    run = SearchRun(result, cache.fresh, cache.replayed,
                    60 * cache.fresh / cache.eval_seconds if cache.eval_seconds else math.nan,
                    time.perf_counter() - start, record, out_dir)
    write_search_reports(run)
    return run


def load_search(search_dir: str | os.PathLike) -> tuple[list[EvaluatedSubnet], dict]:
    """(front, settings) of a finished search folder."""
    search_dir = Path(search_dir)
    if not search_dir.is_dir():
        raise UserError(f"search folder not found: {search_dir}")
    if not (search_dir / SEARCH_FRONT).exists():
        raise UserError(f"{search_dir} has no {SEARCH_FRONT}: the search did not finish (run it again to resume)")
    front = read_json(search_dir / SEARCH_FRONT, "Pareto front")
    if not isinstance(front, list):
        raise UserError(f"{search_dir / SEARCH_FRONT} is not a list of evaluated subnets")
    return [EvaluatedSubnet.from_dict(r) for r in front], read_json(search_dir / SEARCH_SETTINGS, "search settings")
