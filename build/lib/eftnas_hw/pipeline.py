"""`eftnas-hw run`: the whole EFTNAS-HW pipeline from one config, every stage's artifacts in one run folder.

Stages: fine-tune + score -> latency table -> search space -> reorder + super-network -> NSGA-II -> export.
Each finished stage records a key (a hash of its own settings and of the keys of the stages it reads) in
`stages.json`; a stage whose key is unchanged is skipped, so a killed run resumes at the stage it stopped in
(the training stages also resume from their own checkpoints) and a changed later setting reuses earlier stages.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError
from .files import read_json, write_json_atomic
from .subnet import BertShape

REPO_TABLES = Path(__file__).resolve().parents[1] / "latency_tables"

# The embedded default: the packaged MiniLM-L6 on SST-2 with a budget that fits ~30 minutes on 2 cores.
DEFAULT_CONFIG: dict[str, Any] = {
    "model": None,               # HF folder, hub id, or None = the packaged MiniLM-L6
    "task": "sst2",
    "data_dir": None,            # local GLUE TSV folder; None = $EFTNAS_GLUE_DIR, else the hub
    "seed": 0,
    "max_length": 64,            # training/evaluation truncation (latency is profiled at the profile's length)
    "latency": {"profile": "cpu-1t-b1-s128", "table": "auto", "force": False,
                "build": {"ffn_step": 256, "validate_n": 30}},
    "metric": "latency",         # cost in Algorithm 1 and in NSGA-II: latency (the table) or gflops (the paper)
    "finetune": {"epochs": 1.0, "score_epochs": 0.0, "max_train": 6000, "batch_size": 32, "lr": 5e-5},
    "space": {"low": 0.25, "high": 1.0, "n": 5, "ffn_step": 64, "include_full": False, "tol": 0.05},
    "supernet": {"reorder": "first-order", "max_steps": 200, "batch_size": 32, "lr": 3e-5, "num_random": 1,
                 "max_train": 6000, "temperature": 2.0, "kd_alpha": 1.0, "ce_alpha": 1.0},
    "search": {"pop_size": 20, "n_evals": 120, "max_search": 400},
    "export": {"max_models": 5, "int8": False, "budget_ms": None},
}


def load_run_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> dict:
    """The default config, updated by a YAML file and then by `overrides` (nested dicts merge)."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"run config not found: {path}") from None
        except yaml.YAMLError as e:
            raise UserError(f"run config {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(user, dict):
            raise UserError(f"run config {path} must be a mapping of settings")
        _merge(config, user, str(path))
    _merge(config, _given(overrides or {}), "command line")
    if config["metric"] not in ("latency", "gflops"):
        raise UserError(f"metric must be 'latency' or 'gflops', got {config['metric']!r}")
    return config


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        if key not in base and prefix != "latency.build.":  # build settings are build_table's keywords
            raise UserError(f"{source}: unknown setting {prefix}{key} (known: {', '.join(base)})")
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value, source, f"{prefix}{key}.")
        else:
            base[key] = value


def _given(overrides: dict) -> dict:
    """Command-line overrides without the options that were not given (None)."""
    return {k: _given(v) if isinstance(v, dict) else v for k, v in overrides.items() if v is not None}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """A run folder and its stage records.

    In a multi-process launch (torchrun, `accelerate launch`) the training stages run in every process and the
    others in the main process alone; the main process decides and records, the rest follow its record.
    """

    def __init__(self, out: Path, config: dict):
        from .finetune import training_processes

        self.out, self.config = out, config
        self.processes = training_processes()
        self.record_path = out / "stages.json"
        self.done: dict = read_json(self.record_path, "stage record") if self.record_path.exists() else {}
        self.keys: dict[str, str] = {}
        self.alone = False  # set once the other processes have left: no more waiting for them
        if self.processes.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", config)

    def stage(self, name: str, settings: Any, inputs: tuple[str, ...], outputs: tuple[str, ...],
              work: Callable[[], Any], every_process: bool = False) -> None:
        """Run `work` unless this stage finished before with the same settings and inputs."""
        key = _key(name, settings, [self.keys[i] for i in inputs])
        self.keys[name] = key
        paths = [self.out / o for o in outputs]
        main = self.processes.is_main_process
        with contextlib.nullcontext() if self.alone else self.processes.main_process_first():
            if not main and self.record_path.exists():
                self.done = read_json(self.record_path, "stage record")
            if self.done.get(name) == key and all(p.exists() for p in paths):
                print(f"[{name}] up to date, skipped")
                return
            if main and self.done.get(name) not in (None, key):  # settings changed: the old artifacts are stale
                for p in paths:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            if main and not every_process:
                self._work(name, key, work)
        if every_process:
            self._work(name, key, work)

    def _work(self, name: str, key: str, work: Callable[[], Any]) -> None:
        print(f"[{name}] running")
        started = time.time()
        work()
        if self.processes.is_main_process:
            self.done[name] = key
            self.done[f"{name}_seconds"] = round(time.time() - started, 1)
            write_json_atomic(self.record_path, self.done)


def shipped_table(shape: BertShape, profile_name: str, force: bool = False) -> Path | None:
    """A table in latency_tables/ (one folder per CPU) for this shape and profile that is valid on this machine."""
    from .latency import LatencyTable

    for path in sorted(REPO_TABLES.rglob(f"*_{profile_name}.json")):
        try:
            LatencyTable.load(path, force=force).check_shape(shape)
        except UserError as e:
            print(f"[latency] {path.name} not usable here: {e}")
            continue
        return path
    return None


def run_pipeline(config: dict, out: str | os.PathLike, progress: bool = True) -> dict | None:
    """Run (or resume) every stage into `out`; returns the summary also written to out/summary.json (None in the
    other processes of a multi-process launch, which take part in the training stages only)."""
    from .data import task_spec
    from .deploy import export_subnets
    from .elastic import ElasticBert
    from .finetune import finetune, load_scores
    from .latency import LatencyTable, Profile, build_table
    from .models import load_config, load_model, load_tokenizer
    from .search import load_search, search_supernet, select_subnet
    from .space import build_search_space, cost_function
    from .supernet import load_supernet, train_supernet

    out = Path(out)
    run = Run(out, config)
    spec = task_spec(config["task"])
    shape = BertShape.from_config(load_config(config["model"]))
    shape = BertShape(**{**shape.to_dict(), "num_labels": spec.num_labels})
    lat = config["latency"]
    profile = Profile.load(lat["profile"])
    common = {k: config[k] for k in ("model", "task", "data_dir", "seed", "max_length")}

    # 1. Teacher fine-tuning and first-order importance.
    ft = config["finetune"]
    run.stage("finetune", [common, ft], (), ("teacher",),
              lambda: finetune(config["model"], config["task"], out / "teacher", data_dir=config["data_dir"],
                               seed=config["seed"], max_length=config["max_length"], **ft), every_process=True)

    # 2. Latency table: the one given, else a shipped one for this shape and profile whose fingerprint matches
    # this machine, else one measured here into the run folder.
    table_path = None if lat["table"] == "auto" else Path(lat["table"])
    if table_path is None:
        table_path = shipped_table(shape, profile.name, lat["force"])
    if table_path is None:
        table_path = out / "latency_table.json"
        run.stage("latency", [shape.to_dict(), profile.to_dict(), lat["build"]], (), ("latency_table.json",),
                  lambda: build_table(shape, profile, table_path, progress=progress, **lat["build"]))
    else:
        run.keys["latency"] = _key(str(table_path.resolve()), table_path.stat().st_mtime)
    table = LatencyTable.load(table_path, force=lat["force"])
    table.check_shape(shape)

    # 3. Search space (Algorithm 1), targets relative to the base model's cost under the chosen metric.
    sp = config["space"]
    cost, unit, label = cost_function(shape, table if config["metric"] == "latency" else None, profile.seq_len)
    base_cost = cost(shape.full_subnet())

    def make_space() -> None:
        result = build_search_space(load_scores(out / "teacher"), shape, cost, sp["low"] * base_cost,
                                    sp["high"] * base_cost, n=sp["n"], ffn_step=sp["ffn_step"],
                                    include_full=sp["include_full"], tol=sp["tol"], unit=unit, metric=label)
        result.save(out / "search_space.json")
        print(result.format_table())

    run.stage("space", [sp, config["metric"]], ("latency", "finetune"), ("search_space.json",), make_space)

    # 4. Reorder + super-network training with distillation from the teacher.
    sn = dict(config["supernet"])
    strategy, max_train = sn.pop("reorder"), sn.pop("max_train")
    run.stage("supernet", [common, config["supernet"]], ("space",), ("supernet",),
              lambda: train_supernet(out / "teacher", out / "search_space.json", out / "supernet", config["task"],
                                     data_dir=config["data_dir"], strategy=strategy, max_train=max_train,
                                     max_length=config["max_length"], seed=config["seed"], **sn),
              every_process=True)
    if not run.processes.is_main_process:
        return None  # training is over: search and export run in the main process
    run.alone = True

    # 5. NSGA-II on the search split.
    se = config["search"]
    run.stage("search", [common, se, config["metric"]], ("supernet", "latency"), ("search",),
              lambda: search_supernet(out / "supernet", config["task"], out / "search", data_dir=config["data_dir"],
                                      table_path=table_path if config["metric"] == "latency" else None,
                                      force=lat["force"], seq_len=profile.seq_len, pop_size=se["pop_size"],
                                      n_evals=se["n_evals"], seed=config["seed"], max_length=config["max_length"],
                                      max_search=se["max_search"], progress=progress))

    # 6. Export: the base model (teacher) and front subnets as IR, each measured and evaluated as IR.
    ex = config["export"]

    def export_models() -> None:
        tokenizer = load_tokenizer(out / "teacher")
        kwargs = dict(profile=profile, task=config["task"], data_dir=config["data_dir"], table=table,
                      max_length=config["max_length"], overwrite=True, progress=progress)
        teacher = ElasticBert(load_model(out / "teacher"))
        export_subnets(teacher, [shape.full_subnet()], out / "models" / "base", tokenizer,
                       source={"model": "the fine-tuned teacher (base model), no compression"}, **kwargs)
        supernet, _ = load_supernet(out / "supernet")
        front, _ = load_search(out / "search")
        chosen = spread_along_front(front, ex["max_models"])
        if ex["budget_ms"] is not None:
            chosen.append(select_subnet(front, budget_ms=ex["budget_ms"]))
        source = {"super-network": str(out / "supernet"), "search": str(out / "search"),
                  "selection": f"{len(chosen)} subnets spread along the Pareto front, no further fine-tuning"}
        export_subnets(supernet, chosen, out / "models" / "front", tokenizer, source=source, **kwargs)
        if ex["int8"]:
            export_subnets(teacher, [shape.full_subnet()], out / "models" / "base-int8", tokenizer, int8=True,
                           source={"model": "the teacher, NNCF INT8"}, **kwargs)
            export_subnets(supernet, chosen, out / "models" / "front-int8", tokenizer, int8=True, source=source,
                           **kwargs)

    run.stage("export", [common, ex], ("search",), ("models",), export_models)
    summary = summarize(out, table_path)
    write_json_atomic(out / "summary.json", summary)
    print(format_summary(summary))
    return summary


def spread_along_front(front: list[dict], k: int) -> list[dict]:
    """At most k front records evenly spaced by rank along the front, both ends included."""
    if len(front) <= k:
        return list(front)
    picks = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(front) - 1]
    return [front[i] for i in picks]


def summarize(out: Path, table_path: Path) -> dict:
    """Measured latency and IR dev metric of the base model and of every exported subnet, with speed-ups, and the
    latency table that predicted them (shipped tables are chosen by this machine's fingerprint)."""
    groups = {}
    for folder in sorted((out / "models").iterdir()):
        if (folder / "summary.json").exists():
            groups[folder.name] = read_json(folder / "summary.json", "export summary")
    base = groups["base"][0]
    rows = []
    for group, records in groups.items():
        for r in records:
            rows.append({"group": group, "name": r["name"], "heads": r["config"]["heads"], "ffn": r["config"]["ffn"],
                         "predicted_ms": r["predicted_ms"], "measured_ms": r["measured_ms"],
                         "speedup": base["measured_ms"] / r["measured_ms"], "ir_dev_metric": r["ir_dev_metric"],
                         "delta_metric": r["ir_dev_metric"] - base["ir_dev_metric"],
                         "path": str(out / "models" / group / r["name"])})
    stages = read_json(out / "stages.json", "stage record")
    return {"run": str(out), "table": str(table_path.resolve()),
            "base": {"measured_ms": base["measured_ms"], "ir_dev_metric": base["ir_dev_metric"]},
            "models": rows, "pareto_plot": str(out / "search" / "pareto.png"),
            "stage_seconds": {k[:-8]: v for k, v in stages.items() if k.endswith("_seconds")}}


def format_summary(summary: dict) -> str:
    lines = [f"{'model':<22} {'heads':<20} {'FFN':<34} {'pred ms':>8} {'meas ms':>8} {'speed-up':>8} "
             f"{'dev':>7} {'delta':>7}"]
    for r in summary["models"]:
        lines.append(f"{r['group'] + '/' + r['name']:<22} {','.join(map(str, r['heads'])):<20} "
                     f"{','.join(map(str, r['ffn'])):<34} {r['predicted_ms'] or float('nan'):>8.2f} "
                     f"{r['measured_ms']:>8.2f} {r['speedup']:>7.2f}x {r['ir_dev_metric']:>7.4f} "
                     f"{r['delta_metric']:>+7.4f}")
    lines.append(f"IR folders under {summary['run']}/models; Pareto plot {summary['pareto_plot']}")
    return "\n".join(lines)
