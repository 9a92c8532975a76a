"""How right is a latency table on this machine? Random subnets it never saw, exported and timed end to end.

    python tools/check_table_accuracy.py TABLE [--n 24] [--anchor] [--same-sitting] [--force]
                                         [--yardstick protocol|benchmark_app] [--details] [--twice] [--group N]

Prints one JSON line: the table's prediction error on `--n` random subnets (seed 7, other than the build's
calibration/validation subnets and the anchor's; removed attention/FFN blocks included) as the table is, and, with
--anchor, after re-anchoring it here (`eftnas_hw.latency.anchor_table`, whose own measurements are not among the
checked subnets), as a user's run does: the anchor first, the checked subnets timed after it (timed again, at most
twice, the faster kept, where the full model ran over 1.3x the prediction: `slow_state.timed_out_of_a_slow_state`, as
`run`'s export stage does).

With --same-sitting the anchor's subnets are timed in the same interleaved rounds as the checked ones and the anchor
is fitted on those measurements (`fit_anchor`): the table's own error, with the machine's drift between the anchor's
minute and the check's taken out. A VM whose speed moves by 10-20% within minutes (the AVX2 EPYC of sessions 13-17)
misses an absolute bar through the drift alone; this tells the table's share from the machine's.

The yardstick is the project's protocol (which `tools/check_benchmark_app.py` compares with benchmark_app) or
benchmark_app itself (-niter 100, lowest of 3 interleaved round medians; slower).

With --twice the same subnets are measured a second time right after the first, scored the same way ("again"), and the
two measurements compared with each other ("repeatability": the share of checked subnets within 5% of the other
measurement fitted by scale and offset, as an anchor fits a table; the mean of both directions). That share is what a
table that predicted one measurement exactly would read against the other: the machine's ceiling for the check that
hour, printed beside the verdict it bounds. Each measurement also gets "best_affine_within_5pct": the table's
predictions mapped by the scale and offset fitted on the checked subnets themselves, the most an anchor could reach;
the gap down to the same-sitting reading is the anchor's (8 subnets), the gap up to the bar the table's proportions'.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from eftnas_hw.latency import LatencyTable, RandomSubnet, anchor_table, random_subnets
from eftnas_hw.latency.anchor import anchor_models, fit_anchor
from eftnas_hw.latency.measure import measure_compiled
from eftnas_hw.latency.prepare import export_ir, exported_irs
from eftnas_hw.latency.profiler import errors
from eftnas_hw.latency.slow_state import timed_out_of_a_slow_state
from eftnas_hw.settings import AnchorSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_benchmark_app import benchmark_app_interleaved  # noqa: E402
from check_interleaving import affine_within, pairwise_within  # noqa: E402

CHECK_SEED = 7


def measure_benchmark_app(models, table: LatencyTable, rounds: int = 3) -> list[float]:
    profile = table.profile
    with tempfile.TemporaryDirectory(prefix="eftnas-check-") as tmp:
        xmls = [export_ir(m, Path(tmp) / str(i), profile) for i, m in enumerate(models)]
        return benchmark_app_interleaved([(x, profile) for x in xmls], rounds)


def available_bytes() -> int:
    """Memory available to new processes (MemAvailable; free pages where /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def model_groups(paths: list[Path], most: int = 0) -> list[list[int]]:
    """Indices of the IRs timed together: all at once, unless `most` (0: as many as 3/4 of the available memory
    holds, by their weights' files) is fewer; then groups of at most `most`, each led by the full model (index 0).

    Why: every model of a measurement stays compiled; a check of BERT-base f32 holds 32 of them (15.5 GB), and on a
    24-GB machine one was killed for memory (session 29). Grouped, the groups are rescaled to the first by their full
    model, as a table build's groups are, and "in the same sitting" means the same check rather than the same rounds.
    Only where needed: on the 2-vCPU Xeon (session 30) the shipped MiniLM-L6 bf16 table checked in groups of 12 read
    54 / 50 / 42% (as built / anchored first / same sitting), where checks timing all at once read 79-100% that hour.
    """
    if not most:
        weights = sum(Path(p).with_suffix(".bin").stat().st_size for p in paths)
        most = max(2, int(len(paths) * available_bytes() * 3 / 4 / max(weights, 1)))
    rest = list(range(1, len(paths)))
    step = max(1, most - 1)
    return [[0] + rest[i:i + step] for i in range(0, len(rest), step)] or [[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--anchor", action="store_true", help="also re-anchor the table here and check that")
    parser.add_argument("--same-sitting", action="store_true",
                        help="also fit the anchor on its subnets timed in the same rounds as the checked ones")
    parser.add_argument("--force", action="store_true", help="a table from another kind of machine")
    parser.add_argument("--yardstick", choices=("protocol", "benchmark_app"), default="protocol")
    parser.add_argument("--details", action="store_true",
                        help="also print each subnet's measured and predicted ms, and every model's round medians")
    parser.add_argument("--group", type=int, default=0,
                        help="models timed together at most (0: as many as 3/4 of the available memory holds)")
    parser.add_argument("--twice", action="store_true",
                        help="measure the subnets again right after, and print how well the two measurements agree")
    args = parser.parse_args()
    table = LatencyTable.load(args.table, force=args.force)
    shape, profile = table.shape, table.profile
    subnets = [shape.full_subnet()] + random_subnets(shape, args.n - 1, CHECK_SEED)
    # no refusal here: the check reports the residual, and whether `run` would have refused it
    settings = AnchorSettings(bound_pct=1e9)
    started = time.time()
    anchored = anchor_table(table, settings, progress=False) if args.anchor else None
    anchor_seconds = time.time() - started
    models = [RandomSubnet(shape, CHECK_SEED, s) for s in subnets]
    if args.same_sitting:
        extra, anchor_nets = anchor_models(table, settings)  # the very models `anchor_table` times
        models += anchor_nets

    def measure(paths: list | None) -> tuple[np.ndarray, list[dict] | None, int]:
        """The models' latencies, their stats (protocol only) and how often they were timed again."""
        if paths is None:
            return np.array(measure_benchmark_app(models, table)), None, 0
        # timed again where the full model ran in a slow state, as `run`'s anchor and export stage do
        expected = (anchored or table).predict_ms(shape.full_subnet())
        ms, stats, again, reference = np.empty(len(paths)), [None] * len(paths), 0, None
        for group in model_groups(paths, args.group):
            timed, retries = timed_out_of_a_slow_state(
                lambda _: measure_compiled([paths[i] for i in group], profile), 0, expected)
            reference, again = reference or timed[0]["ms"], again + retries
            for i, s in zip(group, timed):  # each group rescaled by its full model to the first group's
                if stats[i] is None:  # the full model: kept from the first group
                    ms[i], stats[i] = s["ms"] * reference / timed[0]["ms"], s
        return ms, stats, again

    def scores(measured: np.ndarray) -> dict:
        """The three readings (as the table is, anchored first, anchored in the same sitting) of one measurement."""
        out, same_sitting = {}, None
        if args.same_sitting:
            same_sitting = fit_anchor(table, extra, measured[len(subnets):], settings, seconds=0.0)
            out["anchor_same_sitting"] = same_sitting
        for name, t in (("as_is", table), ("anchored", anchored), ("anchored_same_sitting", same_sitting)):
            if t is not None:
                predicted = np.array([t.predict_ms(s) for s in subnets])
                e = errors(predicted, measured[:len(subnets)])
                out[name] = {"mape_pct": round(e["mape_pct"], 2), "worst_pct": round(e["worst_pct"], 2),
                             "within_5pct": round(e["within_5pct"], 3), "spearman": round(e["spearman"], 4),
                             "full_model_predicted_ms": round(float(predicted[0]), 3)}
        # what no anchor can beat: the table's predictions mapped by the scale and offset that fit these very subnets
        out["best_affine_within_5pct"] = round(affine_within(np.array([table.calibrated_ms(s) for s in subnets]),
                                                             measured[:len(subnets)]), 3)
        return out

    protocol = args.yardstick == "protocol"
    with exported_irs(models, profile) if protocol else nullcontext() as paths:
        measured, stats, timed_again = measure(paths)
        second, second_stats, second_timed_again = measure(paths) if args.twice else (None, None, 0)
    first = scores(measured)
    same_sitting = first.pop("anchor_same_sitting", None)
    result = {"table": str(args.table), "shape": shape.describe(), "profile": profile.condition,
              "cpu": table.machine.get("cpu"), "here": platform.processor() or "", "n": len(subnets),
              "yardstick": args.yardstick, "full_model_measured_ms": round(float(measured[0]), 3)}
    if protocol:
        result["timed_again"], result["statistic"] = timed_again, stats[0]["statistic"]
    result.update(first)
    if args.twice:
        again = scores(second)
        again.pop("anchor_same_sitting", None)
        result["again"] = dict(again, full_model_measured_ms=round(float(second[0]), 3),
                               timed_again=second_timed_again)
        result["repeatability"] = {"within_5pct": round(float(np.mean(pairwise_within(
            [measured[:len(subnets)], second[:len(subnets)]]))), 3)}
    for name, t in (("anchor", anchored), ("anchor_same_sitting", same_sitting)):
        if t is None:
            continue
        a = t.data["anchor"]
        result[name] = {"scale": round(a["scale"], 4), "model": a["model"], "offset_ms": round(a["offset_ms"], 4),
                        "residual_mape_pct": round(a["residual"]["mape_pct"], 2),
                        "refused_by_default_bound": a["residual"]["mape_pct"] > AnchorSettings().bound_pct}
    if anchored is not None:
        result["anchor"]["seconds"] = round(anchor_seconds, 1)
    if args.details:
        tables = {"as_is": table, "anchored": anchored, "anchored_same_sitting": same_sitting}
        result["subnets"] = [{"subnet": s.to_dict(), "measured_ms": round(float(m), 3),
                              **{f"{k}_ms": round(t.predict_ms(s), 3) for k, t in tables.items() if t is not None}}
                             for s, m in zip(subnets, measured)]
        if protocol:  # every timed model's rounds (the anchor's last), to try other statistics
            result["round_medians"] = [s["round_medians"] for s in stats]
        if args.twice:
            for entry, m in zip(result["subnets"], second):
                entry["again_measured_ms"] = round(float(m), 3)
            if protocol:
                result["again"]["round_medians"] = [s["round_medians"] for s in second_stats]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
