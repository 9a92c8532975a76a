"""Where and when a shared machine's speed moves, timed with one IR: per CPU, and over time (one inference thread).

    python tools/probe_cpu_noise.py MODEL.xml [--precision bf16] [--seq-len 128] [--scan-s 1.5] [--series-s 10]
                                    [--parallel 4] [--out probe.json] [--choose core.txt]

Why: on the 16-vCPU Xeon VM of session 19 the same model ran at two speeds 2x apart (6.4-6.7 ms in some seconds,
12-14 ms in others) and every table measurement was flagged as unstable. Whether such slowdowns belong to some
CPUs (a neighbour on the same physical core: AMX units are shared by hyperthreads) or to the whole machine at once
(frequency, memory bandwidth) decides the remedy: pinning the timing to a quiet CPU, or only interleaving.

1. scan: the IR alone on each usable CPU in turn (a child process pinned to it before OpenVINO loads), --scan-s each;
2. series: --series-s on the fastest CPU of the scan, then unpinned (OpenVINO's own pinning places the thread);
3. together: --parallel children pinned to different CPUs at once, so slow stretches can be matched in time.
Each call's (wall-clock time, `InferRequest.latency`) is kept. Prints per child the median, p10 and p90, the share of
calls more than 25% above that child's p10 and the median length of such slow stretches; writes every sample as
JSON (--out) and the CPUs by their scan median, fastest first (--choose), for pinning what follows (`taskset -c`).
Needs OpenVINO and numpy only (runs where `tools/remote_latency.py measure` runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SLOW = 1.25  # a call this much above the child's p10 counts as slow


def worker(xml: str, precision: str, seq_len: int, cpu: int, seconds: float) -> None:
    """Child: pin (cpu >= 0), compile, warm up, time back-to-back calls for `seconds`; JSON on stdout."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})  # before OpenVINO starts a thread: they all inherit it
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from remote_latency import import_measurement

    measure, profiles = import_measurement()
    # OpenVINO's own pinning, as a user's process gets it (within the CPU pinned to, or of its choosing unpinned)
    request = measure._request(xml, profiles.Profile(threads=1, seq_len=seq_len, precision=precision), bind=False)
    for _ in range(10):
        request.infer()
    t, ms, end = [], [], time.time() + seconds
    while time.time() < end:
        request.infer()
        t.append(time.time())
        ms.append(request.latency)
    print(json.dumps({"cpu": cpu, "t": t, "ms": ms}))


def children(args, cpus: list[int], seconds: float) -> list[dict]:
    """Run one pinned child per CPU in `cpus` at once; their samples."""
    procs = [subprocess.Popen([sys.executable, __file__, args.model, "--precision", args.precision, "--seq-len",
                               str(args.seq_len), "--worker", str(c), str(seconds)], stdout=subprocess.PIPE,
                              text=True) for c in cpus]
    return [json.loads(p.communicate()[0]) for p in procs]


def describe(sample: dict) -> dict:
    """Median, p10, p90 (ms), share of slow calls and the median/max length (ms of wall time) of slow stretches."""
    ms = np.asarray(sample["ms"])
    p10 = np.percentile(ms, 10)
    slow = ms > SLOW * p10
    stretches, run = [], 0.0
    for s, m in zip(slow, ms):
        if s:
            run += m
        elif run:
            stretches.append(run)
            run = 0.0
    stretches += [run] if run else []
    return {"cpu": sample["cpu"], "n": int(ms.size), "median": float(np.median(ms)), "p10": float(p10),
            "p90": float(np.percentile(ms, 90)), "slow_share": float(slow.mean()),
            "slow_stretch_ms_median": float(np.median(stretches)) if stretches else 0.0,
            "slow_stretch_ms_max": float(max(stretches, default=0.0))}


def show(label: str, stats: list[dict]) -> None:
    for s in stats:
        print(f"{label} cpu {s['cpu']:>2}: median {s['median']:.3f} ms, p10 {s['p10']:.3f}, p90 {s['p90']:.3f}, "
              f"{s['n']} calls, slow (> {SLOW:.2f}x p10) {s['slow_share']:.0%}, slow stretches median "
              f"{s['slow_stretch_ms_median']:.0f} ms, longest {s['slow_stretch_ms_max']:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--scan-s", type=float, default=1.5)
    parser.add_argument("--series-s", type=float, default=10.0)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--choose", type=Path)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.model, args.precision, args.seq_len, int(args.worker[0]), float(args.worker[1]))
    cpus = sorted(os.sched_getaffinity(0))
    result = {"cpus": cpus, "scan": [children(args, [c], args.scan_s)[0] for c in cpus]}
    scan = [describe(s) for s in result["scan"]]
    show("scan", scan)
    ranked = [s["cpu"] for s in sorted(scan, key=lambda s: s["median"])]
    fastest = ranked[0]
    result["series"] = children(args, [fastest], args.series_s) + children(args, [-1], args.series_s)
    show("series", [describe(s) for s in result["series"]])
    spread = [c for c in cpus if c != fastest][:: max(1, len(cpus) // max(1, args.parallel))][:args.parallel]
    result["together"] = children(args, spread, args.series_s)
    show("together", [describe(s) for s in result["together"]])
    print(f"fastest CPU in the scan: {fastest}")
    if args.out:
        args.out.write_text(json.dumps(result))
    if args.choose:
        args.choose.write_text(" ".join(map(str, ranked)))


if __name__ == "__main__":
    main()
