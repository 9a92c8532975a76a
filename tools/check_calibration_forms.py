"""Which calibration form predicts unseen subnets, with the machine's drift between sittings taken out? Prints it.

    python tools/check_calibration_forms.py TABLE [--rounds 20 100 20 100] [--n 24]

The table's own calibration subnets and `--n` unseen random subnets (those of `check_table_accuracy.py`) are exported
once and timed together several times (`measure_compiled`, one measurement per entry of `--rounds`, the time floor
off so that each gets exactly its rounds). Per measurement: the full model's level and the share of rounds its round
median sat over 1.2x its fastest (the VM's slow state), each calibration form fitted on the calibration subnets and
used on the unseen ones of the same rounds (within ±5% at the best single scale, as a same-sitting anchor would,
and MAPE; the block sums from the table), and how the unseen subnets' latencies relative to the full model moved
against the first measurement, by size (smallest to largest fifth). Then every pair of measurements: the share of
all subnets whose latencies, one common scale apart, agree within ±5%. Why: a check of 24 subnets mixes the table's
error with the machine's; this separates them (session 26, `profiler.STRUCTURAL`, `measure.SECONDS_PER_MODEL`).
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

from eftnas_hw.latency import LatencyTable, RandomSubnet, random_subnets
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.prepare import exported_irs
from eftnas_hw.latency.profiler import CALIBRATIONS, LOG_CURVE, errors, fit_log_curve, relative_fit
from eftnas_hw.latency.table import CALIBRATION_FEATURES, log_curve_ms
from eftnas_hw.subnet import SubnetConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_table_accuracy import CHECK_SEED  # noqa: E402  (the unseen subnets that check times)

SLOW = 1.2


def form_predictions(table: LatencyTable, fit: list[SubnetConfig], y: np.ndarray,
                     use: list[SubnetConfig]) -> dict[str, np.ndarray]:
    """Each calibration form (`profiler.CALIBRATIONS` and the log curve) fitted on `fit`, predicting `use`."""
    x_fit, x_use = (np.array([table.features(s) for s in subs]) for subs in (fit, use))
    out = {}
    for name, features in CALIBRATIONS.items():
        cols = [CALIBRATION_FEATURES.index(f) for f in features]
        out[name] = x_use[:, cols] @ relative_fit(x_fit[:, cols], y)
    curve = fit_log_curve(x_fit[:, 0], y)
    out[LOG_CURVE] = np.array([log_curve_ms(curve, b) for b in x_use[:, 0]])
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of latencies within ±5% of each other once one common (median) scale is taken out."""
    r = np.log(a / b)
    return float(np.mean(np.abs(np.expm1(r - np.median(r))) <= 0.05))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--rounds", type=int, nargs="+", default=[20, 100, 20, 100])
    parser.add_argument("--n", type=int, default=24)
    args = parser.parse_args()
    table = LatencyTable.read(args.table)
    shape, seed = table.shape, table.data["settings"]["seed"]
    fit = [SubnetConfig.from_dict(r["subnet"]) for r in table.validation["subnets"]]
    use = [shape.full_subnet()] + random_subnets(shape, args.n - 1, CHECK_SEED)
    models = [RandomSubnet(shape, seed, s) for s in fit] + [RandomSubnet(shape, CHECK_SEED, s) for s in use]
    size = np.argsort([table.raw_ms(s) for s in use])
    results = []
    with exported_irs(models, table.profile) as paths:
        for rounds in args.rounds:
            stats = measure_compiled(paths, table.profile, rounds, min_seconds=0)
            ms = np.array([s["ms"] for s in stats])
            reference = np.array(stats[len(fit)]["round_medians"])  # the unseen full model's
            y_fit, y_use = ms[:len(fit)], ms[len(fit):]
            forms = {}
            for name, p in form_predictions(table, fit, y_fit, use).items():
                e = errors(p * np.exp(np.median(np.log(y_use / p))), y_use)
                forms[name] = {"within_5pct": round(e["within_5pct"], 2), "mape_pct": round(e["mape_pct"], 2)}
            results.append({"rounds": rounds, "full_model_ms": round(float(y_use[0]), 3),
                            "slow_round_share": round(float(np.mean(reference > SLOW * reference.min())), 2),
                            "forms": forms, "ms": ms})
    first = results[0]["ms"][len(fit):]
    for r in results:
        moved = (r["ms"][len(fit):] / r["ms"][len(fit)]) / (first / first[0])
        r["relative_to_first_by_size"] = [round(float(np.median(moved[part])), 3) for part in np.array_split(size, 5)]
        print(json.dumps({k: v for k, v in r.items() if k != "ms"}))
    print(json.dumps({"pairwise_agreement_within_5pct": {f"{i}-{j}": round(agreement(a["ms"], b["ms"]), 2)
                                                          for (i, a), (j, b) in combinations(enumerate(results), 2)}}))


if __name__ == "__main__":
    main()
