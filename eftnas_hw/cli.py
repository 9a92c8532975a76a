"""`eftnas-hw` command line: thin argparse wrappers over the Python API, one subcommand per pipeline stage.

Every command is a `_<name>(args)` function registered in `build_parser()`. Stage flags are derived from the
settings dataclasses (`settings.py`), so their names, types and defaults are the API's. User mistakes raise
UserError, which `main` prints as one line (`eftnas-hw: error: ...`) with exit code 2. Imports of the heavy
libraries happen inside the commands, so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .files import check_writable
from .settings import (AnchorSettings, DataSettings, ExportSettings, FinetuneSettings, LatencySettings, RunConfig, SearchSettings,
                       SpaceSettings, SupernetSettings, TableBuildSettings, add_flags, from_flags, given,
                       parse_assignment)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Parser(argparse.ArgumentParser):
    """argparse with the tool's one-line errors (argparse prints a usage block first) and no abbreviated flags
    (`--epoch` would silently mean `--epochs`, and a flag added later could change what an abbreviation means)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        print(f"eftnas-hw: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser, *names: str, required: tuple[str, ...] = ()) -> None:
    """The RunConfig fields a command takes (model, task, data_dir, seed, max_length)."""
    add_flags(p, RunConfig, only=names, required=required)


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def _resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints of an interrupted run")


def _data_args(p: argparse.ArgumentParser) -> None:
    """Your own dataset instead of a GLUE task (DataSettings)."""
    add_flags(p.add_argument_group("your own data (instead of a GLUE --task or squad; see README)"), DataSettings)


def _run_config(args: argparse.Namespace, **extra) -> RunConfig:
    """The common settings of a single-stage command: flags over the full-budget defaults."""
    overrides = {**given(args, RunConfig), **extra}
    data = given(args, DataSettings)
    if data:
        overrides["data"] = {**overrides.get("data", {}), **data}  # flags over a recorded section
    if getattr(args, "profile", None):
        overrides["latency"] = {"profile": args.profile}
    return RunConfig().merged(overrides)


def _context(args: argparse.Namespace, tokenizer_source=None, table=None, **extra):
    from .context import RunContext

    return RunContext(_run_config(args, **extra), tokenizer_source, table)


def _load_table(path: str | None, force: bool, shape=None):
    if not path:
        return None
    from .latency import LatencyTable

    table = LatencyTable.load(path, force=force)
    if shape is not None:
        table.check_shape(shape)
    return table


def _shape_arg(text: str) -> tuple[int, int]:
    try:
        batch, seq = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--static-shape expects BATCHxSEQ such as 1x128, got {text!r}") from None
    if batch < 1 or seq < 1:
        raise UserError(f"--static-shape: batch and sequence length must be positive, got {text!r}")
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
            "params": subnet.params(shape), "seq_len": args.seq_len,
            "gmacs": round(subnet.gmacs(shape, args.seq_len), 4)}
    print(json.dumps(info, indent=1))


def _export(args: argparse.Namespace) -> None:
    if args.front:
        return _export_front(args)
    from .export import export_openvino
    from .models import build_subnet, load_config, load_model, load_tokenizer
    from .subnet import BertShape, SubnetConfig

    config = load_config(args.model)
    static_shape = _shape_arg(args.static_shape) if args.static_shape else None
    if static_shape and static_shape[1] > config.max_position_embeddings:
        raise UserError(f"--static-shape: sequence length {static_shape[1]} is above the model's "
                        f"{config.max_position_embeddings} positions")
    check_writable(args.out)  # an existing one: refused below unless --overwrite
    subnet = args.subnet and SubnetConfig.load(args.subnet).validate(BertShape.from_config(config))
    model = load_model(args.model, num_labels=args.num_labels)
    tokenizer = load_tokenizer(args.model)
    if subnet:
        model = build_subnet(model, subnet)
    settings, calibration = from_flags(args, ExportSettings), None
    if settings.int8:
        from .data import calibration_texts

        ctx = _context(args)
        calibration = calibration_texts(ctx.spec, ctx.splits["train"], settings.calibration_size)
    out = export_openvino(model, args.out, tokenizer, static_shape=static_shape, calibration_texts=calibration,
                          overwrite=args.overwrite)
    print(f"wrote {out}")


def _export_front(args: argparse.Namespace) -> None:
    from .deploy import export_from_search
    from .search import load_search

    if args.model or args.subnet or args.static_shape or args.num_labels:
        raise UserError("--front exports subnets of the search's super-network: drop --model/--subnet/"
                        "--static-shape/--num-labels")
    if args.task:
        raise UserError("--front takes the task from the search: drop --task")
    check_writable(args.out)  # an existing one is resumed when its settings are the same (deploy.py)
    _, search = load_search(args.front)
    table = _load_table(args.table or search.get("table_path"), args.force)
    if table is None and not args.profile:
        raise UserError("no latency table to take the deployment profile from: pass --profile")
    supernet = args.supernet or search.get("supernet")
    # The data the search scored on: its task, seed and truncation, and (unless given) its data folder.
    same_data = {k: v for k, v in search.get("cache_key", {}).items() if k in ("task", "seed", "max_length")}
    ctx = _context(args, supernet, table, **same_data, data_dir=args.data_dir or search.get("data_dir"),
                   data=search.get("data", {}))
    if table is not None and not args.profile:
        ctx.profile = table.profile
    settings = from_flags(args, ExportSettings)
    records = export_from_search(ctx, args.front, args.out, args.budget_ms, args.budget_gmacs, supernet,
                                 settings.int8, settings.calibration_size, args.overwrite,
                                 max_models=args.max_models)
    for r in records:
        predicted = r.subnet.latency_ms if r.subnet.latency_ms is not None else float("nan")
        print(f"{r.name}: predicted {predicted:.2f} ms, measured {r.measured_ms:.2f} ms, "
              f"dev {r.ir_dev_metric:.4f} (IR) / {r.torch_dev_metric:.4f} (PyTorch)")
    print(f"wrote {len(records)} model folder(s) and summary.csv to {args.out}")


def _search(args: argparse.Namespace) -> None:
    from .search import search_supernet

    ctx = _context(args, args.supernet, _load_table(args.table, args.force),
                   metric="latency" if args.table else "gmacs")
    run = search_supernet(ctx, args.supernet, args.out, from_flags(args, SearchSettings))
    result, cost = run.result, run.result.cost_name
    for r in result.front:
        print(f"metric {r.metric:.4f}  {cost} {r.cost(cost):.4g}  {r.config}")
    print(f"{len(result.evaluations)} subnets evaluated ({run.fresh} this run, {result.revisits} revisits, "
          f"{run.replayed} replayed from an earlier run), {run.evals_per_minute:.1f} evaluations/min, "
          f"front {len(result.front)}, hypervolume {result.hypervolume:.4f}; wrote {args.out}")


def _select(args: argparse.Namespace) -> None:
    from .evolution import select_subnet
    from .search import load_search

    if args.out:
        check_writable(args.out, args.overwrite)
    front, _ = load_search(args.search)
    record = select_subnet(front, args.budget_ms, args.budget_gmacs)
    if args.out:
        record.config.save(args.out)
    print(json.dumps(record.to_dict(), indent=1))


def _finetune(args: argparse.Namespace) -> None:
    from .finetune import finetune

    metrics = finetune(_context(args), args.out, from_flags(args, FinetuneSettings), resume=not args.no_resume,
                       overwrite=args.overwrite)
    if metrics is None:  # not the main process of a multi-process launch
        return
    print(json.dumps(metrics["dev"], indent=1))
    print(f"wrote teacher, importance scores and metrics to {args.out}")


def _train_supernet(args: argparse.Namespace) -> None:
    from .supernet import load_search_space, train_supernet

    ctx = _context(args, model=args.teacher, teacher=None)  # its --teacher is a `finetune` output folder
    report = train_supernet(ctx, args.teacher, load_search_space(args.space), args.out,
                            from_flags(args, SupernetSettings), resume=not args.no_resume, overwrite=args.overwrite)
    if report is None:  # not the main process of a multi-process launch
        return
    for r in report["subnets"]:
        print(f"{r['name']:>10}: dev {r['metric']:.4f}  {r['gmacs']:.3f} GMACs@{report['gmacs_seq_len']}  "
              f"{r['subnet']}")
    print(f"wrote super-network, search_space.json, ordering.json and report.json to {args.out}")


def _space(args: argparse.Namespace) -> None:
    from .cost import gmacs_cost, latency_cost
    from .importance import load_scores
    from .models import load_config
    from .space import build_search_space
    from .subnet import BertShape

    check_writable(args.out, args.overwrite)
    scores = load_scores(args.scores)
    folder = Path(args.scores) if Path(args.scores).is_dir() else Path(args.scores).parent
    shape = BertShape.from_config(load_config(args.model or folder))
    table = _load_table(args.table, args.force, shape)
    cost = latency_cost(table) if table is not None else gmacs_cost(shape, args.seq_len)
    result = build_search_space(scores, shape, cost, from_flags(args, SpaceSettings))
    result.save(args.out)
    print(result.format_table())
    print(f"wrote {args.out}")


def _profile(args: argparse.Namespace) -> None:
    from .latency import Profile, build_table, start_helper, summary_lines
    from .models import load_config
    from .subnet import BertShape

    start_helper()  # the IR helper's imports overlap this process's (see latency/prepare.py)

    if args.shape and args.model:
        raise UserError("give --model or --shape, not both")
    shape = BertShape.named(args.shape) if args.shape else BertShape.from_config(load_config(args.model))
    profile = Profile.load(args.profile)
    name = args.shape or Path(args.model or "minilm-l6").name
    out = Path(args.out or Path("latency_tables") / f"{name}_{profile.condition}.json")
    if args.force:
        out.unlink(missing_ok=True)
    table = build_table(shape, profile, out, from_flags(args, TableBuildSettings))
    print("\n".join(summary_lines(table)))
    print(f"wrote {out}")


def _anchor(args: argparse.Namespace) -> None:
    from .latency import LatencyTable, anchor_line, anchor_table, start_helper

    start_helper()

    check_writable(args.out, args.overwrite)
    anchored = anchor_table(LatencyTable.load(args.table, force=args.force), from_flags(args, AnchorSettings))
    anchored.save(args.out)
    print(anchor_line(anchored))
    print(f"wrote {args.out}")


def _latency(args: argparse.Namespace) -> None:
    from .latency import LatencyTable, measure_models_ms
    from .latency.measure import ROUNDS
    from .models import build_subnet, load_model, random_bert
    from .subnet import BertShape, SubnetConfig

    table = LatencyTable.load(args.table, force=args.force)
    subnet = SubnetConfig.load(args.subnet).validate(table.shape) if args.subnet else table.shape.full_subnet()
    result = {"subnet": subnet.to_dict(), "profile": table.profile.name, "predicted_ms": table.predict_ms(subnet),
              "seq_len": table.profile.seq_len, "gmacs": subnet.gmacs(table.shape, table.profile.seq_len)}
    if args.measure:
        model = load_model(args.model) if args.model else random_bert(table.shape)
        table.check_shape(BertShape.from_config(model.config))
        stats = measure_models_ms([build_subnet(model, subnet)], table.profile, rounds=args.rounds or ROUNDS)[0]
        measured = stats["ms"]
        result.update(measured_ms=measured, measured=stats,
                      error_pct=100 * (result["predicted_ms"] - measured) / measured)
    print(json.dumps(result, indent=1))


def _run(args: argparse.Namespace) -> None:
    from .data import task_name
    from .pipeline import run_pipeline

    overrides: dict = given(args, RunConfig)
    latency = {k: v for k, v in (("profile", args.profile), ("table", args.table), ("force", args.force or None))
               if v is not None}
    for section, values in (("data", given(args, DataSettings)), ("latency", latency),
                            ("supernet", {"reorder": args.reorder}),
                            ("export", {"int8": args.int8 or None, "budget_ms": args.budget_ms})):
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            overrides[section] = values
    config = RunConfig.load(args.config, overrides)
    for assignment in args.set or ():
        config = config.merged(parse_assignment(assignment), f"--set {assignment}: ")
    run_pipeline(config, args.out or f"runs/{task_name(config.task, config.data)}-{config.metric}")


def _add_commands(sub) -> None:
    p = sub.add_parser("info", help="shape, parameters and MACs of a model or subnet")
    _common(p, "model")
    p.add_argument("--subnet", help="subnet JSON ({'heads': [...], 'ffn': [...]})")
    p.add_argument("--seq-len", type=_positive_int, default=128)
    p.set_defaults(func=_info)

    p = sub.add_parser("export", help="export a model or subnet to an OpenVINO IR folder (optimum-intel)")
    _common(p, "model", "task", "data_dir")
    _data_args(p)
    p.add_argument("--subnet", help="subnet JSON; omitted = the whole model")
    p.add_argument("--out", required=True, help="output IR folder")
    p.add_argument("--num-labels", type=_positive_int, default=None, help="classifier outputs when the model has no head")
    p.add_argument("--static-shape", default=None, metavar="BxS", help="fix input shapes, e.g. 1x128 "
                                                                       "(default: dynamic)")
    # Here --int8 replaces the f32 IR (in `run`, export.int8 adds INT8 versions beside the deployed precision's).
    p.add_argument("--int8", dest="int8", action="store_const", const=True, default=None,
                   help="export NNCF INT8 IRs (calibrated on training inputs) instead of f32 ones")
    add_flags(p, ExportSettings, only=("calibration_size",))
    front = p.add_argument_group("subnets of a search (--front): extracted, exported, measured, carded")
    front.add_argument("--front", metavar="SEARCH_DIR", help="export the Pareto front of this `search` output")
    budget = front.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=float, help="only the best front subnet under this predicted latency")
    budget.add_argument("--budget-gmacs", type=float, help="only the best front subnet under this many GMACs")
    front.add_argument("--max-models", type=_positive_int, help="at most N front subnets, spread along the front "
                                                                "(default: the whole front)")
    front.add_argument("--supernet", help="super-network folder (default: the one the search used)")
    front.add_argument("--profile", help="profile to measure under (default: the search's latency table's)")
    front.add_argument("--table", help="latency table for predictions (default: the search's)")
    front.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    _overwrite_arg(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("search", help="NSGA-II over a super-network: search-split metric vs latency (or GMACs)")
    p.add_argument("--supernet", required=True, help="super-network folder (`eftnas-hw train-supernet` output)")
    _common(p, "task", "data_dir", "seed", "max_length")
    _data_args(p)
    cost = p.add_mutually_exclusive_group(required=True)
    cost.add_argument("--table", help="latency table JSON: objective 2 = predicted latency (ms)")
    cost.add_argument("--gmacs", action="store_true", help="objective 2 = GMACs (the paper's cost)")
    p.add_argument("--profile", help="profile whose sequence length counts --gmacs (default cpu-1t-b1-s128)")
    p.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    add_flags(p, SearchSettings)
    p.add_argument("--out", required=True, help="search folder; run the same command again to resume")
    p.set_defaults(func=_search)

    p = sub.add_parser("select", help="the best Pareto-front subnet under a latency or GMACs budget")
    p.add_argument("--search", required=True, help="`search` output folder")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, help="predicted latency budget (ms)")
    budget.add_argument("--budget-gmacs", type=float, help="GMACs budget")
    p.add_argument("--out", help="also write the selected subnet JSON here")
    _overwrite_arg(p)
    p.set_defaults(func=_select)

    p = sub.add_parser("finetune", help="fine-tune the teacher (GLUE, SQuAD or your data) and accumulate "
                                        "importance scores")
    _common(p, "model", "teacher", "task", "data_dir", "seed", "max_length")
    _data_args(p)
    p.add_argument("--out", required=True, help="output folder (teacher, importance.safetensors, metrics.json)")
    add_flags(p, FinetuneSettings)
    _resume_arg(p)
    _overwrite_arg(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("train-supernet", help="reorder the teacher and train the weight-sharing super-network")
    p.add_argument("--teacher", required=True, help="`finetune` output folder (teacher + importance.safetensors)")
    p.add_argument("--space", required=True, help="search_space.json (`space` output)")
    _common(p, "task", "data_dir", "seed", "max_length")
    _data_args(p)
    p.add_argument("--profile", help="profile whose sequence length the report counts GMACs at")
    p.add_argument("--out", required=True, help="super-network folder; checkpoints go to <out>.partial")
    add_flags(p, SupernetSettings)
    _resume_arg(p)
    _overwrite_arg(p)
    p.set_defaults(func=_train_supernet)


def _add_table_commands(sub) -> None:
    p = sub.add_parser("space", help="Algorithm 1: build the search space from importance scores and a cost")
    p.add_argument("--scores", required=True, help="finetune output folder or importance.safetensors")
    p.add_argument("--model", default=None, help="model whose shape the scores have (default: the scores' folder)")
    cost = p.add_mutually_exclusive_group(required=True)
    cost.add_argument("--table", help="latency table JSON (targets in ms)")
    cost.add_argument("--gmacs", action="store_true", help="count GMACs instead (the paper's original cost)")
    p.add_argument("--seq-len", type=_positive_int, default=128, help="sequence length for --gmacs")
    p.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    add_flags(p, SpaceSettings)
    p.add_argument("--out", required=True, help="search_space.json to write")
    _overwrite_arg(p)
    p.set_defaults(func=_space)

    p = sub.add_parser("profile", help="measure a latency lookup table (OpenVINO, this CPU) and validate it")
    _common(p, "model")
    p.add_argument("--shape", default=None, help="build for a named shape without weights: minilm-l6, bert-base")
    p.add_argument("--profile", required=True, help="profile name (profiles/NAME.yaml) or YAML path")
    p.add_argument("--out", default=None, help="table JSON (default latency_tables/MODEL_PROFILE.json)")
    add_flags(p, TableBuildSettings)
    p.add_argument("--force", action="store_true", help="discard an existing table at --out and rebuild")
    p.set_defaults(func=_profile)

    p = sub.add_parser("latency", help="predicted (and optionally measured) latency of a subnet")
    p.add_argument("--table", required=True, help="latency table JSON")
    p.add_argument("--subnet", help="subnet JSON ({'heads': [...], 'ffn': [...]}); default: the full model")
    p.add_argument("--measure", action="store_true", help="also export the subnet and measure it")
    _common(p, "model")
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="measurement rounds with --measure (each a warm burst of 5 back-to-back calls; the same "
                        "calls in shorter bursts for models over 40 ms; default 20)")
    p.add_argument("--force", action="store_true", help="use a table measured on another machine (warns)")
    p.set_defaults(func=_latency)

    p = sub.add_parser("anchor", help="re-anchor a latency table to this machine (measures a few subnets, ~1 min)")
    p.add_argument("table", help="latency table JSON (shipped, or carried from another machine)")
    p.add_argument("--out", required=True, help="anchored table JSON to write (the source stays unchanged)")
    add_flags(p, AnchorSettings)
    p.add_argument("--force", action="store_true", help="anchor a table measured on another kind of machine (warns)")
    _overwrite_arg(p)
    p.set_defaults(func=_anchor)

    p = sub.add_parser("run", help="the whole pipeline from one config: fine-tune -> space -> super-network -> "
                                   "search -> IR export (resumes stage by stage)")
    p.add_argument("--config", help="run config YAML over the quick default budget (keys: settings.RunConfig)")
    p.add_argument("--out", help="run folder (default: runs/<task>-<metric>)")
    _common(p, "model", "teacher", "task", "data_dir", "seed", "max_length", "metric")
    _data_args(p)
    latency = LatencySettings()
    p.add_argument("--profile", help=f"deployment profile name or YAML (default {latency.profile})")
    p.add_argument("--table", help="latency table JSON (default: auto = shipped if it matches this machine)")
    p.add_argument("--force", action="store_true", help="use a latency table measured on another machine")
    p.add_argument("--reorder", choices=SupernetSettings.__dataclass_fields__["reorder"].metadata["choices"],
                   help="weight reordering strategy")
    p.add_argument("--budget-ms", type=float, help="also export the best front subnet under this latency")
    p.add_argument("--int8", action="store_true", help="also export INT8 (NNCF) versions, measured")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any run setting, e.g. --set supernet.lr=3e-5 (repeatable)")
    p.set_defaults(func=_run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="eftnas-hw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub)
    _add_table_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"eftnas-hw: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (disk full, permissions changed mid-run): the user's to fix
        print(f"eftnas-hw: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eftnas-hw: interrupted (finished work is kept; run the same command again to resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
