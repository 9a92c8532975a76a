"""NSGA-II over a search space (EFTNAS section 4), with the two objectives injected, as once-for-all's
EvolutionFinder(efficiency, accuracy) takes them: `accuracy(cfg)` is the task metric (higher is better),
`efficiency` the cost model (lower is better). No I/O here: caching evaluations and writing reports are the
caller's (`search.py`, `reports.py`). Also the pure functions on a front: non-dominated sorting, hypervolume,
picking subnets along it and under a budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from pymoo.core.problem import Problem

from .cost import CostModel
from .errors import UserError
from .subnet import EvaluatedSubnet, SearchSpace, SubnetConfig

# Hypervolume of (-metric, cost / base cost) against this point: metric 0 and 1.1 x the base model's cost.
HV_REFERENCE = (0.0, 1.1)
COST_UNITS = {"latency_ms": "ms", "gmacs": "GMACs"}


class SubnetProblem(Problem):
    """pymoo problem: an integer genome (one candidate index per layer's head count, then per FFN width) is
    decoded to a subnet and scored (-metric, cost) by `evaluate`."""

    def __init__(self, space: SearchSpace, evaluate: Callable[[SubnetConfig], EvaluatedSubnet], cost_name: str,
                 after_batch: Callable[[int], None] | None = None):
        sizes = np.array([len(c) for c in space.choices()])
        super().__init__(n_var=len(sizes), n_obj=2, xl=np.zeros(len(sizes)), xu=sizes - 1, vtype=int)
        self.space, self.score, self.cost_name, self.after_batch = space, evaluate, cost_name, after_batch

    def _evaluate(self, X, out, *args, **kwargs):
        records = [self.score(self.space.decode(genome)) for genome in np.asarray(X).round().astype(int)]
        out["F"] = np.array([[-r.metric, r.cost(self.cost_name)] for r in records], dtype=float)
        if self.after_batch is not None:
            self.after_batch(len(records))


@dataclass
class SearchResult:
    evaluations: list[EvaluatedSubnet]  # every distinct subnet evaluated, the base model (largest) first
    front: list[EvaluatedSubnet]  # non-dominated evaluations, sorted by cost
    base: EvaluatedSubnet  # the largest subnet of the space (the super-network itself)
    cost_name: str
    hypervolume: float
    revisits: int  # NSGA-II proposals of subnets already evaluated in this search


class EvolutionFinder:
    """NSGA-II (pymoo, integer genome, SBX + polynomial mutation with rounding) over `space`.

    `costs` are recorded beside the objective (e.g. GMACs when searching on latency) so that a front can be cut
    by either budget later.
    """

    def __init__(self, space: SearchSpace, accuracy: Callable[[SubnetConfig], float], efficiency: CostModel,
                 costs: Sequence[CostModel] = ()):
        self.space, self.accuracy, self.efficiency = space, accuracy, efficiency
        self.costs = {c.name: c for c in (*costs, efficiency)}

    def run(self, pop_size: int = 40, n_evals: int = 1000, seed: int = 0, progress: bool = True) -> SearchResult:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling
        from pymoo.optimize import minimize
        from tqdm.auto import tqdm

        seen: dict[SubnetConfig, EvaluatedSubnet] = {}
        revisits = 0

        def evaluate(cfg: SubnetConfig) -> EvaluatedSubnet:
            nonlocal revisits
            if cfg in seen:
                revisits += 1
            else:
                costs = {name: c(cfg) for name, c in self.costs.items()}
                seen[cfg] = EvaluatedSubnet(cfg, float(self.accuracy(cfg)), **costs)
            return seen[cfg]

        base = evaluate(self.space.largest())
        name = self.efficiency.name
        bar = tqdm(total=n_evals, desc="NSGA-II", unit="eval", disable=not progress)

        def after_batch(n: int) -> None:
            bar.update(n)
            front = pareto_front(list(seen.values()), name)
            bar.set_postfix(front=len(front), hv=f"{hypervolume(front, name, base.cost(name)):.4f}",
                            revisits=revisits)

        algorithm = NSGA2(pop_size=pop_size, sampling=IntegerRandomSampling(),
                          crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                          mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
        try:
            minimize(SubnetProblem(self.space, evaluate, name, after_batch), algorithm, ("n_eval", n_evals),
                     seed=seed, verbose=False)
        finally:
            bar.close()
        evaluations = list(seen.values())
        front = pareto_front(evaluations, name)
        return SearchResult(evaluations, front, base, name, hypervolume(front, name, base.cost(name)), revisits)


def pareto_front(records: Sequence[EvaluatedSubnet], cost_name: str) -> list[EvaluatedSubnet]:
    """Non-dominated records (higher metric, lower cost), sorted by cost; identical points are kept once."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not records:
        return []
    F = np.array([[-r.metric, r.cost(cost_name)] for r in records], dtype=float)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    front, seen = [], set()
    for r in sorted((records[i] for i in idx), key=lambda r: (r.cost(cost_name), -r.metric)):
        point = (r.metric, r.cost(cost_name))
        if point not in seen:
            seen.add(point)
            front.append(r)
    return front


def hypervolume(points: Sequence[tuple[float, float]] | Sequence[EvaluatedSubnet], cost_name: str | None = None,
                base_cost: float = 1.0) -> float:
    """Hypervolume (pymoo) of (metric, cost / base_cost) points against HV_REFERENCE; the points are
    EvaluatedSubnets (with `cost_name`) or (metric, cost) pairs, e.g. measured dev metrics and latencies."""
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    pairs = [(r.metric, r.cost(cost_name)) if isinstance(r, EvaluatedSubnet) else r for r in points]
    F = np.array([[-m, c / base_cost] for m, c in pairs], dtype=float)
    return float(HV(ref_point=np.array(HV_REFERENCE))(F))


def front_coverage(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> dict:
    """How front `a` covers front `b`, both (metric, cost) pairs, e.g. measured dev metrics and latencies:
    `covered`, the share of b's points that a point of a dominates (no worse, no costlier, better in one), and
    `max_margin`, the largest metric by which a point of a at no more cost beats a point of b (negative: no point
    of b is beaten at its cost; None: a has nothing as cheap as any point of b). The margin is what to hold
    against the search's resolution (its standard error): a dominance smaller than that is not a ranking."""
    dominated = [any(c <= cb and m >= mb and (c < cb or m > mb) for m, c in a) for mb, cb in b]
    margins = [max(m - mb for m, c in a if c <= cb) for mb, cb in b if any(c <= cb for _, c in a)]
    return {"covered": sum(dominated) / len(b) if b else None, "max_margin": max(margins) if margins else None}


def spread_along_front(front: Sequence, k: int) -> list:
    """At most k front records evenly spaced by rank along the front, both ends included."""
    if len(front) <= k:
        return list(front)
    picks = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(front) - 1]
    return [front[i] for i in picks]


def select_subnet(front: Sequence[EvaluatedSubnet], budget_ms: float | None = None,
                  budget_gmacs: float | None = None) -> EvaluatedSubnet:
    """The best-metric front subnet whose predicted latency (or GMACs) fits the budget."""
    if (budget_ms is None) == (budget_gmacs is None):
        raise UserError("give exactly one budget: --budget-ms or --budget-gmacs")
    name, budget = ("latency_ms", budget_ms) if budget_ms is not None else ("gmacs", budget_gmacs)
    unit = COST_UNITS[name]
    if not math.isfinite(budget) or budget <= 0:
        raise UserError(f"the budget must be a positive number of {unit}, got {budget:g}")
    if not front:
        raise UserError("the Pareto front is empty")
    if any(r.cost(name) is None for r in front):
        raise UserError("this search recorded no predicted latency (search with a latency table for --budget-ms; "
                        "--budget-gmacs always works)")
    fits = [r for r in front if r.cost(name) <= budget]
    if not fits:
        fastest = min(front, key=lambda r: r.cost(name))
        raise UserError(f"budget {budget:g} {unit} is below the cheapest front subnet ({fastest.config}: "
                        f"{fastest.cost(name):.4g} {unit}, metric {fastest.metric:.4f})")
    return max(fits, key=lambda r: (r.metric, -r.cost(name)))
