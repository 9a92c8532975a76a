"""NSGA-II over the super-network's search space (EFTNAS section 4): task metric vs predicted latency or GMACs.

Objective 1 is the task metric of the activated subnet on the *search* split (carved from training data; the dev
set is kept for the final report), objective 2 the cost (LUT latency in ms, or counted GMACs). Evaluating a
subnet dominates the search cost, so every evaluation is cached by configuration and appended to
`evaluations.jsonl` the moment it finishes: NSGA-II revisits configurations (cache hits), and a killed search run
again with the same seed makes the same decisions from the replayed cache and continues where it stopped.
The cache holds metrics only; costs are recomputed from the cost model (a table look-up), so a search with a
rebuilt latency table, or on GMACs instead, reuses every metric already computed for the same super-network.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .files import read_json, write_json_atomic
from .subnet import SearchSpace, SubnetConfig

EvaluateFn = Callable[[Sequence[SubnetConfig]], list[float]]
CostFn = Callable[[SubnetConfig], float]

CACHE_NAME = "evaluations.jsonl"
SETTINGS_NAME = "search.json"
COST_UNITS = {"latency_ms": "predicted latency (ms)", "gmacs": "GMACs"}
# Hypervolume of (-metric, cost / base cost) against this point, i.e. metric 0 and 1.1 x the base model's cost.
HV_REFERENCE = (0.0, 1.1)


def config_key(cfg: SubnetConfig) -> str:
    return json.dumps(cfg.to_dict(), separators=(",", ":"))


@dataclass
class SearchResult:
    evaluations: list[dict]  # every evaluated subnet, base model first, in evaluation order
    front: list[dict]  # non-dominated evaluations (metric up, cost down), sorted by cost
    base: dict  # the largest subnet of the space (the super-network itself)
    hypervolume: float
    cache_hits: int  # NSGA-II proposals of configurations already seen in this run (revisits)
    replayed: int  # configurations whose metric came from evaluations.jsonl (an interrupted or earlier run)
    fresh: int  # evaluations computed in this run
    evals_per_minute: float  # fresh evaluations per minute of evaluation time
    wall_seconds: float
    out_dir: Path
    settings: dict = field(default_factory=dict)


class EvaluationCache:
    """Configuration -> record, mirrored line by line to evaluations.jsonl (a torn last line is ignored)."""

    def __init__(self, path: Path):
        self.records: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the write in progress when the previous run was killed
                self.records[config_key(SubnetConfig.from_dict(record["config"]))] = record
        self._file = open(path, "a")

    def get(self, cfg: SubnetConfig) -> dict | None:
        return self.records.get(config_key(cfg))

    def add(self, record: dict) -> None:
        self.records[config_key(SubnetConfig.from_dict(record["config"]))] = record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def pareto_front(records: Sequence[dict], cost_name: str) -> list[dict]:
    """Non-dominated records (higher metric, lower cost), sorted by cost; identical points are kept once."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not records:
        return []
    F = np.array([[-r["metric"], r[cost_name]] for r in records], dtype=float)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    front, seen = [], set()
    for r in sorted((records[i] for i in idx), key=lambda r: (r[cost_name], -r["metric"])):
        point = (r["metric"], r[cost_name])
        if point not in seen:
            seen.add(point)
            front.append(r)
    return front


def hypervolume(front: Sequence[dict], cost_name: str, base_cost: float) -> float:
    from pymoo.indicators.hv import HV

    if not front:
        return 0.0
    F = np.array([[-r["metric"], r[cost_name] / base_cost] for r in front], dtype=float)
    return float(HV(ref_point=np.array(HV_REFERENCE))(F))


def _check_settings(out_dir: Path, cache_key: dict) -> None:
    """Cached metrics are only valid for the same super-network weights, task and split: refuse to mix them."""
    path = out_dir / SETTINGS_NAME
    if not path.exists():
        return
    stored = read_json(path, "search settings").get("cache_key", {})
    diffs = [f"{k}: {stored.get(k)!r} there, {cache_key.get(k)!r} now"
             for k in sorted(set(stored) | set(cache_key)) if stored.get(k) != cache_key.get(k)]
    if diffs:
        raise UserError(f"{out_dir} holds a search with other settings ({'; '.join(diffs)}); "
                        f"use another --out to start a new search")


def run_search(supernet, space: SearchSpace, evaluate_fn: EvaluateFn, cost_fn: CostFn,
               out_dir: str | os.PathLike, pop_size: int = 40, n_evals: int = 1000, seed: int = 0,
               progress: bool = True, cost_name: str = "latency_ms",
               extra_costs: dict[str, CostFn] | None = None, cache_key: dict | None = None,
               notes: dict | None = None) -> SearchResult:
    """NSGA-II (pymoo) over `space`'s integer genome, resumable from out_dir/evaluations.jsonl.

    evaluate_fn maps subnets to search-split metrics (higher is better); cost_fn gives the second objective,
    recorded under `cost_name`; extra_costs are recorded beside it (e.g. GMACs when searching on latency) so
    that `select_subnet` can apply either budget. cache_key identifies what the cached metrics depend on
    (weights, task, split); notes (e.g. the data folder) are only recorded in search.json.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize
    from tqdm.auto import tqdm

    if pop_size < 2 or n_evals < pop_size:
        raise UserError(f"need a population of at least 2 and at least one population of evaluations "
                        f"(got --pop {pop_size}, --evals {n_evals})")
    space.validate(supernet.shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_key = cache_key or {}
    _check_settings(out_dir, cache_key)
    settings = {"cache_key": cache_key, "pop_size": pop_size, "n_evals": n_evals, "seed": seed,
                "cost_name": cost_name, **(notes or {}),
                "hv_reference": {"metric": HV_REFERENCE[0], "cost_over_base_cost": HV_REFERENCE[1]}}
    write_json_atomic(out_dir / SETTINGS_NAME, settings)
    extra_costs = extra_costs or {}
    cache = EvaluationCache(out_dir / CACHE_NAME)
    stats = {"hits": 0, "replayed": 0, "fresh": 0, "eval_seconds": 0.0}
    seen: dict[str, dict] = {}  # configurations evaluated or looked up this run, in first-seen order

    def evaluate(cfg: SubnetConfig) -> dict:
        key = config_key(cfg)
        if key in seen:
            stats["hits"] += 1
            return seen[key]
        record = cache.get(cfg)
        if record is None:
            start = time.perf_counter()
            metric = float(evaluate_fn([cfg])[0])
            record = {"config": cfg.to_dict(), "metric": metric, "seconds": time.perf_counter() - start}
            stats["fresh"] += 1
            stats["eval_seconds"] += record["seconds"]
            cache.add(record)
        else:
            stats["replayed"] += 1
        costs = {name: float(fn(cfg)) for name, fn in {cost_name: cost_fn, **extra_costs}.items()}
        seen[key] = {"config": record["config"], "metric": record["metric"], **costs, "seconds": record["seconds"]}
        return seen[key]

    start = time.perf_counter()
    base = evaluate(space.largest())
    base_cost = base[cost_name]
    bar = tqdm(total=n_evals, desc="NSGA-II", unit="eval", disable=not progress)

    class SubnetProblem(Problem):
        def __init__(self) -> None:
            sizes = np.array([len(c) for c in space.choices()])
            super().__init__(n_var=len(sizes), n_obj=2, xl=np.zeros(len(sizes)), xu=sizes - 1, vtype=int)

        def _evaluate(self, X, out, *args, **kwargs):
            rows = []
            for genome in np.asarray(X).round().astype(int):
                record = evaluate(space.decode(genome))
                rows.append([-record["metric"], record[cost_name]])
                bar.update(1)
            front = pareto_front(list(seen.values()), cost_name)
            bar.set_postfix(front=len(front), hv=f"{hypervolume(front, cost_name, base_cost):.4f}",
                            hits=stats["hits"], replayed=stats["replayed"])
            out["F"] = np.array(rows, dtype=float)

    algorithm = NSGA2(pop_size=pop_size, sampling=IntegerRandomSampling(),
                      crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                      mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    try:
        minimize(SubnetProblem(), algorithm, ("n_eval", n_evals), seed=seed, verbose=False)
    finally:
        bar.close()
        cache.close()

    evaluations = list(seen.values())
    front = pareto_front(evaluations, cost_name)
    result = SearchResult(
        evaluations=evaluations, front=front, base=base, hypervolume=hypervolume(front, cost_name, base_cost),
        cache_hits=stats["hits"], replayed=stats["replayed"], fresh=stats["fresh"],
        evals_per_minute=60 * stats["fresh"] / stats["eval_seconds"] if stats["eval_seconds"] else math.nan,
        wall_seconds=time.perf_counter() - start, out_dir=out_dir, settings=settings)
    write_search_outputs(result, cost_name)
    return result


def _row(record: dict, cost_names: Sequence[str], **extra) -> dict:
    cfg = record["config"]
    return {"metric": record["metric"], **{c: record.get(c) for c in cost_names},
            "heads": " ".join(map(str, cfg["heads"])), "ffn": " ".join(map(str, cfg["ffn"])), **extra}


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_search_outputs(result: SearchResult, cost_name: str) -> None:
    """evaluations.{csv,json}, front.{csv,json}, pareto.png and the summary in search.json."""
    out = result.out_dir
    costs = [c for c in COST_UNITS if c in result.base]
    on_front = {config_key(SubnetConfig.from_dict(r["config"])) for r in result.front}
    base_key = config_key(SubnetConfig.from_dict(result.base["config"]))
    rows = [_row(r, costs, is_base=config_key(SubnetConfig.from_dict(r["config"])) == base_key,
                 on_front=config_key(SubnetConfig.from_dict(r["config"])) in on_front) for r in result.evaluations]
    _write_csv(out / "evaluations.csv", rows)
    _write_csv(out / "front.csv", [_row(r, costs) for r in result.front])
    write_json_atomic(out / "evaluations.json", result.evaluations)
    write_json_atomic(out / "front.json", result.front)
    summary = {"evaluated": len(result.evaluations), "fresh": result.fresh, "cache_hits": result.cache_hits,
               "replayed_from_cache": result.replayed, "front_size": len(result.front),
               "hypervolume": result.hypervolume, "evals_per_minute": result.evals_per_minute,
               "wall_seconds": result.wall_seconds, "base": result.base}
    write_json_atomic(out / SETTINGS_NAME, {**result.settings, "summary": summary})
    plot_front(result.evaluations, result.front, result.base, cost_name, out / "pareto.png")


def plot_front(evaluations: Sequence[dict], front: Sequence[dict], base: dict, cost_name: str,
               path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([r[cost_name] for r in evaluations], [r["metric"] for r in evaluations], s=8, c="0.7",
               label="evaluated subnets")
    ax.plot([r[cost_name] for r in front], [r["metric"] for r in front], "o-", c="tab:blue", ms=4,
            drawstyle="steps-post", label="Pareto front")
    ax.scatter([base[cost_name]], [base["metric"]], marker="*", s=160, c="tab:red", zorder=3,
               label="base model (largest subnet)")
    ax.set_xlabel(COST_UNITS[cost_name])
    ax.set_ylabel("metric on the search split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def load_search(search_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    """(front, settings) of a finished search folder."""
    search_dir = Path(search_dir)
    if not search_dir.is_dir():
        raise UserError(f"search folder not found: {search_dir}")
    if not (search_dir / "front.json").exists():
        raise UserError(f"{search_dir} has no front.json: the search did not finish (run it again to resume)")
    return read_json(search_dir / "front.json", "Pareto front"), read_json(search_dir / SETTINGS_NAME,
                                                                            "search settings")


def select_subnet(front: Sequence[dict], budget_ms: float | None = None,
                  budget_gflops: float | None = None) -> dict:
    """The best-metric front subnet whose predicted latency (or GMACs) fits the budget."""
    if (budget_ms is None) == (budget_gflops is None):
        raise UserError("give exactly one budget: --budget-ms or --budget-gflops")
    column, budget, unit = ("latency_ms", budget_ms, "ms") if budget_ms is not None else \
        ("gmacs", budget_gflops, "GMACs")
    if not front:
        raise UserError("the Pareto front is empty")
    if any(column not in r for r in front):
        raise UserError(f"this search recorded no {COST_UNITS[column]} (search with a latency table for "
                        f"--budget-ms; --budget-gflops always works)")
    fits = [r for r in front if r[column] <= budget]
    if not fits:
        fastest = min(front, key=lambda r: r[column])
        raise UserError(f"budget {budget:g} {unit} is below the cheapest front subnet "
                        f"({SubnetConfig.from_dict(fastest['config'])}: {fastest[column]:.4g} {unit}, "
                        f"metric {fastest['metric']:.4f})")
    return max(fits, key=lambda r: (r["metric"], -r[column]))


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def search_supernet(supernet_dir: str | os.PathLike, task: str, out_dir: str | os.PathLike,
                    data_dir: str | os.PathLike | None = None, table_path: str | os.PathLike | None = None,
                    force: bool = False, seq_len: int = 128, pop_size: int = 40, n_evals: int = 1000, seed: int = 0,
                    batch_size: int = 64, max_length: int = 128, max_search: int | None = None,
                    progress: bool = True) -> SearchResult:
    """`eftnas-hw search`: load the super-network and the task's search split, pick the cost, run NSGA-II.

    With a latency table the cost is its predicted latency (the table must match the super-network's shape and
    this machine); without one, GMACs at `seq_len`. max_search evaluates on a seeded subset of the search split
    (cheaper, noisier); None uses all of it.
    """
    from datasets import DatasetDict

    from .data import load_task, task_spec, tokenize_task
    from .models import load_tokenizer
    from .finetune import compute_device
    from .supernet import evaluate_subnets, load_supernet

    supernet_dir = Path(supernet_dir)
    supernet, space = load_supernet(supernet_dir)
    supernet.model.to(compute_device())  # a GPU, when there is one, evaluates the subnets
    spec = task_spec(task)
    if supernet.shape.num_labels != spec.num_labels:
        raise UserError(f"the super-network has {supernet.shape.num_labels} outputs, task {task} needs "
                        f"{spec.num_labels}")
    table = None
    if table_path is not None:
        from .latency import LatencyTable

        table = LatencyTable.load(table_path, force=force)
        table.check_shape(supernet.shape)
        seq_len = table.profile.seq_len  # GMACs are recorded at the length latency is predicted for
    shape = supernet.shape
    gmacs = {"gmacs": lambda cfg: cfg.gflops(shape, seq_len)}
    cache_key = {"weights": _file_digest(supernet_dir / "model.safetensors"), "task": task,
                 "max_length": max_length, "max_search": max_search}
    if table is not None:
        cost_fn, cost_name, extra = table.predict_ms, "latency_ms", gmacs
    else:
        cost_fn, cost_name, extra = gmacs["gmacs"], "gmacs", {}

    split = load_task(task, data_dir)["search"]
    if max_search is not None and max_search < len(split):
        split = split.shuffle(seed=0).select(range(max_search))
    tokenized = tokenize_task(DatasetDict(search=split), load_tokenizer(supernet_dir), task, max_length)["search"]

    def evaluate_fn(configs: Sequence[SubnetConfig]) -> list[float]:
        return [m["metric"] for m in evaluate_subnets(supernet, configs, tokenized, task, batch_size)]

    # Where the inputs live (defaults for `export`); not part of the cache identity, so folders may move.
    notes = {"supernet": str(supernet_dir.resolve()), "data_dir": str(data_dir) if data_dir else None,
             "table_path": str(Path(table_path).resolve()) if table_path else None,
             "table_digest": _file_digest(Path(table_path)) if table_path else None,
             "profile": table.profile.to_dict() if table else None, "gmacs_seq_len": seq_len,
             "search_examples": len(tokenized)}
    return run_search(supernet, space, evaluate_fn, cost_fn, out_dir, pop_size, n_evals, seed, progress,
                      cost_name=cost_name, extra_costs=extra, cache_key=cache_key, notes=notes)
