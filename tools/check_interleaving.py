"""How repeatable are relative latencies for a given interleaving (calls per burst x rounds)? Prints it per variant.

    python tools/check_interleaving.py [--shape minilm-l6] [--precision f32] [--repeats 4] [--calls 100]
                                       [--bursts 20 5 2] [--rewarm 1]

The full model of a named shape (random weights) and 11 random subnets are exported once and timed `--repeats`
times with `measure_compiled` for each burst size (rounds = calls / burst, so every variant times the same number of
calls), the variants taking turns. Printed per variant: the coefficient of variation over the repeats of each subnet's
latency relative to the full model measured in the same call (median and worst over the subnets), the full model's
own range, and the seconds per measurement. `--rewarm 0 1` compares bursts with and without an untimed call before
each (variants are every burst x rewarm pair). Relative latencies are what a table's proportions and an anchor's
fit rest on; the bursts that give the smallest variation at equal calls are the protocol's `BURST` (and,
for slow models, its `TURN_MS`: `--shape bert-base`).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from eftnas_hw.latency import Profile
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.prepare import RandomSubnet, exported_irs
from eftnas_hw.latency.profiler import random_subnets
from eftnas_hw.subnet import NAMED_SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm-l6", choices=sorted(NAMED_SHAPES))
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per candidate per measurement")
    parser.add_argument("--bursts", type=int, nargs="+", default=[20, 5, 2])
    parser.add_argument("--rewarm", type=int, nargs="+", default=[1], help="untimed calls before each burst")
    args = parser.parse_args()
    variants = [(b, w) for b in args.bursts for w in args.rewarm]
    shape, profile = NAMED_SHAPES[args.shape], Profile(precision=args.precision)
    subnets = [shape.full_subnet()] + random_subnets(shape, 11, 3)
    relative = {v: [] for v in variants}
    full = {v: [] for v in variants}
    seconds = {v: [] for v in variants}
    with exported_irs([RandomSubnet(shape, 0, s) for s in subnets], profile) as irs:
        for _ in range(args.repeats):
            for burst, rewarm in variants:
                started = time.time()
                ms = np.array([s["ms"] for s in measure_compiled(irs, profile, rounds=args.calls // burst,
                                                                 burst=burst, rewarm=rewarm)])
                seconds[burst, rewarm].append(time.time() - started)
                relative[burst, rewarm].append(ms[1:] / ms[0])
                full[burst, rewarm].append(ms[0])
    for burst, rewarm in variants:
        r = np.array(relative[burst, rewarm])
        cv = 100 * r.std(axis=0, ddof=1) / r.mean(axis=0)
        print(json.dumps({"shape": args.shape, "precision": profile.precision, "burst": burst, "rewarm": rewarm,
                          "rounds": args.calls // burst,
                          "relative_cv_pct_median": round(float(np.median(cv)), 2),
                          "relative_cv_pct_worst": round(float(cv.max()), 2),
                          "full_model_ms": [round(float(f), 2) for f in full[burst, rewarm]],
                          "seconds": round(float(np.mean(seconds[burst, rewarm])), 1)}))


if __name__ == "__main__":
    main()
