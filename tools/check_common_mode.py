"""Would a noisy table build come out right with another estimator? Re-fits tables from their stored measurements.

    python tools/check_common_mode.py TABLE [TABLE ...]

A table keeps every measurement's round medians (`measurements` in its JSON). Tables built before session 16 took
each candidate's lowest round median; the protocol now removes each round's common factor. When a slow period of the
machine hits every candidate of a round alike (on the AVX2 EPYC of session 13, rounds 2-4 of a block build all ran
~40% slow), the per-round factor can be estimated from all candidates together and divided out: log(round median) =
candidate + round, fitted by median polish, each candidate then taken at the fastest round's level. This tool
rebuilds the blocks, the drift references and the calibration from the stored numbers under both estimators and
prints the leave-one-out validation of each; nothing is measured.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from eftnas_hw.latency import LatencyTable
from eftnas_hw.latency.measure import common_mode
from eftnas_hw.latency.profiler import (blocks_from_latencies, calibrate_and_validate, drift_factors, measured_blocks,
                                        uncalibrated)
from eftnas_hw.subnet import SubnetConfig

ESTIMATORS = {"lowest round median": lambda m: m.min(axis=1), "common-mode per round": common_mode}


def refit(data: dict, estimator) -> tuple[LatencyTable, dict]:
    """The table rebuilt from its stored measurements with `estimator` (the build's own steps, `profiler`), and its
    leave-one-out validation."""
    stored, shape = data["measurements"], LatencyTable(data).shape
    blocks = blocks_from_latencies(shape, data["blocks"]["ffn_grid"],
                                   estimator(np.array([s["round_medians"] for s in measured_blocks(data)])))
    raw = uncalibrated(dict(data, blocks=blocks))
    groups = sorted((k for k in stored if k.startswith("subnets/")), key=lambda k: int(k.split("/")[1]))
    estimates = [estimator(np.array([s["round_medians"] for s in stored[k]])) for k in groups]
    factors = drift_factors([e[0] for e in estimates])  # every group's first model is the full one
    ms = np.concatenate([e[1:] * f for e, f in zip(estimates, factors)])
    validated = data["validation"]["subnets"]
    subnets = [SubnetConfig.from_dict(s["subnet"]) for s in validated]
    measured = [dict(s["measured"], ms=float(m)) for s, m in zip(validated, ms)]
    return raw, calibrate_and_validate(raw, subnets, measured, measured_blocks(data))["validation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+")
    for path in parser.parse_args().tables:
        data = json.load(open(path))
        for name, estimator in ESTIMATORS.items():
            raw, v = refit(data, estimator)
            print(f"{path}: {name}: leave-one-out MAPE {v['mape_pct']:.2f}%, worst {v['worst_pct']:.1f}%, "
                  f"within 5% {v['within_5pct']:.0%} ({v['calibrated_macs']['mape_pct']:.2f}% for calibrated MACs); "
                  f"block sum of the full model {raw.raw_ms(raw.shape.full_subnet()):.2f} ms")


if __name__ == "__main__":
    main()
