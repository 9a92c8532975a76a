"""NSGA-II search: a front is found, revisits hit the cache, a killed search resumes, selection under budgets."""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from eftnas_hw.context import RunContext
from eftnas_hw.cost import CostModel
from eftnas_hw.errors import UserError
from eftnas_hw.evolution import EvolutionFinder, front_coverage, pareto_front, select_subnet
from eftnas_hw.models import random_bert, save_model
from eftnas_hw.reports import SEARCH_SETTINGS, write_search_reports
from eftnas_hw.search import CACHE_NAME, EvaluationCache, SearchRun, load_search, search_supernet
from eftnas_hw.runtime import native_bf16
from eftnas_hw.settings import LatencySettings, RunConfig, SearchSettings
from eftnas_hw.subnet import EvaluatedSubnet, SearchSpace, SubnetConfig

SPACE = SearchSpace(heads=((0, 1, 2, 4),) * 2, ffn=((0, 32, 64, 128),) * 2)


def synthetic_metric(cfg: SubnetConfig) -> float:
    """Saturating in width, with a deterministic per-config wiggle so the front is not trivially every point."""
    width = sum(cfg.heads) / 8 + sum(cfg.ffn) / 256
    return round(0.5 + 0.4 * (width / 2) ** 0.5 + 0.01 * (hash(str(cfg)) % 7) / 7, 6)


def synthetic_cost(cfg: SubnetConfig) -> float:
    return 0.3 + 1.5 * sum(cfg.heads) + 0.02 * sum(cfg.ffn)


def synthetic_gmacs(cfg: SubnetConfig) -> float:
    return sum(cfg.ffn) / 1000


LATENCY = CostModel("latency_ms", "ms", "latency", synthetic_cost)
GMACS = CostModel("gmacs", "GMACs", "GMACs@128", synthetic_gmacs)


class CountingEvaluator:
    """The accuracy objective: counts the subnets it really evaluates; raises KeyboardInterrupt (a kill) once
    `fail_after` subnets are done."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, cfg: SubnetConfig) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return synthetic_metric(cfg)


def search(out: Path, evaluator=None, efficiency: CostModel = LATENCY, **kw) -> SearchRun:
    """What `search_supernet` does around the finder: metrics behind the evaluations.jsonl cache, then reports."""
    kw = {"pop_size": 8, "n_evals": 64, "seed": 3, "progress": False, **kw}
    out.mkdir(parents=True, exist_ok=True)
    cache = EvaluationCache(out / CACHE_NAME)
    start = time.perf_counter()
    try:
        finder = EvolutionFinder(SPACE, cache.accuracy(evaluator or CountingEvaluator()), efficiency, [GMACS])
        result = finder.run(**kw)
    finally:
        cache.close()
    run = SearchRun(result, cache.fresh, cache.replayed,
                    60 * cache.fresh / cache.eval_seconds if cache.eval_seconds else math.nan,
                    time.perf_counter() - start, {"cost_name": efficiency.name, **kw}, out)
    write_search_reports(run)
    return run


def test_nsga2_finds_sorted_non_dominated_front_and_writes_outputs(tmp_path):
    run = search(tmp_path / "s")
    result = run.result
    front = result.front
    assert len(front) >= 3 and result.cost_name == "latency_ms"
    costs = [r.latency_ms for r in front]
    assert costs == sorted(costs)
    for a in front:  # nothing evaluated dominates a front point
        assert not any(b.metric >= a.metric and b.latency_ms <= a.latency_ms
                       and (b.metric, b.latency_ms) != (a.metric, a.latency_ms)
                       for b in result.evaluations)
    for r in result.evaluations:  # the objective and the extra cost are both recorded
        assert r.metric == synthetic_metric(r.config) and r.latency_ms == pytest.approx(synthetic_cost(r.config))
        assert r.gmacs == pytest.approx(synthetic_gmacs(r.config)) and SPACE.contains(r.config)
    assert result.base.config == SPACE.largest() and result.evaluations[0] == result.base
    assert 0 < result.hypervolume < 1.1
    assert run.fresh == len(result.evaluations) and run.replayed == 0 and run.evals_per_minute > 0
    out = tmp_path / "s"
    for name in ("evaluations.csv", "evaluations.json", "front.csv", "front.json", "pareto.png", "search.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "front.json").read_text()) == [r.to_dict() for r in front]
    assert [EvaluatedSubnet.from_dict(r) for r in json.loads((out / "evaluations.json").read_text())] == \
        result.evaluations
    rows = list(csv.DictReader((out / "evaluations.csv").open()))
    assert len(rows) == len(result.evaluations) and rows[0]["is_base"] == "True"
    assert sum(r["on_front"] == "True" for r in rows) == len(front)
    assert len(list(csv.DictReader((out / "front.csv").open()))) == len(front)
    summary = json.loads((out / "search.json").read_text())["summary"]
    assert summary["fresh"] == run.fresh and summary["front_size"] == len(front)
    assert summary["hypervolume"] == result.hypervolume and summary["base"] == result.base.to_dict()
    assert len((out / CACHE_NAME).read_text().splitlines()) == run.fresh


def test_revisits_are_cache_hits_not_evaluations(tmp_path):
    evaluator = CountingEvaluator()
    # 4 genes of 4 values: 160 proposals over 256 configs must revisit some
    run = search(tmp_path / "s", evaluator, n_evals=160)
    assert run.result.revisits > 0
    assert evaluator.calls == run.fresh == len(run.result.evaluations)
    assert json.loads((tmp_path / "s" / "search.json").read_text())["summary"]["revisits"] == run.result.revisits


def test_killed_search_resumes_from_cache_and_matches_uninterrupted_run(tmp_path):
    reference = search(tmp_path / "clean")
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "killed", CountingEvaluator(fail_after=20))
    assert len((tmp_path / "killed" / CACHE_NAME).read_text().splitlines()) == 20  # each metric kept at once
    with open(tmp_path / "killed" / CACHE_NAME, "a") as f:
        f.write('{"config": {"heads": [1')  # torn last line of the killed run
    evaluator = CountingEvaluator()
    resumed = search(tmp_path / "killed", evaluator)
    assert resumed.replayed == 20  # base + 19 NSGA-II proposals answered from the previous run's file
    assert evaluator.calls == resumed.fresh == reference.fresh - 20
    assert resumed.result.front == reference.result.front
    assert [r.config for r in resumed.result.evaluations] == [r.config for r in reference.result.evaluations]
    # every metric of the resumed run is on file too: a further run replays all of them, evaluating nothing
    evaluator = CountingEvaluator()
    again = search(tmp_path / "killed", evaluator)
    assert evaluator.calls == 0 and again.replayed == reference.fresh


def test_evaluation_cache_replays_metrics_and_ignores_a_torn_line(tmp_path):
    path = tmp_path / CACHE_NAME
    a, b, c = SubnetConfig((1, 2), (32, 64)), SubnetConfig((4, 0), (128, 0)), SubnetConfig((2, 2), (64, 64))
    cache = EvaluationCache(path)
    metric = cache.accuracy(lambda cfg: 0.25 if cfg == a else 0.75)
    assert (metric(a), metric(b), metric(a)) == (0.25, 0.75, 0.25)
    assert (cache.fresh, cache.replayed) == (2, 1)
    cache.close()
    with open(path, "a") as f:
        f.write('{"config": {"heads": [2, 2], "ffn": [64')  # killed while writing c's record
    cache = EvaluationCache(path)
    assert cache.metrics == {a: 0.25, b: 0.75}
    metric = cache.accuracy(lambda cfg: 0.5 if cfg == c else pytest.fail("a cached subnet was evaluated again"))
    assert (metric(b), metric(c)) == (0.75, 0.5)
    assert (cache.fresh, cache.replayed) == (1, 1)
    cache.close()
    assert EvaluationCache(path).metrics == {a: 0.25, b: 0.75, c: 0.5}  # c's record survived the torn line


def test_search_supernet_refuses_the_cache_of_another_supernet(tiny_model_dir, tiny_shape, tmp_path):
    """search_supernet end to end on a tiny super-network and made-up SST-2 splits: its cache is reused for the
    same weights and refused for others."""
    supernet = tmp_path / "supernet"
    shutil.copytree(tiny_model_dir, supernet)
    (supernet / "search_space.json").write_text(json.dumps(SPACE.to_dict()))
    words = ["good", "bad", "fine", "awful", "great", "dull", "superb", "boring"]
    split = Dataset.from_dict({"text": [f"a {w} film, {v} times" for v in range(4) for w in words],
                               "label": [i % 2 for i in range(32)], "idx": list(range(32))})

    def context(profile: str = "cpu-1t-b1-s128") -> RunContext:
        ctx = RunContext(RunConfig(model=str(supernet), task="sst2", data_dir=str(tmp_path), max_length=16,
                                   metric="gmacs", latency=LatencySettings(profile=profile)))
        ctx.splits = DatasetDict(train=split, search=split, validation=split)  # no GLUE files needed
        return ctx

    settings = SearchSettings(pop_size=4, n_evals=8, max_search=16, batch_size=8)
    first = search_supernet(context(), supernet, tmp_path / "search", settings, progress=False)
    assert first.fresh == len(first.result.evaluations) and first.result.cost_name == "gmacs"
    front, stored = load_search(tmp_path / "search")
    assert front == first.result.front and stored["cache_key"]["task"] == "sst2"
    again = search_supernet(context(), supernet, tmp_path / "search", settings, progress=False)
    assert again.fresh == 0 and again.replayed == first.fresh  # same weights: every metric replayed
    # scored in the numerics of the deployment: bf16 autocast where the profile runs bf16 and the CPU computes it
    bf16 = context().profile.precision == "bf16" and native_bf16()
    assert stored["cache_key"]["numerics"] == ("bf16" if bf16 else "f32")
    if bf16:
        with pytest.raises(UserError, match="numerics: 'bf16' there, 'f32' now"):
            search_supernet(context("cpu-1t-b1-s128-f32"), supernet, tmp_path / "search", settings, progress=False)
    # a search recorded before the numerics were (all f32) is replayed by an f32 search
    record = json.loads((tmp_path / "search" / SEARCH_SETTINGS).read_text())
    record["cache_key"].pop("numerics")
    (tmp_path / "search" / SEARCH_SETTINGS).write_text(json.dumps(record))
    f32 = search_supernet(context("cpu-1t-b1-s128-f32"), supernet, tmp_path / "search", settings, progress=False)
    assert f32.fresh == 0 and f32.result.front == first.result.front
    save_model(random_bert(tiny_shape, seed=1), tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", supernet / "model.safetensors")
    with pytest.raises(UserError, match=r"other settings \(.*weights: "):
        search_supernet(context(), supernet, tmp_path / "search", settings, progress=False)


def test_new_cost_model_reuses_cached_metrics(tmp_path):
    first = search(tmp_path / "s")
    evaluator = CountingEvaluator()
    doubled = CostModel("latency_ms", "ms", "latency (rebuilt table)", lambda c: 2 * synthetic_cost(c))
    again = search(tmp_path / "s", evaluator, doubled)
    assert evaluator.calls == 0 and again.replayed == first.fresh and again.fresh == 0
    assert [r.latency_ms for r in again.result.front] == pytest.approx([2 * r.latency_ms for r in first.result.front])
    assert [r.metric for r in again.result.front] == [r.metric for r in first.result.front]


def record(heads, ffn, metric, latency_ms, gmacs):
    return EvaluatedSubnet(SubnetConfig(heads, ffn), metric, gmacs, latency_ms)


FRONT = [record((1, 1), (32, 32), 0.6, 2.0, 0.1),
         record((2, 2), (64, 64), 0.7, 5.0, 0.2),
         record((4, 4), (128, 128), 0.8, 9.0, 0.4)]


def test_select_best_metric_under_budget():
    assert select_subnet(FRONT, budget_ms=6.0).metric == 0.7
    assert select_subnet(FRONT, budget_ms=100).metric == 0.8
    assert select_subnet(FRONT, budget_gmacs=0.1).metric == 0.6
    assert pareto_front(FRONT[::-1] + [replace(FRONT[1], metric=0.5)], "latency_ms") == FRONT


def test_budget_below_fastest_names_the_fastest():
    with pytest.raises(UserError, match=r"heads=1,1 ffn=32,32: 2 ms"):
        select_subnet(FRONT, budget_ms=1.5)
    with pytest.raises(UserError, match="exactly one budget"):
        select_subnet(FRONT)
    with pytest.raises(UserError, match="no predicted latency"):
        select_subnet([replace(r, latency_ms=None) for r in FRONT], budget_ms=5)


def test_front_coverage_counts_dominated_points_and_the_margin():
    """(metric, ms) fronts: b's 5 ms point is beaten by a's 4 ms point by 2 points, its 10 ms point by nothing."""
    a, b = [(0.80, 4.0), (0.85, 12.0)], [(0.78, 5.0), (0.90, 10.0)]
    got = front_coverage(a, b)
    assert got["covered"] == 0.5 and got["max_margin"] == pytest.approx(0.02)
    back = front_coverage(b, a)  # b has nothing at 4 ms; at 12 ms its 10 ms point is 5 points better
    assert back["covered"] == 0.5 and back["max_margin"] == pytest.approx(0.05)
    assert front_coverage(a, a) == {"covered": 0.0, "max_margin": 0.0}  # a point never dominates itself
    assert front_coverage([(0.9, 20.0)], b) == {"covered": 0.0, "max_margin": None}  # nothing as fast
