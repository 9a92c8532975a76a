"""Reproduce the README's results: does latency-driven EFTNAS beat the GMACs-driven one, and plain baselines?

    EFTNAS_GLUE_DIR=../shared/data/glue python tools/reproduce_results.py --task sst2 [--root runs/results]

All methods share one teacher (fine-tuned once, same budget) and one budget (the run config's):
  latency      EFTNAS with the latency table (this project), first-order reordering
  gflops       EFTNAS as in the paper: GMACs in Algorithm 1 and as NSGA-II's objective (metric "gmacs"; the
               variant keeps its name, so results/*/results.json call it "eftnas-gflops"); its front re-measured
  hardware     latency-driven with the hardware-aware search space (importance per ms, whole blocks removable)
  l1, none     latency-driven, with L1 or no reordering (the paper's Figure 6 ablation)
  drop-K       the teacher's first K layers, fine-tuned again with the teacher's budget (a baseline anyone can do)
  teacher-int8 / front-int8: NNCF INT8 of the teacher and of the latency front
Every model is exported to IR and measured on this machine with the profile's protocol; dev metrics are the IR's.
Writes results/<task>/results.json, results.csv and pareto.png, and prints the table.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from eftnas_hw.evolution import hypervolume
from eftnas_hw.files import write_json_atomic
from eftnas_hw.pipeline import run_pipeline, share_finished_stage
from eftnas_hw.settings import RunConfig

REPO = Path(__file__).resolve().parents[1]
# Variant name -> run config overrides. "gflops" runs the paper's GMACs cost under its old name, the one the
# committed results/*/results.json files use ("eftnas-gflops").
VARIANTS = {"latency": {}, "gflops": {"metric": "gmacs"}, "hardware": {"space": {"method": "hardware"}},
            "l1": {"supernet": {"reorder": "l1"}}, "none": {"supernet": {"reorder": "none"}}}


def variant(root: Path, name: str, config: RunConfig) -> dict:
    """Run one EFTNAS variant in its own folder, reusing the shared teacher (its stage key is unchanged)."""
    out = root / name
    if name != "latency" and not (out / "teacher").exists():
        out.mkdir(parents=True, exist_ok=True)
        share_finished_stage(root / "latency", out, "finetune", ("teacher",))
    return run_pipeline(config, out, progress=False)


def drop_layers(root: Path, config: RunConfig, keep: int) -> list:
    """Baseline: the teacher's first `keep` layers, fine-tuned again with the same budget, exported and measured."""
    from eftnas_hw.context import RunContext
    from eftnas_hw.deploy import export_subnets, load_exports
    from eftnas_hw.elastic import ElasticBert
    from eftnas_hw.finetune import finetune
    from eftnas_hw.models import load_model, load_tokenizer, save_model
    from eftnas_hw.subnet import BertShape

    out = root / f"drop-{keep}"
    if (out / "models" / "summary.json").exists():
        return load_exports(out / "models")
    teacher = root / "latency" / "teacher"
    model = load_model(teacher)
    model.bert.encoder.layer = model.bert.encoder.layer[:keep]
    model.config.num_hidden_layers = keep
    if not (out / "init").exists():
        save_model(model, out / "init", load_tokenizer(teacher))
    ctx = RunContext(config.merged({"model": str(out / "init")}))  # the truncated teacher is the model tuned
    if not (out / "student").exists():
        finetune(ctx, out / "student", config.finetune)
    student = ElasticBert(load_model(out / "student"))
    return export_subnets(ctx, student, [BertShape.from_config(student.config).full_subnet()], out / "models",
                          overwrite=True, progress=False,
                          source={"model": f"teacher's first {keep} layers, fine-tuned again"})


def plot(rows: list[dict], base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "teacher"):
        pts = sorted((r["measured_ms"], r["ir_dev_metric"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*pts), marker="o", linestyle="-" if len(pts) > 1 else "none", label=method)
    ax.scatter([base["measured_ms"]], [base["ir_dev_metric"]], marker="*", s=200, c="red", label="teacher", zorder=5)
    ax.set_xlabel("measured OpenVINO latency (ms)")
    ax.set_ylabel("dev metric of the IR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--config", default=None, help="run config YAML (default: the embedded default budget)")
    parser.add_argument("--root", default="runs/results", help="where the runs go (resumable)")
    parser.add_argument("--name", default=None, help="results/<name> and <root>/<name> (default: the task), "
                                                      "e.g. sst2-seed1 for a repeat with another seed")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["latency", "gflops", "l1", "none"])
    parser.add_argument("--drop", nargs="*", type=int, default=[3, 4], help="layer-drop baselines to run")
    parser.add_argument("--int8", action="store_true", help="also INT8 teacher and latency front")
    args = parser.parse_args()
    label = args.name or args.task
    root = Path(args.root) / label
    rows = []
    for name in ["latency"] + [v for v in args.variants if v != "latency"]:
        overrides = {**VARIANTS[name], "task": args.task,
                     "export": {"int8": args.int8 and name == "latency"}}
        summary = variant(root, name, RunConfig.load(args.config, overrides))
        for m in summary["models"]:
            method = {"base": "teacher", "base-int8": "teacher-int8", "front-int8": "front-int8"}.get(
                m["group"], f"eftnas-{name}")
            if m["group"].startswith("base") and name != "latency":
                continue
            rows.append({"method": method, **m})
    base = next(r for r in rows if r["method"] == "teacher")
    config = RunConfig.load(args.config, {"task": args.task})
    for keep in args.drop:
        for r in drop_layers(root, config, keep):
            rows.append({"method": f"drop-{keep}-layers", "group": f"drop-{keep}", "name": r.name,
                         "heads": list(r.subnet.config.heads), "ffn": list(r.subnet.config.ffn),
                         "predicted_ms": None, "measured_ms": r.measured_ms, "ir_dev_metric": r.ir_dev_metric,
                         "speedup": base["measured_ms"] / r.measured_ms,
                         "delta_metric": r.ir_dev_metric - base["ir_dev_metric"], "path": ""})
    methods = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["ir_dev_metric"], r["measured_ms"]) for r in rows if r["method"] == method]
        preds = [(r["predicted_ms"], r["measured_ms"]) for r in rows  # the table is f32: no INT8 prediction
                 if r["method"] == method and r["predicted_ms"] and "int8" not in method]
        methods[method] = {
            "models": len(pts), "hypervolume": hypervolume(pts, base_cost=base["measured_ms"]),
            "best_under_half_latency": max((m for m, ms in pts if ms <= 0.5 * base["measured_ms"]), default=None),
            "prediction_mape_pct": float(np.mean([abs(p - m) / m for p, m in preds]) * 100) if preds else None}
    out = REPO / "results" / label
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {"task": args.task, "base": base, "methods": methods, "models": rows,
                                             "config": config.to_dict()})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "heads", "ffn", "predicted_ms", "measured_ms", "speedup",
                                               "ir_dev_metric", "delta_metric"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, base, out / "pareto.png")
    print(f"{'method':<18} {'models':>6} {'HV':>7} {'best dev <=50% lat':>18} {'pred MAPE %':>11}")
    for method, s in methods.items():
        best = "-" if s["best_under_half_latency"] is None else f"{s['best_under_half_latency']:.4f}"
        mape = "-" if s["prediction_mape_pct"] is None else f"{s['prediction_mape_pct']:.1f}"
        print(f"{method:<18} {s['models']:>6} {s['hypervolume']:>7.4f} {best:>18} {mape:>11}")
    print(f"teacher: {base['measured_ms']:.2f} ms, dev {base['ir_dev_metric']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
