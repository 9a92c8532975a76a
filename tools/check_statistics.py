"""Which measurement statistic makes the better table? Scored on unseen subnets, from rounds already measured.

    python tools/check_statistics.py TABLE [TABLE ...]

Each TABLE is a build (`eftnas-hw profile`, which stores every model's round medians) next to its check,
TABLE.check*.json (`tools/check_table_accuracy.py TABLE --anchor --same-sitting --details`, which stores the round
medians of the checked subnets and of the anchor's subnets timed with them). For each pair of statistics (the one the
table is rebuilt with, from the build's rounds, and the one the check's subnets are measured by, from the check's
rounds) it prints the share of the 24 unseen subnets within 5% of the table anchored in the same sitting, and the
Spearman rank correlation; beside them the build's own leave-one-out error under each statistic.

Why: the protocol takes the rounds' common-mode level for models over `measure.LOWEST_ROUND_MAX_MS` and each model's
lowest round median under it. Session 27 chose that bound from builds' leave-one-out errors; a build's own rounds
score how consistent its measurements are, not whether its table predicts other subnets. This scores the latter, with
nothing timed: both statistics of the same rounds, so the machine's state is the same for both.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eftnas_hw.errors import UserError
from eftnas_hw.latency import LatencyTable
from eftnas_hw.latency.anchor import anchor_models, fit_anchor
from eftnas_hw.latency.measure import COMMON_MODE, LOWEST_ROUND, common_mode
from eftnas_hw.latency.profiler import calibrated_document, errors, kept_block_group, without_reference
from eftnas_hw.latency.slow_state import faster, statistic
from eftnas_hw.settings import AnchorSettings
from eftnas_hw.subnet import SubnetConfig

STATISTICS = {COMMON_MODE: common_mode, LOWEST_ROUND: lambda rounds: np.asarray(rounds).min(axis=1)}


def _with(group: list[dict], by) -> list[dict]:
    """A measured group's stats with "ms" recomputed from its round medians `by` a statistic (STATISTICS)."""
    values = by(np.array([s["round_medians"] for s in group]))
    return [dict(s, ms=float(v)) for s, v in zip(group, values)]


def rebuilt(table: LatencyTable, by) -> LatencyTable:
    """The table as its build would have fitted it had every measurement taken the statistic `by` (the group measured
    again, where it was, chosen by its full model under that statistic, as the build chooses)."""
    data, stored = table.data, table.data["measurements"]
    # the common mode is the whole measurement's, full model and all
    blocks = without_reference(_with(kept_block_group(data), by), data["settings"].get("block_reference", False))
    groups = []
    for key in sorted((k for k in stored if k.startswith("subnets/") and not k.endswith("/again")),
                      key=lambda k: int(k.split("/")[1])):
        groups.append(faster(*(_with(stored[k], by) for k in (key, key + "/again") if k in stored)))
    subnets = [SubnetConfig.from_dict(s["subnet"]) for s in data["validation"]["subnets"]]
    return LatencyTable(calibrated_document(data, subnets, groups, blocks))


def scores(path: Path) -> list[str]:
    """One line per check of the table at `path`."""
    table = LatencyTable.read(path)
    first_group = table.data.get("measurements", {}).get("subnets/0", [{}])
    if "round_medians" not in first_group[0]:
        raise UserError(f"{path} keeps no round medians (built before they were stored): nothing to refit")
    settings = AnchorSettings()
    anchor_subnets, _ = anchor_models(table, settings)
    tables = {name: rebuilt(table, by) for name, by in STATISTICS.items()}
    lines = [f"{path.name}: built with {statistic(first_group)}; "
             "leave-one-out " + ", ".join(f"{name} {t.validation['mape_pct']:.2f}% / {t.validation['within_5pct']:.0%}"
                                          for name, t in tables.items())]
    for check_path in sorted(path.parent.glob(path.name + ".check*.json")):
        check = json.loads(check_path.read_text())
        if "round_medians" not in check:
            lines.append(f"  {check_path.name}: no round medians (checked without --details)")
            continue
        subnets = [SubnetConfig.from_dict(s["subnet"]) for s in check["subnets"]]
        rounds, n = np.array(check["round_medians"]), len(subnets)
        measured = {name: by(rounds) for name, by in STATISTICS.items()}  # each statistic of the check's rounds
        cells = []
        for build, built in tables.items():
            for measured_by, ms in measured.items():
                anchored = fit_anchor(built, anchor_subnets, ms[n:], settings, refuse=False)
                e = errors(np.array([anchored.predict_ms(s) for s in subnets]), ms[:n])
                cells.append(f"built {build} / checked {measured_by}: {e['within_5pct']:.0%} ({e['spearman']:.3f})")
        lines.append(f"  {check_path.name} (within 5% in the same sitting, Spearman): " + "; ".join(cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, nargs="+")
    for path in parser.parse_args().tables:
        try:
            print("\n".join(scores(path)))
        except UserError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
