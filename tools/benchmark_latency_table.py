"""Build a latency table with its validation and print one JSON line of how well it predicts measured latency.

    python tools/benchmark_latency_table.py --shape minilm-l6 --profile cpu-1t-b1-s128
        [--out latency_tables/minilm-l6_cpu-1t-b1-s128-bf16.json] [--ffn-step 128] [--subnets 32]

Resumes a killed run (same --out). The line also says how well MACs alone rank the same subnets
(Spearman of MACs vs measured latency) and the error of a MAC count calibrated on the same calibration subnets.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from eftnas_hw.latency import Profile, build_table
from eftnas_hw.settings import TableBuildSettings
from eftnas_hw.subnet import BertShape

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm-l6", help="minilm-l6 or bert-base")
    parser.add_argument("--profile", default="cpu-1t-b1-s128")
    parser.add_argument("--out", default=None, help="table path (default latency_tables/SHAPE_PROFILE.json)")
    parser.add_argument("--ffn-step", type=int, default=128)
    parser.add_argument("--subnets", type=int, default=TableBuildSettings.subnets)
    args = parser.parse_args()
    shape = BertShape.named(args.shape)
    profile = Profile.load(args.profile)
    out = Path(args.out or REPO / "latency_tables" / f"{args.shape}_{profile.condition}.json")
    table = build_table(shape, profile, out, TableBuildSettings(ffn_step=args.ffn_step, subnets=args.subnets))
    v = table.validation
    print(json.dumps({
        "shape": args.shape, "profile": profile.name, "table": str(out),
        "build_minutes": round(table.data["build_minutes"], 2), "n_validated": v["n"],
        "mape_pct": round(v["mape_pct"], 2), "worst_pct": round(v["worst_pct"], 2),
        "within_5pct": round(v["within_5pct"], 3), "within_10pct": round(v["within_10pct"], 3),
        "spearman_table": round(v["spearman"], 4), "spearman_macs": round(v["macs_spearman"], 4),
        "calibrated_macs_mape_pct": round(v["calibrated_macs"]["mape_pct"], 2),
        "calibrated_macs_worst_pct": round(v["calibrated_macs"]["worst_pct"], 2),
        "calibration": table.data["calibration"]["model"],
        "candidates": {name: {"mape_pct": round(e["mape_pct"], 2), "within_5pct": round(e["within_5pct"], 3)}
                       for name, e in v["candidates"].items()},
        "unstable_measurements": v["stability"]["unstable_measurements"],
    }))


if __name__ == "__main__":
    main()
