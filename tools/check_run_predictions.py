"""Do a run's budgets hold? Its exported IRs measured again, all interleaved, against the table's predictions.

    python tools/check_run_predictions.py RUN_DIR [--rounds 8] [--benchmark-app]

Every exported model of the run (models/*/subnet-NN) is timed under the profile it was exported for, all of them in
the same interleaved rounds (so drift and noise hit them alike), optionally also with benchmark_app (lowest of 3
round medians). Prints per model the table's prediction, the export stage's own measurement and this one, and the
prediction errors (MAPE, share within 5%).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from eftnas_hw.deploy import load_exports
from eftnas_hw.export import IR_NAME
from eftnas_hw.latency import Profile
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.profiler import errors
from eftnas_hw.reports import EXPORT_SUMMARY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_benchmark_app import benchmark_app_ms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--benchmark-app", action="store_true")
    args = parser.parse_args()
    models = [(folder, m) for folder in sorted((args.run / "models").iterdir()) if (folder / EXPORT_SUMMARY).exists()
              for m in load_exports(folder)]
    profiles = {tuple(sorted(m.profile.items())) for _, m in models}
    rows = []
    for key in profiles:
        group = [(f, m) for f, m in models if tuple(sorted(m.profile.items())) == key]
        profile = Profile.from_dict(dict(key))
        stats = measure_compiled([f / m.name / IR_NAME for f, m in group], profile, rounds=args.rounds)
        for (folder, m), s in zip(group, stats):
            bapp = (min(benchmark_app_ms(folder / m.name / IR_NAME, profile.precision, profile.threads,
                                         (profile.batch, profile.seq_len)) for _ in range(3))
                    if args.benchmark_app else None)
            rows.append((f"{folder.name}/{m.name}", m.subnet.latency_ms, m.measured_ms, s["ms"], bapp))
    print(f"{'model':<22} {'predicted':>9} {'export':>8} {'now':>8} {'bench_app':>9}  error vs now")
    pairs = []
    for name, predicted, at_export, now, bapp in rows:
        pairs += [] if predicted is None else [(predicted, now)]
        error = "" if predicted is None else f"{predicted / now - 1:+.1%}"
        print(f"{name:<22} {predicted or float('nan'):>9.3f} {at_export:>8.3f} {now:>8.3f} "
              f"{bapp or float('nan'):>9.3f}  {error}")
    e = errors(*np.array(pairs).T)
    print(f"prediction vs now: MAPE {e['mape_pct']:.1f}%, worst {e['worst_pct']:.1f}%, "
          f"within 5%: {e['within_5pct']:.0%} of {len(pairs)}")

if __name__ == "__main__":
    main()
