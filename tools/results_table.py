"""Print the README's cross-task summary from results/<task>/results.json (written by reproduce_results.py).

    python tools/results_table.py [--tasks sst2 mrpc ...]

One row per task and method: measured latency range, dev-metric range, the best dev metric at <= 50% of the
teacher's measured latency, the hypervolume; then, per task, how the latency-driven fronts (Algorithm 1 with the
table, the hardware-aware space) and the GFLOPs-driven one cover each other on the measured axes (evolution.
front_coverage: the share of one's models the other dominates, and the largest dev-metric margin at no more
latency). "GFLOPs" is the paper's cost, GMACs (run metric "gmacs"); the results files keep the name "eftnas-gflops".
"""
from __future__ import annotations

import argparse
from pathlib import Path

from eftnas_hw.evolution import front_coverage
from eftnas_hw.files import read_json

REPO = Path(__file__).resolve().parents[1]


def points(result: dict, method: str) -> list[tuple[float, float]]:
    """(dev metric, measured ms) of one method's models: what `front_coverage` takes."""
    return [(r["ir_dev_metric"], r["measured_ms"]) for r in result["models"] if r["method"] == method]


def margin(coverage: dict) -> str:
    return "-" if coverage["max_margin"] is None else f"{100 * coverage['max_margin']:+.2f} points"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every results/<task>/results.json")
    args = parser.parse_args()
    files = ([REPO / "results" / t / "results.json" for t in args.tasks] if args.tasks
             else sorted((REPO / "results").glob("*/results.json")))
    print("| task | method | models | latency (ms) | dev metric | best dev at <= 50% latency | HV |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for path in files:
        result = read_json(path, "results")
        task, base = path.parent.name, result["base"]
        for method, summary in result["methods"].items():
            pts = points(result, method)
            metric, ms = zip(*pts)
            best = summary["best_under_half_latency"]
            best = "-" if best is None else f"{best:.4f} ({100 * (best - base['ir_dev_metric']):+.2f})"
            print(f"| {task} | {method} | {len(pts)} | {min(ms):.2f}-{max(ms):.2f} | {min(metric):.4f}-{max(metric):.4f}"
                  f" | {best} | {summary['hypervolume']:.3f} |")
        gfl = points(result, "eftnas-gflops")
        for name in ("eftnas-latency", "eftnas-hardware", "eftnas-hardware-signed"):
            mine = points(result, name)
            if mine and gfl:
                ours, theirs = front_coverage(mine, gfl), front_coverage(gfl, mine)
                verdicts.append(f"{task}: {name} dominates {ours['covered']:.0%} of the GFLOPs front "
                                f"(largest margin {margin(ours)}), the GFLOPs front {theirs['covered']:.0%} of it "
                                f"(largest margin {margin(theirs)})")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
