"""EFTNAS Algorithm 1 with a latency (or GMACs, the paper's "GFLOPs") cost: from importance scores to a per-layer search space.

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

import numpy as np
import torch

from .cost import CostModel
from .errors import UserError
from .files import write_json_atomic
from .importance import layer_scores
from .settings import SpaceSettings
from .subnet import BertShape, SearchSpace, SubnetConfig


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
    settings: SpaceSettings

    def to_dict(self) -> dict:
        return {"metric": self.metric, "unit": self.unit, "settings": self.settings.to_dict(),
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
        if self.settings.include_full:
            lines.append(f"{'':>9} {'':>9} {'':>11}  + the base model (upper end of the space)")
        lines.append(f"\nsearch space size: {self.space.size:,} subnets")
        return "\n".join(lines)


def build_search_space(scores: dict[str, torch.Tensor], shape: BertShape, cost: CostModel,
                       settings: SpaceSettings = SpaceSettings()) -> SearchSpaceResult:
    """Algorithm 1: one threshold per target in linspace(low, high, n) x the base model's cost, the subnets
    combined into a search space.

    A target is met when the chosen subnet's cost is within `tol` (relative) of it; otherwise, or when a
    target lies outside the reachable range (everything removed .. the full model), a UserError says why.
    `include_full` adds the base model to the space so its upper end is the base model (paper 3.2).
    """
    thresholded = ThresholdedScores(scores, shape, settings.ffn_step)
    last, tol, unit = len(thresholded.all) - 1, settings.tol, cost.unit
    cache: dict[int, tuple[SubnetConfig, float]] = {}

    def evaluate(index: int) -> tuple[SubnetConfig, float]:
        if index not in cache:
            subnet = thresholded.subnet(thresholded.tau(index))
            cache[index] = (subnet, cost(subnet))
        return cache[index]

    base_cost = cost(shape.full_subnet())
    low, high = settings.low * base_cost, settings.high * base_cost
    reachable = (evaluate(last)[1], evaluate(-1)[1])
    if low < reachable[0] * (1 - tol) or high > reachable[1] * (1 + tol):
        raise UserError(f"targets {low:.4g}..{high:.4g} {unit} ({settings.low:g}..{settings.high:g} of the base "
                        f"model's {base_cost:.4g}) lie outside the reachable range {reachable[0]:.4g}.."
                        f"{reachable[1]:.4g} {unit} (every block removed .. the full model)")
    chosen = []
    for target in np.linspace(low, high, settings.n):
        lo, hi = -1, last  # invariant: cost(hi) <= target (or hi = last); cost is non-increasing in the index
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if evaluate(mid)[1] <= target else (mid, hi)
        index = min((lo, hi), key=lambda i: abs(evaluate(i)[1] - target))
        subnet, achieved = evaluate(index)
        if abs(achieved - target) > tol * abs(target):
            raise UserError(f"no threshold reaches {target:.4g} {unit} within {tol:.0%}: the nearest subnets cost "
                            f"{evaluate(hi)[1]:.4g} and {evaluate(lo)[1]:.4g} {unit} (coarser granularity, "
                            f"a larger --tol or other targets may help)")
        kept = float((thresholded.all > thresholded.tau(index)).mean())
        chosen.append((subnet, float(target), achieved, thresholded.tau(index), kept))
    subnets = [c[0] for c in chosen]
    space = SearchSpace.from_subnets(subnets + [shape.full_subnet()] if settings.include_full else subnets)
    return SearchSpaceResult(space, *map(tuple, zip(*chosen)), unit=unit, metric=cost.label, reachable=reachable,
                             settings=settings)
