"""How long preparing IRs for timing takes: this process alone against this process + the helper process.

    python tools/benchmark_prepare.py [--shape minilm-l6] [--precision int8] [--n 8] [--repeats 3]

Prepares the same n random subnets (the full model and n-1 of a table build's selection) alternately by this
process alone and by `PreparedIRs` (this process and the helper), `--repeats` times, and prints one JSON line: the
helper's start (its imports, once per process), the median seconds of each way and their ratio. Nothing is timed
meanwhile, so the machine may be busy with nothing else.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from eftnas_hw.latency import Profile, RandomSubnet, random_subnets
from eftnas_hw.latency.prepare import PreparedIRs, _Helper, export_ir
from eftnas_hw.subnet import BertShape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm-l6")
    parser.add_argument("--precision", default="int8", choices=("f32", "int8"))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape, profile = BertShape.named(args.shape), Profile(precision=args.precision)
    nets = [RandomSubnet(shape, 0, s) for s in [shape.full_subnet(), *random_subnets(shape, args.n - 1, 0)]]
    started = time.perf_counter()
    if _Helper.get() is None:
        raise SystemExit("one usable CPU: no helper process here")
    _Helper.wait_quiet()
    start_s = time.perf_counter() - started
    alone, together = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t = time.perf_counter()
            for i, net in enumerate(nets):
                export_ir(net, Path(tmp) / f"alone{r}" / str(i), profile)
            alone.append(time.perf_counter() - t)
            t = time.perf_counter()
            with PreparedIRs(profile) as irs:
                irs.paths(nets)
            together.append(time.perf_counter() - t)
    print(json.dumps({"shape": args.shape, "precision": args.precision, "n": len(nets),
                      "helper_start_s": round(start_s, 1), "alone_s": [round(x, 1) for x in alone],
                      "with_helper_s": [round(x, 1) for x in together],
                      "median_ratio": round(float(np.median(np.array(together) / np.array(alone))), 3)}))


if __name__ == "__main__":
    main()
