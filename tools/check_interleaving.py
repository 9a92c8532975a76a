"""How repeatable are relative latencies for a given interleaving (calls per burst x rounds)? Prints it per variant.

    python tools/check_interleaving.py [--shape minilm-l6] [--precision f32] [--repeats 4] [--calls 100]
                                       [--bursts 20 5 2] [--rewarm 1]

The full model of a named shape (random weights) and 11 random subnets (`--subnets`) are exported once and timed
`--repeats` times with `measure_compiled` for each burst size (rounds = calls / burst, so every variant times the same
number of calls), the variants taking turns. Printed per variant: the coefficient of variation over the repeats of
each subnet's latency relative to the full model measured in the same call (median and worst over the subnets), the
full model's own range, and the seconds per measurement. `--rewarm 0 1` compares bursts with and without an untimed
call before each (variants are every burst x rewarm pair). Relative latencies are what a table's proportions and an
anchor's fit rest on; the bursts that give the smallest variation at equal calls are the protocol's `BURST` (and, for
slow models, its `TURN_MS`: `--shape bert-base`).

Also printed, the machine's ceiling for the issue's bar ("pairwise_within_5pct"): for every pair of repetitions, the
share of the models whose latency in one lies within 5% of the other's fitted to it (scale and offset, as an anchor
fits a table), over the repetitions the protocol would keep: those whose full model ran within
`slow_state.SLOW_STATE_FACTOR` of the fastest repetition's (a check or an anchor times again one that did not). A
table that predicted one measurement exactly would read that share against another; where it stays under 95%, a check
of the table misses the bar through the machine's own repeatability, whatever the table. `--threads` and `--seq-len`
give the other conditions of the bar; `--dump FILE` writes every repetition's latencies.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from eftnas_hw.latency import Profile
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.prepare import RandomSubnet, exported_irs
from eftnas_hw.latency.profiler import random_subnets, relative_fit
from eftnas_hw.latency.slow_state import SLOW_STATE_FACTOR
from eftnas_hw.subnet import NAMED_SHAPES


def affine_within(a: np.ndarray, b: np.ndarray, pct: float = 5.0) -> float:
    """The share of models where b lies within `pct` of a fitted to b by scale and offset (least squares of relative
    errors, `relative_fit`, as an anchor fits a table)."""
    x = np.stack([a, np.ones_like(a)], axis=1)
    return float(np.mean(np.abs(x @ relative_fit(x, b) / b - 1) <= pct / 100))


def pairwise_within(measurements: list[np.ndarray], pct: float = 5.0) -> list[float]:
    """`affine_within` for each ordered pair of measurements of the same models."""
    return [affine_within(a, b, pct)
            for i, a in enumerate(measurements) for j, b in enumerate(measurements) if i != j]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm-l6", choices=sorted(NAMED_SHAPES))
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per candidate per measurement")
    parser.add_argument("--bursts", type=int, nargs="+", default=[20, 5, 2])
    parser.add_argument("--rewarm", type=int, nargs="+", default=[1], help="untimed calls before each burst")
    parser.add_argument("--subnets", type=int, default=11, help="random subnets beside the full model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dump", help="write every repetition's latencies (ms) per variant to this JSON file")
    args = parser.parse_args()
    variants = [(b, w) for b in args.bursts for w in args.rewarm]
    shape = NAMED_SHAPES[args.shape]
    profile = Profile(precision=args.precision, threads=args.threads, seq_len=args.seq_len)
    subnets = [shape.full_subnet()] + random_subnets(shape, args.subnets, 3)
    measured = {v: [] for v in variants}  # per variant, each repetition's latencies (the full model first)
    seconds = {v: [] for v in variants}
    with exported_irs([RandomSubnet(shape, 0, s) for s in subnets], profile) as irs:
        for _ in range(args.repeats):
            for burst, rewarm in variants:
                started = time.time()
                ms = np.array([s["ms"] for s in measure_compiled(irs, profile, rounds=args.calls // burst,
                                                                 burst=burst, rewarm=rewarm)])
                seconds[burst, rewarm].append(time.time() - started)
                measured[burst, rewarm].append(ms)
    for burst, rewarm in variants:
        m = np.array(measured[burst, rewarm])
        r = m[:, 1:] / m[:, :1]  # each subnet relative to the full model of the same measurement
        cv = 100 * r.std(axis=0, ddof=1) / r.mean(axis=0)
        kept = [ms for ms in m if ms[0] <= SLOW_STATE_FACTOR * m[:, 0].min()]
        pairs = pairwise_within(kept)  # none where fewer than two repetitions are kept: printed as null
        print(json.dumps({"shape": args.shape, "precision": profile.precision, "threads": profile.threads,
                          "seq_len": profile.seq_len, "burst": burst, "rewarm": rewarm, "rounds": args.calls // burst,
                          "relative_cv_pct_median": round(float(np.median(cv)), 2),
                          "relative_cv_pct_worst": round(float(cv.max()), 2),
                          "pairwise_within_5pct": {"mean": round(float(np.mean(pairs)), 3) if pairs else None,
                                                   "min": round(float(np.min(pairs)), 3) if pairs else None,
                                                   "repetitions": len(kept)},
                          "full_model_ms": [round(float(f), 2) for f in m[:, 0]],
                          "seconds": round(float(np.mean(seconds[burst, rewarm])), 1)}))
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump([{"burst": b, "rewarm": w, "ms": [ms.tolist() for ms in measured[b, w]]}
                       for b, w in variants], f)


if __name__ == "__main__":
    main()
