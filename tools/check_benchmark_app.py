"""Does the project's latency protocol agree with `benchmark_app`? Prints one row per IR and precision.

    python tools/check_benchmark_app.py [--threads 1] [--seq-len 128] [--rounds 3] [--load 0] [--work DIR]

Builds (once, cached in --work) IRs from ~0.5 ms to ~70 ms: MiniLM-L6 subnets (one layer with 2 heads and FFN 256,
quarter width, half width, full) and a BERT-medium shape (8 x 512), random weights, exported like deployed subnets,
f32 and NNCF INT8 (dynamic shapes, given as [1, seq-len] to both tools). Each runs in f32, bf16 (where the CPU has
it) and INT8 under `benchmark_app -hint none -nthreads T -nstreams 1 -nireq 1 -api sync -niter 100` in --rounds
interleaved rounds (the yardstick: lowest of the round medians) and under `eftnas_hw.latency.measure_compiled` (all
IRs of one precision interleaved, as a table build times them). `--load N` starts N busy-loop processes during the
project's measurement only (benchmark_app keeps the quiet machine), to show how the protocol holds on a busy one.
Beside ours, the median of all our calls of each IR: on a quiet machine the two coincide; on a VM whose speed switches
between levels every second or so, benchmark_app's median reads the mix of levels and ours the fastest one (the
"all calls" column then sits near benchmark_app, ours below it).
Where the project's protocol binds its timing to the CPUs it found fastest (`measure.choose_cpus`), benchmark_app
runs bound to the same ones (as `taskset -c` would), so both tools time the same cores; OpenVINO's own pinning
would otherwise put benchmark_app's thread on a core of its choosing.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.profiles import Profile, supported_precisions
from eftnas_hw.subnet import BertShape, SubnetConfig

MINI = BertShape.named("minilm-l6")
MEDIUM = BertShape(num_layers=8, hidden_size=512, num_heads=8, head_size=64, intermediate_size=2048)
MODELS = {
    "one-layer": (MINI, SubnetConfig((2, 0, 0, 0, 0, 0), (256, 0, 0, 0, 0, 0))),
    "quarter": (MINI, SubnetConfig((3,) * 6, (384,) * 6)),
    "half": (MINI, SubnetConfig((6,) * 6, (768,) * 6)),
    "minilm-l6": (MINI, MINI.full_subnet()),
    "bert-medium": (MEDIUM, MEDIUM.full_subnet()),
}


def build_irs(work: Path, seq_len: int) -> dict[tuple[str, str], Path]:
    """{(model, "f32"|"int8"): .xml}, exported once per sequence length."""
    # here only: `benchmark_app_interleaved` runs without torch
    from eftnas_hw.latency.prepare import RandomSubnet, export_ir

    irs = {}
    for name, (shape, subnet) in MODELS.items():
        for ir_kind in ("f32", "int8"):
            folder = work / f"s{seq_len}" / f"{name}-{ir_kind}"
            xml = folder / ("int8.xml" if ir_kind == "int8" else "openvino_model.xml")
            if not xml.exists():
                xml = export_ir(RandomSubnet(shape, 0, subnet), folder, Profile(seq_len=seq_len, precision=ir_kind))
            irs[(name, ir_kind)] = xml
    return irs


def benchmark_app_ms(xml: Path, precision: str, threads: int, shape: tuple[int, int] | None = None,
                     cpus: list[int] | None = None) -> float:
    """benchmark_app's median latency (ms) of one run of 100 synchronous iterations; `shape` [batch, seq] for the
    dynamic IRs `export_ir` writes; bound to `cpus` when given (OpenVINO then pins within them)."""
    cmd = ["benchmark_app", "-m", str(xml), "-d", "CPU", "-hint", "none", "-nthreads", str(threads),
           "-nstreams", "1", "-nireq", "1", "-api", "sync", "-niter", "100"]
    if shape is not None:
        cmd += ["-shape", f"[{shape[0]},{shape[1]}]"]
    if precision != "int8":
        cmd += ["-infer_precision", precision]
    bind = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, preexec_fn=bind).stdout
    value, unit = re.search(r"Median:\s+([\d.]+) (ms|us)", out).groups()
    return float(value) / (1000 if unit == "us" else 1)


def benchmark_app_rounds(models: list[tuple[Path, Profile]], rounds: int,
                         cpus: list[int] | None = None) -> list[list[float]]:
    """Each IR's benchmark_app medians (ms) in `rounds` rounds that go over all of them in turn, so the machine's
    drift hits them alike; each IR under its own profile (precision, threads, static [batch, seq_len]), bound to
    `cpus` when given."""
    medians = [[] for _ in models]
    for _ in range(rounds):
        for i, (xml, profile) in enumerate(models):
            medians[i].append(benchmark_app_ms(xml, profile.precision, profile.threads,
                                               (profile.batch, profile.seq_len), cpus))
    return medians


def benchmark_app_interleaved(models: list[tuple[Path, Profile]], rounds: int,
                              cpus: list[int] | None = None) -> list[float]:
    """The yardstick: each IR's lowest benchmark_app median over `benchmark_app_rounds`."""
    return [min(r) for r in benchmark_app_rounds(models, rounds, cpus)]


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved benchmark_app rounds")
    parser.add_argument("--load", type=int, default=0, help="busy processes during the project's measurement")
    parser.add_argument("--work", type=Path, default=Path("/tmp/eftnas-check-benchmark-app"))
    args = parser.parse_args()
    irs = build_irs(args.work, args.seq_len)
    precisions = [p for p in ("f32", "bf16", "int8") if p in supported_precisions()]
    cases = [(name, precision, irs[(name, "int8" if precision == "int8" else "f32")])
             for precision in precisions for name in MODELS]
    profiles = {p: Profile(threads=args.threads, seq_len=args.seq_len, precision=p) for p in precisions}
    load = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    ours = {}
    try:
        for precision in precisions:
            group = [(n, xml) for n, p, xml in cases if p == precision]
            for (name, _), stats in zip(group, measure_compiled([xml for _, xml in group], profiles[precision])):
                ours[(name, precision)] = stats
    finally:
        for p in load:
            p.terminate()
    cpus = next(iter(ours.values()))["cpus"]
    rounds = benchmark_app_rounds([(xml, profiles[p]) for _, p, xml in cases], args.rounds, cpus)
    yardstick = {(n, p): r for (n, p, _), r in zip(cases, rounds)}
    print(f"threads {args.threads}, [1,{args.seq_len}], busy processes during ours: {args.load}, CPUs "
          f"{cpus or 'as OpenVINO pins them'}")
    print(f"{'model':12} {'precision':9} {'benchmark_app':>13} {'ours':>9} {'diff':>7}  {'all calls':>9} {'diff':>7}  "
          f"{'wall/cpu':>8}  benchmark_app round medians")
    diffs, typical = [], []
    for name, precision, _ in cases:
        ref, s = min(yardstick[(name, precision)]), ours[(name, precision)]
        diffs.append(s["ms"] / ref - 1)
        typical.append(s["median"] / ref - 1)
        print(f"{name:12} {precision:9} {ref:10.3f} ms {s['ms']:6.3f} ms {diffs[-1]:+7.1%}  {s['median']:6.3f} ms "
              f"{typical[-1]:+7.1%}  {s['wall_over_cpu']:8.2f}  {[round(x, 3) for x in yardstick[(name, precision)]]}")
    for label, values in (("ours", diffs), ("median of all our calls", typical)):
        d = np.abs(values)
        print(f"agreement, {label}: median |diff| {np.median(d):.1%}, worst {d.max():.1%}, within 3%: "
              f"{np.mean(d <= 0.03):.0%} of {len(d)}, ours below benchmark_app in {np.sum(np.array(values) < 0)}")


if __name__ == "__main__":
    main()
