"""Fine-tune + score MiniLM-L6 teachers and build their search spaces; one JSON line per task.

    python tools/benchmark_finetune_space.py --tasks sst2 mrpc --max-train 6400 --epochs 1 \
        [--data-dir ../shared/data/glue] [--work /tmp/eftnas_bench] [--table latency_tables/X.json] [--no-measure]

Records the budget (training examples, epochs, optimizer steps), the wall time of fine-tuning + scoring, the
teacher's dev metric, and the search space for targets spanning 25%-100% of the base model's cost. The cost is
a latency table's prediction (ms) when one is given or a 1-thread f32 one in latency_tables/ fits this CPU, else
GMACs; with a table, each of the N configurations (and the base model) is also exported and measured under its
profile.
A finished teacher in --work is reused, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from eftnas_hw.context import RunContext
from eftnas_hw.cost import gmacs_cost, latency_cost
from eftnas_hw.finetune import finetune
from eftnas_hw.importance import load_scores
from eftnas_hw.models import build_subnet, load_model
from eftnas_hw.settings import FinetuneSettings, LatencySettings, RunConfig, SpaceSettings
from eftnas_hw.space import build_search_space
from eftnas_hw.subnet import BertShape

REPO = Path(__file__).resolve().parents[1]
PROFILE = "cpu-1t-b1-s128"  # the shipped 1-thread f32 tables' profile


def find_table(shape: BertShape, path: str | None):
    """The given table, else the shipped 1-thread f32 one valid on this CPU for this shape (None: use GMACs)."""
    from eftnas_hw.latency import LatencyTable, find_shipped_table

    if not path:
        table = find_shipped_table(shape, PROFILE)
        return (table.path, table) if table is not None else (None, None)
    table = LatencyTable.load(path)
    table.check_shape(shape)
    return Path(path), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--work", default="/tmp/eftnas_bench")
    parser.add_argument("--max-train", type=int, default=6400)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--score-epochs", type=float, default=0.0)
    parser.add_argument("--table", default=None)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--no-measure", action="store_true", help="skip exporting and measuring the N subnets")
    args = parser.parse_args()
    settings = FinetuneSettings(epochs=args.epochs, score_epochs=args.score_epochs, max_train=args.max_train)
    # This benchmark's own grid: finer than the run default (FFN step 32, 3% tolerance).
    space_settings = SpaceSettings(low=0.25, high=1.0, n=args.n, ffn_step=32, tol=0.03)

    for task in args.tasks:
        ctx = RunContext(RunConfig(task=task, data_dir=args.data_dir, latency=LatencySettings(profile=PROFILE)))
        teacher = Path(args.work) / f"minilm-l6_{task}"
        start = time.perf_counter()
        if not teacher.exists():
            finetune(ctx, teacher, settings)
        wall_s = time.perf_counter() - start
        metrics = json.loads((teacher / "metrics.json").read_text())
        budget = metrics.get("settings", metrics)  # a teacher from before the settings record: top-level keys
        model = load_model(teacher)
        shape = BertShape.from_config(model.config)
        table_path, table = find_table(shape, args.table)
        cost = latency_cost(table) if table else gmacs_cost(shape, ctx.profile.seq_len)
        base = cost(shape.full_subnet())
        result = build_search_space(load_scores(teacher), shape, cost, space_settings)
        result.save(teacher / "search_space.json")
        print(f"\n{task}: search space ({cost.unit})\n{result.format_table()}")
        measured = None
        if table and not args.no_measure:
            from eftnas_hw.latency import measure_models_ms

            models = [build_subnet(model, s) for s in (shape.full_subnet(), *result.subnets)]
            measured = [round(m["ms"], 3) for m in measure_models_ms(models, table.profile)]
        print(json.dumps({
            "task": task, "train_examples": metrics["train_examples"], "epochs": budget["epochs"],
            "score_epochs": budget["score_epochs"], "optimizer_steps": metrics["optimizer_steps"],
            "finetune_wall_s": round(metrics["train_runtime_s"] or wall_s, 1),
            "dev_metric": {metrics["main_metric"]: round(metrics["dev"]["metric"], 4)},
            "cost": cost.unit, "table": str(table_path) if table_path else None, "base_cost": round(base, 4),
            "targets": [round(t, 4) for t in result.targets], "predicted": [round(c, 4) for c in result.costs],
            "measured_ms (base, then the N)": measured, "taus": result.taus,
            "subnets": [s.to_dict() for s in result.subnets], "space_size": result.space.size,
        }))


if __name__ == "__main__":
    main()
