"""Reordering ablation (EFTNAS Figure 6): dev metric of super-networks trained after first-order, L1 or no reordering.

For each task: fine-tune MiniLM-L6 (the teacher, with first-order importance), build a GMACs search space with
Algorithm 1 (25%..100% of the full model, plus the full model), then for each strategy train a super-network
with the same budget and evaluate on GLUE dev the largest, the smallest and 10 fixed random subnets - both
right after reordering (no super-network training: what reordering alone preserves) and after training.
Every stage is kept in --work and skipped when already done, so the script resumes after a kill.

    nohup python tools/benchmark_reordering.py --tasks sst2 mrpc --max-steps 60 > /tmp/reorder.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from eftnas_hw.context import RunContext
from eftnas_hw.cost import gmacs_cost
from eftnas_hw.data import TaskSpec, glue_spec
from eftnas_hw.elastic import ElasticBert
from eftnas_hw.evaluate import evaluate_subnets
from eftnas_hw.files import read_json, write_json_atomic
from eftnas_hw.finetune import finetune
from eftnas_hw.importance import load_scores
from eftnas_hw.models import load_model
from eftnas_hw.reorder import reorder_model
from eftnas_hw.settings import REORDER_STRATEGIES, FinetuneSettings, RunConfig, SpaceSettings, SupernetSettings
from eftnas_hw.space import build_search_space
from eftnas_hw.subnet import BertShape
from eftnas_hw.supernet import fixed_subnets, load_search_space, load_supernet, train_supernet

REPO = Path(__file__).resolve().parents[1]


def teacher_and_space(ctx: RunContext, teacher: Path, work: Path, args: argparse.Namespace) -> Path:
    task = ctx.config.task
    if not teacher.is_dir():
        started = time.perf_counter()
        finetune(ctx, teacher, FinetuneSettings(epochs=args.teacher_epochs, max_train=args.teacher_max_train,
                                                batch_size=args.batch_size))
        print(f"[{task}] teacher fine-tuned in {time.perf_counter() - started:.0f} s", flush=True)
    space_file = work / "search_space.json"
    if not space_file.is_file():
        shape = BertShape.from_config(load_model(teacher).config)
        # GMACs at the profile's length (128), FFN granularity 32 as this ablation always used
        settings = SpaceSettings(low=0.25, high=1.0, n=5, ffn_step=32, include_full=True, tol=0.05)
        result = build_search_space(load_scores(teacher), shape, gmacs_cost(shape, ctx.profile.seq_len), settings)
        result.save(space_file)
        print(result.format_table(), flush=True)
    return space_file


def evaluate_named(supernet: ElasticBert, named: dict, dev, spec: TaskSpec, batch_size: int) -> dict[str, float]:
    metrics = evaluate_subnets(supernet, list(named.values()), dev, spec, batch_size)
    return {name: m["metric"] for name, m in zip(named, metrics)}


def run_task(task: str, args: argparse.Namespace) -> dict:
    work = args.work / task
    teacher_dir = Path(args.teachers.format(task=task)) if args.teachers else work / "teacher"
    ctx = RunContext(RunConfig(task=task, data_dir=str(args.data_dir), seed=args.seed),
                     tokenizer_source=teacher_dir if teacher_dir.is_dir() else None)
    space_file = teacher_and_space(ctx, teacher_dir, work, args)
    teacher_metrics = read_json(teacher_dir / "metrics.json", "teacher metrics")
    teacher_settings = teacher_metrics.get("settings", teacher_metrics)  # older teachers: top-level epochs
    dev = ctx.dev
    if args.max_dev and args.max_dev < len(dev):  # a seeded subset: only for quick runs, say so when reporting
        dev = dev.shuffle(seed=0).select(range(args.max_dev))
    results = {"task": task, "teacher_dev": teacher_metrics["dev"]["metric"], "dev_examples": len(dev),
               "teacher_budget": {"train_examples": teacher_metrics["train_examples"],
                                  "epochs": teacher_settings["epochs"],
                                  "optimizer_steps": teacher_metrics["optimizer_steps"]},
               "strategies": {}}
    for strategy in args.strategies:
        record_file = work / f"{strategy}.json"
        if record_file.is_file():
            results["strategies"][strategy] = read_json(record_file, "benchmark record")
            continue
        out = work / f"supernet-{strategy}"
        if not out.is_dir():
            started = time.perf_counter()
            settings = SupernetSettings(reorder=strategy, max_train=args.max_train, max_steps=args.max_steps,
                                        batch_size=args.batch_size, num_random=args.num_random,
                                        save_minutes=args.save_minutes, report_random=0)
            train_supernet(ctx, teacher_dir, load_search_space(space_file), out, settings)
            print(f"[{task}/{strategy}] super-network trained in {time.perf_counter() - started:.0f} s", flush=True)
        supernet, space = load_supernet(out)
        named = fixed_subnets(space, 10, seed=0)  # the same 10 subnets for every strategy (same space)
        untrained = ElasticBert(load_model(teacher_dir))
        reorder_model(untrained.model, strategy, load_scores(teacher_dir) if strategy == "first-order" else None)
        record = {"dev_examples": len(dev), "subnets": {n: c.to_dict() for n, c in named.items()},
                  "gmacs_seq_len": ctx.profile.seq_len,
                  "gmacs": {n: round(c.gmacs(supernet.shape, ctx.profile.seq_len), 4) for n, c in named.items()},
                  "reordered_only": evaluate_named(untrained.eval(), named, dev, ctx.spec, args.eval_batch_size),
                  "trained": evaluate_named(supernet, named, dev, ctx.spec, args.eval_batch_size),
                  "report": read_json(out / "report.json", "report")}
        write_json_atomic(record_file, record)
        results["strategies"][strategy] = record
        print(f"[{task}/{strategy}] {summary_line(record['trained'])}", flush=True)
    return results


def summary_line(metrics: dict[str, float]) -> str:
    randoms = [v for k, v in metrics.items() if k.startswith("random_")]
    return (f"largest {metrics['largest']:.4f}  smallest {metrics['smallest']:.4f}  "
            f"random mean {np.mean(randoms):.4f} (min {min(randoms):.4f}, max {max(randoms):.4f})")


def markdown(results: list[dict]) -> str:
    lines = ["| task | strategy | stage | largest | smallest | 10 random: mean | min | max |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for strategy, record in r["strategies"].items():
            for stage in ("reordered_only", "trained"):
                m = record[stage]
                randoms = [v for k, v in m.items() if k.startswith("random_")]
                lines.append(f"| {r['task']} | {strategy} | {stage} | {m['largest']:.4f} | {m['smallest']:.4f} | "
                             f"{np.mean(randoms):.4f} | {min(randoms):.4f} | {max(randoms):.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    p.add_argument("--strategies", nargs="+", choices=REORDER_STRATEGIES, default=list(REORDER_STRATEGIES))
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("EFTNAS_GLUE_DIR", REPO.parent / "shared" / "data" / "glue")))
    p.add_argument("--work", type=Path, default=Path("/tmp/eftnas_reorder_bench"))
    p.add_argument("--teachers", default=None,
                   help="existing `finetune` folders, e.g. /tmp/bench/minilm-l6_{task} (default: fine-tune here)")
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--teacher-max-train", type=int, default=4000, help="teacher fine-tuning subset (None = all)")
    p.add_argument("--max-steps", type=int, default=60, help="super-network optimizer steps (same for every strategy)")
    p.add_argument("--max-train", type=int, default=None, help="super-network training subset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-random", type=int, default=2)
    p.add_argument("--save-minutes", type=float, default=2.0)
    p.add_argument("--max-dev", type=int, default=None, help="evaluate on a seeded dev subset (quick runs)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for task in args.tasks:
        glue_spec(task)
    results = []
    for task in args.tasks:
        results.append(run_task(task, args))
        write_json_atomic(args.work / "results.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results})
    print(markdown(results))
    print(f"budget: {args.max_steps} super-network steps of batch {args.batch_size}, {args.num_random} random "
          f"subnets per step")
    print(json.dumps({r["task"]: {k: r[k] for k in ("teacher_dev", "teacher_budget", "dev_examples")}
                      for r in results}))


if __name__ == "__main__":
    main()
