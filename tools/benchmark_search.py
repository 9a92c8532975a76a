"""Benchmark of `eftnas-hw search` + `export --front` with MiniLM-L6 on SST-2.

    python tools/benchmark_search.py [--supernet DIR | --teacher DIR] [--table T.json] [--pop-size 8]
                                     [--n-evals 24] [--max-search 1000] [--max-export 6]
                                     --work /tmp/eftnas_search_bench

Reports: evaluations per minute on the search split (and scaled to the whole split), the search wall time at the
paper's defaults (population 40, 1000 evaluations; extrapolated from the measured evaluation time unless you run
--n-evals 1000), and for the exported front: predicted (latency table) vs measured latency (MAPE) and the
super-network's (PyTorch) dev metric vs the IR's dev metric. Without --supernet a stand-in is built from
--teacher (default: the packaged MiniLM-L6, whose classifier head is untrained, so metrics sit near chance):
the timing and agreement numbers are valid, the accuracy is not. Resumable: run the same command again.
--pop and --evals (the flags' earlier names) are still accepted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Per layer: 6, 9 or 12 of 12 heads, FFN 512, 1024 or 1536 of 1536 (3^12 = 531,441 subnets).
STANDIN_SPACE = {"heads": [[6, 9, 12]] * 6, "ffn": [[512, 1024, 1536]] * 6}


def standin_supernet(teacher: str | None, out: Path) -> Path:
    """A super-network folder (model + search_space.json) from a plain classifier: no sandwich training."""
    from eftnas_hw.models import load_model, load_tokenizer, save_model

    if not (out / "search_space.json").exists():
        save_model(load_model(teacher, num_labels=2), out, load_tokenizer(teacher), overwrite=True)
        (out / "search_space.json").write_text(json.dumps(STANDIN_SPACE))
    return out


def eval_seconds(search_dir: Path, evaluations: list) -> list[float]:
    """Evaluation time of each subnet of this search, as the search's cache recorded it when it was computed."""
    from eftnas_hw.search import CACHE_NAME
    from eftnas_hw.subnet import SubnetConfig

    seconds = {}
    for line in (search_dir / CACHE_NAME).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a killed run (the search ignores it too)
        seconds[SubnetConfig.from_dict(record["config"])] = record["seconds"]
    return [seconds[r.config] for r in evaluations]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernet", help="trained super-network folder (default: a stand-in from --teacher)")
    p.add_argument("--teacher", default=None, help="classifier folder for the stand-in (default: packaged MiniLM)")
    p.add_argument("--table", default=None, help="latency table (default: the shipped MiniLM-L6 1-thread table "
                                                 "valid on this CPU)")
    p.add_argument("--data-dir", default=os.environ.get("EFTNAS_GLUE_DIR", str(REPO.parent / "shared/data/glue")))
    p.add_argument("--pop-size", "--pop", dest="pop_size", type=int, default=8, help="NSGA-II population")
    p.add_argument("--n-evals", "--evals", dest="n_evals", type=int, default=24, help="NSGA-II evaluations")
    p.add_argument("--max-search", type=int, default=1000, help="search-split examples evaluated (None: all)")
    p.add_argument("--max-export", type=int, default=6, help="front subnets exported and measured")
    p.add_argument("--work", type=Path, default=Path("/tmp/eftnas_search_bench"))
    args = p.parse_args()

    from eftnas_hw.context import RunContext
    from eftnas_hw.deploy import export_subnets
    from eftnas_hw.evolution import spread_along_front
    from eftnas_hw.latency import LatencyTable, find_shipped_table
    from eftnas_hw.search import search_supernet
    from eftnas_hw.settings import RunConfig, SearchSettings
    from eftnas_hw.subnet import BertShape
    from eftnas_hw.supernet import load_supernet

    shipped = None if args.table else find_shipped_table(BertShape.named("minilm-l6"), "cpu-1t-b1-s128")
    table_path = Path(args.table) if args.table else shipped and shipped.path
    if table_path is None or not table_path.is_file():
        sys.exit(f"latency table {table_path or 'for this CPU'} not found: build it with "
                 "tools/benchmark_latency_table.py")
    args.work.mkdir(parents=True, exist_ok=True)
    snapshot = args.work / "table.json"  # the search and the export must use one table, even if it is rebuilt
    if not snapshot.exists():
        shutil.copy(table_path, snapshot)
    table_path = snapshot
    table = LatencyTable.load(table_path)
    supernet_dir = Path(args.supernet) if args.supernet else standin_supernet(args.teacher, args.work / "supernet")
    ctx = RunContext(RunConfig(task="sst2", data_dir=args.data_dir), tokenizer_source=supernet_dir, table=table)
    ctx.profile = table.profile  # the search's GMACs length and the export's measurement follow the table

    started = time.perf_counter()
    run = search_supernet(ctx, supernet_dir, args.work / "search",
                          SearchSettings(pop_size=args.pop_size, n_evals=args.n_evals, max_search=args.max_search))
    search_wall = time.perf_counter() - started
    result = run.result
    full_split = len(ctx.splits["search"])
    examples = run.settings["search_examples"]
    seconds = eval_seconds(args.work / "search", result.evaluations)
    per_eval_full = float(np.mean(seconds)) * full_split / examples  # evaluation time is linear in examples
    supernet, _ = load_supernet(supernet_dir)
    chosen = spread_along_front(result.front, args.max_export)
    started = time.perf_counter()
    exported = export_subnets(ctx, supernet, chosen, args.work / "export",
                              source={"benchmark": "tools/benchmark_search.py"})
    export_wall = time.perf_counter() - started
    errors = [abs(r.measured_ms - r.subnet.latency_ms) / r.measured_ms for r in exported]
    report = {
        "supernet": str(supernet_dir), "table": str(table_path), "profile": table.profile.name,
        "table_validation_mape_pct": table.validation.get("mape_pct"), "load_average_1_5_15": os.getloadavg(),
        "search": {"pop_size": args.pop_size, "n_evals": args.n_evals, "search_examples": examples,
                   "full_search_split": full_split, "evaluated": len(result.evaluations), "fresh_this_run": run.fresh,
                   "revisits": result.revisits, "replayed": run.replayed, "front_size": len(result.front),
                   "hypervolume": result.hypervolume, "wall_s_this_run": round(search_wall, 1),
                   "evals_per_min": round(60 / float(np.mean(seconds)), 2),
                   "seconds_per_eval": {"mean": float(np.mean(seconds)), "min": float(np.min(seconds)),
                                        "max": float(np.max(seconds))},
                   "evals_per_min_full_split": round(60 / per_eval_full, 2),
                   "default_search_wall_h_full_split_extrapolated": round(1000 * per_eval_full / 3600, 2),
                   "default_search_wall_h_this_subset_extrapolated": round(1000 * float(np.mean(seconds)) / 3600, 2)},
        "export": {"models": len(exported), "wall_s": round(export_wall, 1),
                   "latency_mape_pct": round(100 * float(np.mean(errors)), 2),
                   "latency_worst_pct": round(100 * float(np.max(errors)), 2),
                   "max_abs_dev_metric_diff_ir_vs_torch": max(abs(r.ir_dev_metric - r.torch_dev_metric)
                                                             for r in exported),
                   "models_detail": [{"name": r.name, "predicted_ms": r.subnet.latency_ms,
                                      "measured_ms": r.measured_ms, "ir_dev_metric": r.ir_dev_metric,
                                      "torch_dev_metric": r.torch_dev_metric, "search_metric": r.subnet.metric}
                                     for r in exported]},
    }
    (args.work / "benchmark_search.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
