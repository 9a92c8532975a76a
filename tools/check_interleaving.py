"""How repeatable are relative latencies for a given interleaving (calls per burst x rounds)? Prints it per variant.

    python tools/check_interleaving.py [--precision f32] [--repeats 4] [--calls 100] [--bursts 20 5 2]

The full MiniLM-L6 (random weights) and 11 random subnets are exported once and timed `--repeats` times with
`measure_compiled` for each burst size (rounds = calls / burst, so every variant times the same number of calls),
the variants taking turns. Printed per variant: the coefficient of variation over the repeats of each subnet's
latency relative to the full model measured in the same call (median and worst over the subnets), the full model's
own range, and the seconds per measurement. Relative latencies are what a table's proportions and an anchor's
fit rest on; the bursts that give the smallest variation at equal calls are the protocol's `BURST`.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from eftnas_hw.latency import Profile
from eftnas_hw.latency.measure import exported_irs, measure_compiled
from eftnas_hw.latency.profiler import random_subnets
from eftnas_hw.models import build_subnet, random_bert
from eftnas_hw.subnet import NAMED_SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per candidate per measurement")
    parser.add_argument("--bursts", type=int, nargs="+", default=[20, 5, 2])
    args = parser.parse_args()
    shape, profile = NAMED_SHAPES["minilm-l6"], Profile(precision=args.precision)
    weights = random_bert(shape, 0)
    subnets = [shape.full_subnet()] + random_subnets(shape, 11, 3)
    relative = {b: [] for b in args.bursts}
    full = {b: [] for b in args.bursts}
    seconds = {b: [] for b in args.bursts}
    with exported_irs([build_subnet(weights, s) for s in subnets], profile) as irs:
        for _ in range(args.repeats):
            for burst in args.bursts:
                started = time.time()
                ms = np.array([s["ms"] for s in measure_compiled(irs, profile, rounds=args.calls // burst,
                                                                 burst=burst)])
                seconds[burst].append(time.time() - started)
                relative[burst].append(ms[1:] / ms[0])
                full[burst].append(ms[0])
    for burst in args.bursts:
        r = np.array(relative[burst])
        cv = 100 * r.std(axis=0, ddof=1) / r.mean(axis=0)
        print(json.dumps({"precision": profile.precision, "burst": burst, "rounds": args.calls // burst,
                          "relative_cv_pct_median": round(float(np.median(cv)), 2),
                          "relative_cv_pct_worst": round(float(cv.max()), 2),
                          "full_model_ms": [round(float(f), 2) for f in full[burst]],
                          "seconds": round(float(np.mean(seconds[burst])), 1)}))


if __name__ == "__main__":
    main()
