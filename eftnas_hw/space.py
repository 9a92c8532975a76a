"""The search space from importance scores and a cost (latency, or GMACs: the paper's "GFLOPs"), two ways.

**paper** (EFTNAS Algorithm 1). For a global threshold tau, the mask M = 1(S > tau) keeps some weights of every
layer. A layer keeps as many whole heads as its attention weights (Q, K, V, output) have kept fractions of H, and an
FFN width equal to the kept fraction of its FFN weights rounded to the granularity. Raising tau removes weights
everywhere, so cost falls monotonically with tau and a binary search over the sorted scores finds, for each of N
targets between `low` and `high`, the threshold whose subnet meets it. The N subnets are combined layer by layer
into candidate sets: the space is shaped by where the task's important weights are, and sized by the cost model.

**hardware** (importance per unit of cost). Algorithm 1's single threshold decides every subnet's shape; the cost
only decides where tau falls, so every latency-driven subnet is one the GMACs-driven search also has, and none
removes a whole block. Here the cost shapes the subnets: starting from the full model, remove, one step at a
time, what loses the least importance per unit of cost saved, among: a layer's least important head, its least
important FFN channels (one granularity step), its whole attention block, its whole FFN block, or the whole layer
(a removed block saves its fixed cost too, which a table holds and MACs do not). Importance of a group is the sum
of its weights' signed S (`group_score: signed`, the default: eq. 3's first-order estimate of the loss change of
removing them) or of their |S| (`magnitude`). Signed terms cancel inside a block, so a block whose terms sum
below zero looks free to remove; |S| fixes that on paper, but measured (README, INT8 on SST-2) its greedy path
removes whole layers in large steps and its fronts were worse, so signed stays the default. Heads and channels
are taken in the reordered super-network's order (signed S, most important first), the order it slices in. The
path from the full model to nothing passes every cost once; each target takes the point of the path nearest to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .cost import CostModel
from .errors import UserError
from .files import write_json_atomic
from .importance import channel_importance, head_importance, layer_scores
from .reorder import ordering_from_importance
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


class ImportancePerCost:
    """The hardware-aware construction (module docstring): per layer, the importance kept by the h most important
    heads and the w most important FFN channels (w on the granularity), and the greedy removal path."""

    def __init__(self, scores: dict[str, torch.Tensor], shape: BertShape, ffn_step: int = 64,
                 group_score: str = "signed"):
        if ffn_step < 1:
            raise UserError(f"FFN granularity must be positive, got {ffn_step}")
        self.shape = shape
        per_head = 4 * shape.hidden_size * shape.head_size  # Q, K, V rows and output columns of one head
        per_channel = 2 * shape.hidden_size
        values = {name: s.abs() for name, s in scores.items()} if group_score == "magnitude" else scores
        heads = (head_importance(values, shape) * per_head).double().numpy()
        channels = (channel_importance(values, shape) * per_channel).double().numpy()
        if not (np.isfinite(heads).all() and np.isfinite(channels).all()):  # |S| keeps NaN and infinities
            raise UserError("importance scores contain NaN or infinite values")
        # Units are kept in the order the first-order reordering gives the super-network (signed S, most
        # important first); what a kept unit is worth is its group score.
        order = ordering_from_importance(head_importance(scores, shape), channel_importance(scores, shape))
        self.widths = sorted(set(range(0, shape.intermediate_size, ffn_step)) | {shape.intermediate_size})
        # kept[l][k]: importance kept with the first k units in the super-network's order (prefix sums)
        self.heads_kept = [np.concatenate([[0.0], np.cumsum(h[list(o)])]) for h, o in zip(heads, order.heads)]
        self.ffn_kept = [np.concatenate([[0.0], np.cumsum(c[list(o)])])[self.widths]
                         for c, o in zip(channels, order.ffn)]

    def _moves(self, heads: list[int], ffn: list[int]):
        """(layer, new head count, new width index) of every removal the greedy may take from here."""
        for layer, (h, f) in enumerate(zip(heads, ffn)):
            if h > 0:
                yield layer, h - 1, f
            if h > 1:
                yield layer, 0, f
            if f > 0:
                yield layer, h, f - 1
            if f > 1:
                yield layer, h, 0
            if h > 0 and f > 0:
                yield layer, 0, 0

    def path(self, cost: CostModel) -> list[tuple[SubnetConfig, float, float, float]]:
        """(subnet, cost, importance kept, importance lost per cost saved by the last step) from the full model
        to every block removed, cost strictly falling."""
        heads = [self.shape.num_heads] * self.shape.num_layers
        ffn = [len(self.widths) - 1] * self.shape.num_layers

        def config(h: list[int], f: list[int]) -> SubnetConfig:
            return SubnetConfig(tuple(h), tuple(self.widths[i] for i in f))

        def kept(h: list[int], f: list[int]) -> float:
            return float(sum(k[n] for k, n in zip(self.heads_kept, h)) + sum(k[i] for k, i in zip(self.ffn_kept, f)))

        now = cost(config(heads, ffn))
        path = [(config(heads, ffn), now, kept(heads, ffn), float("-inf"))]
        while True:
            best = None
            for layer, h, f in self._moves(heads, ffn):
                new_heads, new_ffn = heads.copy(), ffn.copy()
                new_heads[layer], new_ffn[layer] = h, f
                after = cost(config(new_heads, new_ffn))
                if after >= now:
                    continue
                lost = kept(heads, ffn) - kept(new_heads, new_ffn)
                ratio = lost / (now - after)
                if best is None or ratio < best[0]:
                    best = (ratio, new_heads, new_ffn, after)
            if best is None:
                return path
            ratio, heads, ffn, now = best
            path.append((config(heads, ffn), now, kept(heads, ffn), ratio))


@dataclass(frozen=True)
class SearchSpaceResult:
    """The search space, the N subnets it was built from, their targets, costs and thresholds (tau for the paper's
    method; for the hardware-aware one, the importance lost per unit of cost saved by the path's last step)."""

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
        lines.append(f"\n{'target':>9} {'predicted':>9} {'threshold':>11}  subnet ({self.metric}, {self.unit}; "
                     f"{self.settings.method} method)")
        for s, t, c, tau in zip(self.subnets, self.targets, self.costs, self.taus):
            lines.append(f"{t:>9.4g} {c:>9.4g} {tau:>11.3e}  {s}")
        if self.settings.include_full:
            lines.append(f"{'':>9} {'':>9} {'':>11}  + the base model (upper end of the space)")
        lines.append(f"\nsearch space size: {self.space.size:,} subnets")
        return "\n".join(lines)


def build_search_space(scores: dict[str, torch.Tensor], shape: BertShape, cost: CostModel,
                       settings: SpaceSettings = SpaceSettings()) -> SearchSpaceResult:
    """N targets in linspace(low, high, n) x the base model's cost, each met by one subnet of the settings'
    method (module docstring), the subnets combined into a search space.

    A target is met when the chosen subnet's cost is within `tol` (relative) of it; otherwise, or when a
    target lies outside the reachable range (everything removed .. the full model), a UserError says why.
    `include_full` adds the base model to the space so its upper end is the base model (paper 3.2).
    """
    base_cost = cost(shape.full_subnet())
    low, high, tol, unit = settings.low * base_cost, settings.high * base_cost, settings.tol, cost.unit
    method = _algorithm_1 if settings.method == "paper" else _importance_per_cost
    reachable, nearest = method(scores, shape, cost, settings)
    if low < reachable[0] * (1 - tol) or high > reachable[1] * (1 + tol):
        raise UserError(f"targets {low:.4g}..{high:.4g} {unit} ({settings.low:g}..{settings.high:g} of the base "
                        f"model's {base_cost:.4g}) lie outside the reachable range {reachable[0]:.4g}.."
                        f"{reachable[1]:.4g} {unit} (every block removed .. the full model)")
    chosen = []
    for target in np.linspace(low, high, settings.n):
        subnet, achieved, threshold, kept, (below, above) = nearest(target)
        if achieved <= 0:  # a latency calibration with a negative offset, extrapolated far below its subnets
            raise UserError(f"the cost model predicts {achieved:.3g} {unit} for the subnet nearest to {target:.4g} "
                            f"{unit}: it is not valid that low (raise the lowest target)")
        if abs(achieved - target) > tol * abs(target):
            raise UserError(f"no subnet reaches {target:.4g} {unit} within {tol:.0%}: the nearest subnets cost "
                            f"{below:.4g} and {above:.4g} {unit} (coarser granularity, a larger --tol or other "
                            "targets may help)")
        chosen.append((subnet, float(target), float(achieved), float(threshold), float(kept)))
    subnets = [c[0] for c in chosen]
    space = SearchSpace.from_subnets(subnets + [shape.full_subnet()] if settings.include_full else subnets)
    return SearchSpaceResult(space, *map(tuple, zip(*chosen)), unit=unit, metric=cost.label, reachable=reachable,
                             settings=settings)


# A method gives the reachable cost range (everything removed, full model) and, for a target cost, its nearest
# subnet: (subnet, cost, threshold, kept share of the importance or weights, (cost below, cost above the target)).
Nearest = Callable[[float], tuple[SubnetConfig, float, float, float, tuple[float, float]]]


def _importance_per_cost(scores, shape: BertShape, cost: CostModel,
                         settings: SpaceSettings) -> tuple[tuple, Nearest]:
    """The hardware-aware construction: the point of the greedy removal path nearest each target."""
    path = ImportancePerCost(scores, shape, settings.ffn_step, settings.group_score).path(cost)
    costs = np.array([p[1] for p in path])
    total = path[0][2]

    def nearest(target: float):
        subnet, achieved, kept, ratio = path[int(np.argmin(np.abs(costs - target)))]
        neighbours = (costs[costs <= target].max(initial=costs[-1]), costs[costs >= target].min(initial=costs[0]))
        return subnet, achieved, ratio, kept / total if total else 1.0, neighbours

    return (float(costs[-1]), float(costs[0])), nearest


def _algorithm_1(scores, shape: BertShape, cost: CostModel, settings: SpaceSettings) -> tuple[tuple, Nearest]:
    """The paper's Algorithm 1: a binary search over the sorted scores for each target's threshold."""
    thresholded = ThresholdedScores(scores, shape, settings.ffn_step)
    last = len(thresholded.all) - 1
    cache: dict[int, tuple[SubnetConfig, float]] = {}

    def evaluate(index: int) -> tuple[SubnetConfig, float]:
        if index not in cache:
            subnet = thresholded.subnet(thresholded.tau(index))
            cache[index] = (subnet, cost(subnet))
        return cache[index]

    def nearest(target: float):
        lo, hi = -1, last  # invariant: cost(hi) <= target (or hi = last); cost is non-increasing in the index
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if evaluate(mid)[1] <= target else (mid, hi)
        index = min((lo, hi), key=lambda i: abs(evaluate(i)[1] - target))
        subnet, achieved = evaluate(index)
        kept = float((thresholded.all > thresholded.tau(index)).mean())
        return subnet, achieved, thresholded.tau(index), kept, (evaluate(hi)[1], evaluate(lo)[1])

    return (evaluate(last)[1], evaluate(-1)[1]), nearest
