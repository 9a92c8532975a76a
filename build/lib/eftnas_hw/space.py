"""EFTNAS Algorithm 1 with a latency (or GFLOPs) cost: from importance scores to a per-layer search space.

For a global threshold tau, the mask M = 1(S > tau) keeps some weights of every layer. A layer keeps as many
whole heads as its attention weights (Q, K, V, output) have kept fractions of H, and an FFN width equal to the
kept fraction of its FFN weights rounded to the granularity. Raising tau removes weights everywhere, so cost
falls monotonically with tau and a binary search over the sorted scores finds, for each of N targets between
`low` and `high`, the threshold whose subnet meets it. The N subnets are combined layer by layer into candidate
sets: the space is shaped by where the task's important weights are, and sized by the cost model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .errors import UserError
from .files import write_json_atomic
from .finetune import layer_scores
from .subnet import BertShape, SearchSpace, SubnetConfig

if TYPE_CHECKING:
    from .latency import LatencyTable

CostFn = Callable[[SubnetConfig], float]


class ThresholdedScores:
    """Sorted element scores per layer and block kind, so the subnet kept by any tau is a few binary searches."""

    def __init__(self, scores: dict[str, torch.Tensor], shape: BertShape, ffn_step: int = 32):
        if ffn_step < 1:
            raise UserError(f"FFN granularity must be positive, got {ffn_step}")
        self.shape, self.ffn_step = shape, ffn_step
        self.attention, self.ffn = [], []
        for layer in range(shape.num_layers):
            s = {k: v.numpy().ravel() for k, v in layer_scores(scores, shape, layer).items()}
            self.attention.append(np.sort(np.concatenate([s["query"], s["key"], s["value"], s["attention_output"]])))
            self.ffn.append(np.sort(np.concatenate([s["intermediate"], s["output"]])))
        self.all = np.sort(np.concatenate(self.attention + self.ffn))
        if not np.isfinite(self.all).all():
            raise UserError("importance scores contain NaN or infinite values")

    @staticmethod
    def _kept_fraction(sorted_scores: np.ndarray, tau: float) -> float:
        return (len(sorted_scores) - np.searchsorted(sorted_scores, tau, side="right")) / len(sorted_scores)

    def subnet(self, tau: float) -> SubnetConfig:
        """Widths kept by M = 1(S > tau): whole heads, FFN widths in multiples of the granularity."""
        heads, ffn = [], []
        full_ffn = self.shape.intermediate_size
        for attention, channels in zip(self.attention, self.ffn):
            heads.append(round(self._kept_fraction(attention, tau) * self.shape.num_heads))
            kept = self._kept_fraction(channels, tau)
            ffn.append(full_ffn if kept == 1 else min(full_ffn, round(kept * full_ffn / self.ffn_step) * self.ffn_step))
        return SubnetConfig(tuple(heads), tuple(ffn))

    def tau(self, index: int) -> float:
        """Threshold number `index` in -1..N-1: -1 keeps every weight, N-1 none."""
        return float(np.nextafter(self.all[0], -np.inf)) if index < 0 else float(self.all[index])


@dataclass(frozen=True)
class SearchSpaceResult:
    """The search space, the N subnets it was built from, their targets, costs and thresholds."""

    space: SearchSpace
    subnets: tuple[SubnetConfig, ...]
    targets: tuple[float, ...]
    costs: tuple[float, ...]
    taus: tuple[float, ...]
    kept_weights: tuple[float, ...]
    unit: str
    metric: str
    reachable: tuple[float, float]
    ffn_step: int
    include_full: bool

    def to_dict(self) -> dict:
        return {"metric": self.metric, "unit": self.unit, "ffn_step": self.ffn_step, "include_full": self.include_full,
                "reachable": list(self.reachable), "size": self.space.size, "space": self.space.to_dict(),
                "configurations": [{"target": t, "predicted": c, "tau": tau, "kept_weights": k, **s.to_dict()}
                                   for s, t, c, tau, k in zip(self.subnets, self.targets, self.costs, self.taus,
                                                              self.kept_weights)]}

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    def format_table(self) -> str:
        """Per-layer candidate sets (as in the paper's Figure 5), the N configurations and the space size."""
        lines = [f"{'layer':>5}  {'heads':<24} FFN"]
        for i, (h, f) in enumerate(zip(self.space.heads, self.space.ffn)):
            lines.append(f"{i:>5}  {' '.join(map(str, h)):<24} {' '.join(map(str, f))}")
        lines.append(f"\n{'target':>9} {'predicted':>9} {'tau':>11}  subnet ({self.metric}, {self.unit})")
        for s, t, c, tau in zip(self.subnets, self.targets, self.costs, self.taus):
            lines.append(f"{t:>9.4g} {c:>9.4g} {tau:>11.3e}  {s}")
        if self.include_full:
            lines.append(f"{'':>9} {'':>9} {'':>11}  + the base model (upper end of the space)")
        lines.append(f"\nsearch space size: {self.space.size:,} subnets")
        return "\n".join(lines)


def build_search_space(scores: dict[str, torch.Tensor], shape: BertShape, cost_fn: CostFn, low: float, high: float,
                       n: int = 5, ffn_step: int = 32, include_full: bool = False, tol: float = 0.03,
                       unit: str = "ms", metric: str = "latency") -> SearchSpaceResult:
    """Algorithm 1: one threshold per target in linspace(low, high, n), subnets combined into a search space.

    A target is met when the chosen subnet's cost is within `tol` (relative) of it; otherwise, or when a
    target lies outside the reachable range (everything removed .. the full model), a UserError says why.
    `include_full` adds the base model to the space so its upper end is the base model (paper 3.2).
    """
    if n < 1:
        raise UserError(f"need at least one target, got n={n}")
    if not low <= high:
        raise UserError(f"lower target {low} is above the upper target {high}")
    thresholded = ThresholdedScores(scores, shape, ffn_step)
    last = len(thresholded.all) - 1
    cache: dict[int, tuple[SubnetConfig, float]] = {}

    def evaluate(index: int) -> tuple[SubnetConfig, float]:
        if index not in cache:
            subnet = thresholded.subnet(thresholded.tau(index))
            cache[index] = (subnet, float(cost_fn(subnet)))
        return cache[index]

    reachable = (evaluate(last)[1], evaluate(-1)[1])
    if low < reachable[0] * (1 - tol) or high > reachable[1] * (1 + tol):
        raise UserError(f"targets {low:g}..{high:g} {unit} lie outside the reachable range "
                        f"{reachable[0]:.4g}..{reachable[1]:.4g} {unit} (every block removed .. the full model)")
    chosen = []
    for target in np.linspace(low, high, n):
        lo, hi = -1, last  # invariant: cost(hi) <= target (or hi = last); cost is non-increasing in the index
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if evaluate(mid)[1] <= target else (mid, hi)
        index = min((lo, hi), key=lambda i: abs(evaluate(i)[1] - target))
        subnet, cost = evaluate(index)
        if abs(cost - target) > tol * abs(target):
            raise UserError(f"no threshold reaches {target:.4g} {unit} within {tol:.0%}: the nearest subnets cost "
                            f"{evaluate(hi)[1]:.4g} and {evaluate(lo)[1]:.4g} {unit} (coarser granularity, "
                            f"a larger --tol or other targets may help)")
        kept = float((thresholded.all > thresholded.tau(index)).mean())
        chosen.append((subnet, float(target), cost, thresholded.tau(index), kept))
    subnets = [c[0] for c in chosen]
    space = SearchSpace.from_subnets(subnets + [shape.full_subnet()] if include_full else subnets)
    return SearchSpaceResult(space, *map(tuple, zip(*chosen)), unit=unit, metric=metric, reachable=reachable,
                             ffn_step=ffn_step, include_full=include_full)


def cost_function(shape: BertShape, table: LatencyTable | None = None,
                  seq_len: int = 128) -> tuple[CostFn, str, str]:
    """(cost, unit, label) for Algorithm 1: the table's predicted latency, or without a table the paper's original
    cost, giga-MACs of one sequence of `seq_len` tokens. One place, so the CLI, the pipeline and the tools agree."""
    if table is not None:
        return table.predict_ms, "ms", "latency"
    return (lambda subnet: subnet.gflops(shape, seq_len)), "GMACs", f"gflops@{seq_len}"

