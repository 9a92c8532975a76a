"""Do aligned FFN widths run faster? One-layer FFN-only MiniLM blocks at widths around 1024, per precision.

    python tools/probe_width_granularity.py [--rounds 8] [--threads 1] [--seq-len 128]

A table interpolates FFN latency linearly between grid widths (every 128 by default) and search spaces use
multiples of 64. If the CPU's kernels (AMX tiles, VNNI) reward multiples of 16/32/64, widths between them would
cost more than the line says. Prints, per precision this CPU runs, each width's latency and its deviation from a
line fitted on the multiples of 64 only; all widths of one precision are timed interleaved.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from eftnas_hw.latency import Profile, RandomSubnet, measure_models_ms, supported_precisions
from eftnas_hw.subnet import BertShape, SubnetConfig

WIDTHS = [896, 928, 960, 992, 1000, 1008, 1016, 1024, 1032, 1040, 1056, 1088, 1120, 1152]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    shape = dataclasses.replace(BertShape.named("minilm-l6"), num_layers=1, vocab_size=512)
    blocks = [RandomSubnet(shape, 0, SubnetConfig((0,), (w,))) for w in WIDTHS]
    aligned = np.array([w % 64 == 0 for w in WIDTHS])
    for precision in supported_precisions():
        profile = Profile(threads=args.threads, seq_len=args.seq_len, precision=precision)
        ms = np.array([s["ms"] for s in measure_models_ms(blocks, profile, rounds=args.rounds)])
        line = np.polyfit(np.array(WIDTHS)[aligned], ms[aligned], 1)
        off = ms / np.polyval(line, WIDTHS) - 1
        print(f"{precision:5} " + " ".join(f"{w}:{v:.3f}ms({d:+.1%})" for w, v, d in zip(WIDTHS, ms, off)))
        print(f"{precision:5} largest deviation off the multiples of 64: {np.abs(off[~aligned]).max():.1%}, "
              f"on them: {np.abs(off[aligned]).max():.1%}")


if __name__ == "__main__":
    main()
