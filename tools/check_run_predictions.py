"""Do a run's budgets hold? Its exported IRs measured again, all interleaved, against the table's predictions.

    python tools/check_run_predictions.py RUN_DIR [--rounds 32] [--benchmark-app] [--reference EXPORT_DIR]

Every exported model of the run (models/*/subnet-NN) is timed under the profile it was exported for, all of them in
the same interleaved rounds (so drift and noise hit them alike), optionally also with benchmark_app (3 rounds over
all models interleaved, the lowest round median). Prints per model the table's prediction, the export stage's own
measurement and this one, and the prediction errors (MAPE, share within 5%).
--reference (with --benchmark-app): a whole-model export folder, e.g. reproduce_results' teacher-f32, timed by
benchmark_app in the same rounds; each model's speed-up over it is printed ("N x the f32 teacher" measured in one
sitting, not across the minutes of a long run, over which this VM's speed moves by ~10%).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from eftnas_hw.deploy import MEASURE_ROUNDS, load_exports
from eftnas_hw.export import IR_NAME
from eftnas_hw.latency import Profile
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.profiler import errors
from eftnas_hw.reports import EXPORT_SUMMARY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_benchmark_app import benchmark_app_interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rounds", type=int, default=MEASURE_ROUNDS)
    parser.add_argument("--benchmark-app", action="store_true")
    parser.add_argument("--reference", type=Path, default=None, help="whole-model export folder to count speed-ups "
                                                                      "against (with --benchmark-app)")
    args = parser.parse_args()
    if args.reference is not None and not (args.benchmark_app and (args.reference / EXPORT_SUMMARY).exists()):
        parser.error("--reference needs --benchmark-app and an export folder (with its summary.json)")
    models = [(folder, m) for folder in sorted((args.run / "models").iterdir()) if (folder / EXPORT_SUMMARY).exists()
              for m in load_exports(folder)]
    rows, cpus = {}, None
    for key in {tuple(sorted(m.profile.items())) for _, m in models}:
        group = [(f, m) for f, m in models if tuple(sorted(m.profile.items())) == key]
        stats = measure_compiled([f / m.name / IR_NAME for f, m in group], Profile.from_dict(dict(key)),
                                 rounds=args.rounds)
        rows.update({f"{f.name}/{m.name}": [m.subnet.latency_ms, m.measured_ms, s["ms"]]
                     for (f, m), s in zip(group, stats)})
        cpus = stats[0]["cpus"]
    # keyed like rows; the reference under a key no "folder/subnet" name can take
    timed = [(f"{f.name}/{m.name}", f, m) for f, m in models]
    timed += [("reference", args.reference, load_exports(args.reference)[0])] if args.reference else []
    bapp = {}
    if args.benchmark_app:  # 3 rounds over every model, so drift hits them alike, on the CPUs ours chose
        irs = [(folder / m.name / IR_NAME, Profile.from_dict(m.profile)) for _, folder, m in timed]
        bapp = dict(zip([key for key, _, _ in timed], benchmark_app_interleaved(irs, 3, cpus)))
    reference = bapp.get("reference")
    print(f"{'model':<22} {'predicted':>9} {'export':>8} {'now':>8} {'bench_app':>9}  error vs now"
          + (f"  x {args.reference.name} ({reference:.2f} ms, benchmark_app)" if reference else ""))
    pairs = []
    for name, (predicted, at_export, now) in rows.items():
        pairs += [] if predicted is None else [(predicted, now)]
        error = "" if predicted is None else f"{predicted / now - 1:+.1%}"
        speedup = f"  {reference / bapp[name]:.2f}x" if reference else ""
        print(f"{name:<22} {predicted or float('nan'):>9.3f} {at_export:>8.3f} {now:>8.3f} "
              f"{bapp.get(name, float('nan')):>9.3f}  {error:>11}{speedup}")
    e = errors(*np.array(pairs).T)
    print(f"prediction vs now: MAPE {e['mape_pct']:.1f}%, worst {e['worst_pct']:.1f}%, "
          f"within 5%: {e['within_5pct']:.0%} of {len(pairs)}")

if __name__ == "__main__":
    main()
