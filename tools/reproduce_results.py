"""Reproduce the README's results: does latency-driven EFTNAS beat the GMACs-driven one, and plain baselines?

    EFTNAS_GLUE_DIR=../shared/data/glue python tools/reproduce_results.py --task sst2 [--root runs/results]
        [--seed 1] [--profile cpu-1t-b1-s128-int8] [--variants hardware gflops latency] [--drop 3 4]

All methods share one teacher (fine-tuned once, same budget), one latency table (re-anchored or built once, in
the profile's precision: the deployment precision; `--profile cpu-1t-b1-s128-int8` searches on the INT8 table and
exports, measures and evaluates every model as an NNCF INT8 IR) and one budget (the run config's):
  latency      EFTNAS with the latency table (this project), first-order reordering
  gflops       EFTNAS as in the paper: GMACs in Algorithm 1 and as NSGA-II's objective (metric "gmacs"; the
               variant keeps its name, so results/*/results.json call it "eftnas-gflops"); its front re-measured
  hardware     latency-driven with the hardware-aware search space (importance per ms, whole blocks removable),
               groups scored by the sum of |S| (space.group_score magnitude)
  hardware-signed  the same with signed group scores (the default: eq. 3's sum, where opposite signs cancel)
  l1, none     latency-driven, with L1 or no reordering (the paper's Figure 6 ablation)
  --lever NAME KEY=VALUE...  the latency variant with settings changed as `run --set` changes them: a lever
               measured against the same teacher, table and baselines (e.g. supernet.lr=1e-4); a lever that
               changes only the search or export takes an earlier variant's space and super-network (and
               search) instead of training its own, e.g. search.max_search=2000 on the same super-network
  drop-K       the teacher's first K layers, fine-tuned again with the teacher's budget (a baseline anyone can do)
  teacher-int8 / front-int8: NNCF INT8 of the teacher and of the latency front (--int8 with a non-INT8 profile)
  teacher-f32  the teacher as an f32 IR (the reference of "N x the f32 teacher"), when the profile is not f32
Every model is exported to IR and measured on this machine with the profile's protocol; dev metrics are the IR's.
Per method: hypervolume over measured latency (one reference: the teacher's; also counting only what lies within
5 points of the teacher's metric), and for each pair of methods the share of one's models that the other's
dominate and by how much (dev-metric points at no more latency), next to the search split's standard error, the
resolution at which the search could rank them.
Writes results/<name>/results.json, results.csv and pareto.png, and prints the tables.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eftnas_hw.errors import UserError
from eftnas_hw.evolution import front_coverage, hypervolume
from eftnas_hw.files import read_json, write_csv_atomic, write_json_atomic
from eftnas_hw.pipeline import TABLE_NAME, run_pipeline, share_finished_stage
from eftnas_hw.settings import RunConfig, parse_assignment

if TYPE_CHECKING:
    from eftnas_hw.context import RunContext
    from eftnas_hw.deploy import ExportedModel

REPO = Path(__file__).resolve().parents[1]
# Variant name -> run config overrides. "gflops" runs the paper's GMACs cost under its old name, the one the
# committed results/*/results.json files use ("eftnas-gflops").
VARIANTS = {"latency": {}, "gflops": {"metric": "gmacs"},
            "hardware": {"space": {"method": "hardware", "group_score": "magnitude"}},
            "hardware-signed": {"space": {"method": "hardware", "group_score": "signed"}},
            "l1": {"supernet": {"reorder": "l1"}}, "none": {"supernet": {"reorder": "none"}}}


CSV_COLUMNS = ("method", "heads", "ffn", "predicted_ms", "measured_ms", "speedup", "speedup_vs_f32_teacher",
               "ir_dev_metric", "delta_metric", "search_metric", "search_metric_se")


# Stages a variant may take from an earlier one, in pipeline order, with the config sections that only later
# stages read: configs equal outside those sections give the stage the same key (the run checks it again).
REUSABLE = (("space", ("search_space.json",), {"supernet", "search", "export"}),
            ("supernet", ("supernet",), {"search", "export"}),
            ("search", ("search",), {"export"}))


def variant(root: Path, name: str, config: RunConfig, first: str, earlier: dict[str, RunConfig]) -> dict:
    """Run one EFTNAS variant in its own folder, reusing the first variant's teacher and latency table, and the
    space, super-network and search of an earlier variant whose settings differ only in later stages (a lever on
    the search split trains no super-network of its own). The run recomputes every stage key and accepts them."""
    out = root / name
    if name != first and not (out / "teacher").exists():
        out.mkdir(parents=True, exist_ok=True)
        share_finished_stage(root / first, out, "finetune", ("teacher",))
        share_finished_stage(root / first, out, "latency", (TABLE_NAME,))
        for stage, outputs, later in REUSABLE:
            mine = {k: v for k, v in config.to_dict().items() if k not in later}
            same = next((n for n, c in earlier.items()
                         if {k: v for k, v in c.to_dict().items() if k not in later} == mine), None)
            if same is None:
                break
            share_finished_stage(root / same, out, stage, outputs)
            print(f"[{name}] {stage} stage taken from variant {same} (same settings up to it)")
    return run_pipeline(config, out, progress=False)


def export_whole_model(ctx: "RunContext", model_dir: Path, out: Path, source: str) -> "ExportedModel":
    """A whole (not elastic-sliced) model exported, measured and evaluated like every subnet: its ExportedModel."""
    from eftnas_hw.deploy import export_subnets
    from eftnas_hw.elastic import ElasticBert
    from eftnas_hw.models import load_model
    from eftnas_hw.subnet import BertShape

    model = ElasticBert(load_model(model_dir))
    return export_subnets(ctx, model, [BertShape.from_config(model.config).full_subnet()], out, overwrite=True,
                          progress=False, source={"model": source})[0]


def teacher_f32(root: Path, config: RunConfig, teacher: Path) -> dict:
    """The teacher as an f32 IR, measured with the same protocol: what "N x faster" is counted against."""
    from eftnas_hw.context import RunContext
    from eftnas_hw.deploy import load_exports

    out = root / "teacher-f32"
    if (out / "summary.json").exists():
        model = load_exports(out)[0]
    else:
        ctx = RunContext(config)
        ctx.profile = replace(ctx.profile, precision="f32")  # the run's profile (threads, shape), in f32
        model = export_whole_model(ctx, teacher, out, "the teacher in f32")
    return {"measured_ms": model.measured_ms, "ir_dev_metric": model.ir_dev_metric, "path": str(out / model.name)}


def drop_folder(root: Path, keep: int, epochs: float | None) -> Path:
    return root / (f"drop-{keep}" if epochs is None else f"drop-{keep}-{epochs:.2f}ep")


def drop_layers(root: Path, config: RunConfig, keep: int, first: str, epochs: float | None = None) -> tuple:
    """Baseline: the teacher's first `keep` layers, fine-tuned again with the teacher's budget (or for `epochs`),
    exported and measured. Returns the exported records and the fine-tuning's wall-clock seconds."""
    from eftnas_hw.context import RunContext
    from eftnas_hw.deploy import load_exports
    from eftnas_hw.finetune import finetune
    from eftnas_hw.models import load_model, load_tokenizer, save_model

    out = drop_folder(root, keep, epochs)
    if (out / "models" / "summary.json").exists():
        return load_exports(out / "models"), finetune_seconds(out)
    teacher = root / first / "teacher"
    model = load_model(teacher)
    model.bert.encoder.layer = model.bert.encoder.layer[:keep]
    model.config.num_hidden_layers = keep
    if not (out / "init").exists():
        save_model(model, out / "init", load_tokenizer(teacher))
    ctx = RunContext(config.merged({"model": str(out / "init")}))  # the truncated teacher is the model tuned
    if not (out / "student").exists():
        started = time.time()
        finetune(ctx, out / "student", config.finetune if epochs is None else replace(config.finetune, epochs=epochs))
        write_json_atomic(out / "seconds.json", {"finetune": round(time.time() - started, 1)})
    model = export_whole_model(ctx, out / "student", out / "models", f"teacher's first {keep} layers, fine-tuned again")
    return [model], finetune_seconds(out)


def remeasure(rows: list[dict], f32: dict, rounds: int) -> None:
    """Time every model again with benchmark_app, all of them (and the f32 teacher) in `rounds` interleaved rounds
    in one sitting, lowest round median each: the export stages timed them minutes to an hour apart, across which
    this VM's speed moves by ~10%, as much as the differences between methods. The export stage's figure is kept
    as `export_ms`; `measured_ms` (and everything computed from it) becomes this sitting's."""
    from check_benchmark_app import benchmark_app_interleaved
    from eftnas_hw.deploy import load_exports
    from eftnas_hw.export import IR_NAME
    from eftnas_hw.latency import Profile

    records = rows + ([f32] if all(f32 is not r for r in rows) else [])  # in f32 the teacher is the reference
    exports = {}  # export folder -> its models by name, each summary read once
    irs = []
    for r in records:
        folder = Path(r["path"])
        if folder.parent not in exports:
            exports[folder.parent] = {m.name: m for m in load_exports(folder.parent)}
        irs.append((folder / IR_NAME, Profile.from_dict(exports[folder.parent][folder.name].profile)))
    best = benchmark_app_interleaved(irs, rounds)
    for r, ms in zip(records, best):
        r["export_ms"], r["measured_ms"] = r["measured_ms"], ms
    base = next(r for r in rows if r["method"] == "teacher")
    for r in rows:
        r["speedup"] = base["measured_ms"] / r["measured_ms"]


def finetune_seconds(out: Path) -> float | None:
    """The wall-clock of a drop baseline's fine-tuning (None for a folder from before it was recorded)."""
    return read_json(out / "seconds.json", "timing")["finetune"] if (out / "seconds.json").exists() else None


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


def drop_method(keep: int, budget: str) -> str:
    return f"drop-{keep}-layers" + ("-equal-time" if budget == "eftnas" else "")


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--config", default=None, help="run config YAML (default: the embedded default budget)")
    parser.add_argument("--root", default="runs/results", help="where the runs go (resumable)")
    parser.add_argument("--name", default=None, help="results/<name> and <root>/<name> (default: the task), "
                                                      "e.g. sst2-seed1 for a repeat with another seed")
    parser.add_argument("--seed", type=int, default=None, help="the run config's seed (splits, training, search)")
    parser.add_argument("--profile", default=None, help="deployment profile of every variant, e.g. "
                                                         "cpu-1t-b1-s128-int8 (default: the run config's)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["latency", "gflops", "l1", "none"],
                        help="the first one (or the first lever, with none here) fine-tunes the shared teacher and "
                             "owns the table")
    parser.add_argument("--drop", nargs="*", type=int, default=[3, 4], help="layer-drop baselines to run")
    parser.add_argument("--drop-time", nargs="+", choices=("teacher", "eftnas"), default=["teacher"],
                        help="the layer-drop fine-tuning's budgets: the teacher's epochs, and/or the wall-clock the "
                             "first variant's super-network and search took (epochs scaled by the measured times)")
    parser.add_argument("--int8", action="store_true", help="also INT8 teacher and first variant's front")
    parser.add_argument("--remeasure", type=int, default=0, metavar="ROUNDS",
                        help="time every model and the f32 teacher again with benchmark_app, interleaved in ROUNDS "
                             "rounds in one sitting, and compare on those latencies (the export stages' are kept "
                             "as export_ms)")
    parser.add_argument("--lever", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="one more variant: the latency variant with these settings (repeatable), e.g. "
                             "--lever lr1e-4 supernet.lr=1e-4 supernet.max_steps=300")
    args = parser.parse_args()
    label = args.name or args.task
    root = Path(args.root) / label
    common = {"task": args.task, **({"seed": args.seed} if args.seed is not None else {}),
              **({"latency": {"profile": args.profile}} if args.profile else {})}
    config = RunConfig.load(args.config, common)
    levers = {}
    for name, *assignments in args.lever:
        if name in VARIANTS or not assignments:
            parser.error(f"--lever {name}: give a new name, then KEY=VALUE settings")
        levers[name] = assignments
    names = list(dict.fromkeys([*args.variants, *levers]))
    if not names:
        parser.error("nothing to run: give --variants or --lever")
    first = names[0]
    configs = {}
    for name in names:  # every variant's config before any work: a typo in a lever fails now, not after an hour
        overrides = {**VARIANTS.get(name, {}), **common, "export": {"int8": args.int8 and name == first}}
        configs[name] = RunConfig.load(args.config, overrides)
        try:
            for assignment in levers.get(name, []):
                configs[name] = configs[name].merged(parse_assignment(assignment))
        except UserError as e:
            parser.error(f"--lever {name}: {e}")
    rows, seconds = [], {}
    for name in names:
        summary = variant(root, name, configs[name], first, {n: configs[n] for n in seconds})
        seconds[name] = summary["stage_seconds"]
        for m in summary["models"]:
            method = {"base": "teacher", "base-int8": "teacher-int8", "front-int8": "front-int8"}.get(
                m["group"], f"eftnas-{name}")
            if m["group"].startswith("base") and name != first:
                continue
            rows.append({"method": method, **m})
    base = next(r for r in rows if r["method"] == "teacher")
    precision = summary["precision"]
    f32 = teacher_f32(root, config, root / first / "teacher") if not precision.startswith("f32") else base
    eftnas_s = seconds[first].get("supernet", 0) + seconds[first].get("search", 0)
    drops = [(keep, budget) for budget in args.drop_time for keep in args.drop]
    for keep, budget in drops:
        # Equal wall-clock: EFTNAS's super-network + search time over the teacher's fine-tuning time, in epochs of
        # the teacher's budget; a step of `keep` layers costs about keep/num_layers of the teacher's.
        epochs = (config.finetune.epochs * eftnas_s / seconds[first]["finetune"] * len(base["heads"]) / keep
                  if budget == "eftnas" else None)
        models, drop_s = drop_layers(root, config, keep, first, epochs)
        for r in models:
            rows.append({"method": drop_method(keep, budget), "group": f"drop-{keep}", "name": r.name,
                         "finetune_seconds": drop_s, "finetune_epochs": epochs or config.finetune.epochs,
                         "heads": list(r.subnet.config.heads), "ffn": list(r.subnet.config.ffn),
                         "predicted_ms": None, "measured_ms": r.measured_ms, "ir_dev_metric": r.ir_dev_metric,
                         "speedup": base["measured_ms"] / r.measured_ms,
                         "delta_metric": r.ir_dev_metric - base["ir_dev_metric"],
                         "path": str(drop_folder(root, keep, epochs) / "models" / r.name)})
    if args.remeasure:
        remeasure(rows, f32, args.remeasure)
    for r in rows:
        r["speedup_vs_f32_teacher"] = f32["measured_ms"] / r["measured_ms"]
    methods, floor = {}, base["ir_dev_metric"] - 0.05
    points = {m: [(r["ir_dev_metric"], r["measured_ms"]) for r in rows if r["method"] == m]
              for m in dict.fromkeys(r["method"] for r in rows)}
    for method, pts in points.items():
        mine = [r for r in rows if r["method"] == method]
        preds = [(r["predicted_ms"], r["measured_ms"]) for r in mine  # a front-int8 under a bf16 table: no prediction
                 if r["predicted_ms"] and "int8" not in method]
        within = [r for r in mine if r["ir_dev_metric"] >= base["ir_dev_metric"] - 0.01]
        ses = [r["search_metric_se"] for r in mine if r.get("search_metric_se") is not None]
        methods[method] = {
            "models": len(pts), "hypervolume": hypervolume(pts, base_cost=base["measured_ms"]),
            # the same, counting only what lies within 5 points of the teacher: the reference point's metric 0
            # credits a fast model at chance level with much of the area
            "hypervolume_within_5pt": hypervolume([(m - floor, ms) for m, ms in pts if m > floor],
                                                  base_cost=base["measured_ms"]),
            "best_under_half_latency": max((m for m, ms in pts if ms <= 0.5 * base["measured_ms"]), default=None),
            "fastest_within_1pt_vs_f32_teacher": max((r["speedup_vs_f32_teacher"] for r in within), default=None),
            "search_se": float(np.median(ses)) if ses else None,
            "prediction_mape_pct": float(np.mean([abs(p - m) / m for p, m in preds]) * 100) if preds else None}
    searched = [f"eftnas-{v}" for v in names]
    others = searched + [drop_method(keep, budget) for keep, budget in drops]
    pairs = {f"{a} over {b}": front_coverage(points[a], points[b])  # every pair but baseline over baseline
             for a in others for b in others if a != b and (a in searched or b in searched)}
    out = REPO / "results" / label
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {"task": args.task, "precision": precision, "base": base,
                                             "stage_seconds": seconds, "drop_time": args.drop_time,
                                             "latency_source": (f"benchmark_app, {args.remeasure} interleaved "
                                                                "rounds in one sitting" if args.remeasure
                                                                else "each export stage's own measurement"),
                                             "levers": levers,
                                             "teacher_f32": f32, "methods": methods, "dominance": pairs,
                                             "models": rows, "config": config.to_dict()})
    write_csv_atomic(out / "results.csv", [{k: r.get(k) for k in CSV_COLUMNS} for r in rows])
    plot(rows, base, out / "pareto.png")
    print(f"{'method':<24} {'models':>6} {'HV':>7} {'HV 5pt':>7} {'best dev <=50% lat':>18} {'x f32 within 1pt':>16} "
          f"{'search SE':>9} {'pred MAPE %':>11}")
    for method, s in methods.items():
        print(f"{method:<24} {s['models']:>6} {s['hypervolume']:>7.4f} {s['hypervolume_within_5pt']:>7.4f} "
              f"{fmt(s['best_under_half_latency'], '.4f'):>18} "
              f"{fmt(s['fastest_within_1pt_vs_f32_teacher'], '.2f'):>16} {fmt(s['search_se'], '.4f'):>9} "
              f"{fmt(s['prediction_mape_pct'], '.1f'):>11}")
    for pair, d in pairs.items():
        print(f"{pair:<48} covers {fmt(d['covered'], '.0%'):>5} of its models, largest margin at no more latency "
              f"{fmt(d['max_margin'], '+.4f')}")
    for name, s in seconds.items():
        print(f"eftnas-{name}: super-network {s.get('supernet', 0):.0f} s + search {s.get('search', 0):.0f} s")
    for keep, budget in drops:
        r = next(r for r in rows if r["method"] == drop_method(keep, budget))
        print(f"{drop_method(keep, budget)}: fine-tuned {r['finetune_epochs']:.2f} epochs in "
              f"{fmt(r['finetune_seconds'], '.0f')} s; EFTNAS ({first}): super-network + search {eftnas_s:.0f} s")
    print(f"teacher ({precision}): {base['measured_ms']:.2f} ms, dev {base['ir_dev_metric']:.4f}; f32 teacher "
          f"{f32['measured_ms']:.2f} ms; wrote {out}")


if __name__ == "__main__":
    main()
