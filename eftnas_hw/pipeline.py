"""`eftnas-hw run`: the whole EFTNAS-HW pipeline from one `RunConfig`, every stage's artifacts in one run folder.

Stages: fine-tune + score -> latency table -> search space -> reorder + super-network -> NSGA-II -> export.
Each finished stage records a key (a hash of its own settings and of the keys of the stages it reads) in
`stages.json`; a stage whose key is unchanged is skipped, so a killed run resumes at the stage it stopped in
and a changed later setting reuses earlier stages. Inputs from outside the run folder (a given or shipped latency
table) are keyed by their content, so a fresh clone or a copied run folder is recognised.

A stage works in `.partial/<stage>-<key>/` (its checkpoints, a half-built table, half-exported models): killed, it
resumes from there with the same settings; other settings never resume it (other key). Only when the stage is
complete are its outputs moved into the run folder, replacing the previous ones, and then recorded; a failed or
killed stage leaves the previous outputs and their record as they were.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .context import RunContext
from .cost import cost_model
from .deploy import export_subnets, load_exports, measure_exports
from .elastic import ElasticBert
from .errors import UserError, warn
from .evolution import select_subnet, spread_along_front
from .files import check_writable, json_digest, read_json, write_json_atomic
from .finetune import finetune
from .importance import load_scores
from .latency import (LatencyTable, TableDoesNotFit, anchor_line, anchor_table, build_table, find_shipped_table,
                      hardware_fingerprint, summary_lines)
from .models import load_config, load_model
from .reports import EXPORT_SUMMARY, SEARCH_FRONT, format_run_summary, run_summary
from .runtime import training_processes
from .search import load_search, search_supernet
from .settings import RunConfig
from .space import build_search_space
from .subnet import BertShape
from .supernet import load_search_space, load_supernet, train_supernet

RECORD_NAME = "stages.json"
TABLE_NAME = "latency_table.json"
PARTIAL = ".partial"  # stages at work: .partial/<stage>-<key>/


class Run:
    """A run folder and its stage records.

    In a multi-process launch (torchrun, `accelerate launch`) the training stages run in every process and the
    others in the main process alone; the main process decides and records, the rest follow its record.
    """

    def __init__(self, out: Path, config: RunConfig):
        self.out, self.config = out, config
        self.processes = training_processes()
        self.record_path = out / RECORD_NAME
        self.done: dict = read_json(self.record_path, "stage record") if self.record_path.exists() else {}
        self.keys: dict[str, str] = {}
        self.alone = False  # set once the other processes have left: no more waiting for them
        if self.processes.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", config.to_dict())

    def stage(self, name: str, settings: Any, inputs: tuple[str, ...], outputs: tuple[str, ...],
              work: Callable[[Path], Any], every_process: bool = False) -> None:
        """Run `work(staging)` unless this stage finished before with the same settings and inputs. `work` writes
        the stage's `outputs` (names relative to the run folder) under `staging`, where they wait until complete."""
        key = json_digest([name, settings, [self.keys[i] for i in inputs]])
        self.keys[name] = key
        main = self.processes.is_main_process
        with contextlib.nullcontext() if self.alone else self.processes.main_process_first():
            if not main and self.record_path.exists():
                self.done = read_json(self.record_path, "stage record")
            if self.done.get(name) == key and all((self.out / o).exists() for o in outputs):
                print(f"[{name}] up to date, skipped")
                return
            staging = self.out / PARTIAL / f"{name}-{key}"
            if main:
                for other in (self.out / PARTIAL).glob(f"{name}-*"):  # other settings: never to be resumed
                    if other != staging:
                        shutil.rmtree(other, ignore_errors=True)
                staging.mkdir(parents=True, exist_ok=True)
            if main and not every_process:
                self._work(name, key, work, staging, outputs)
        if every_process:
            self._work(name, key, work, staging, outputs)

    def _work(self, name: str, key: str, work: Callable[[Path], Any], staging: Path,
              outputs: tuple[str, ...]) -> None:
        print(f"[{name}] running" + (" (resuming)" if any(staging.iterdir()) else ""))
        started = time.time()
        work(staging)
        if self.processes.is_main_process:
            missing = [o for o in outputs if not (staging / o).exists()]
            if missing:
                raise RuntimeError(f"stage {name} finished without writing {missing}")
            for o in outputs:
                _replace(staging / o, self.out / o)
            self.done[name] = key
            self.done[f"{name}_seconds"] = round(time.time() - started, 1)
            write_json_atomic(self.record_path, self.done)
            shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    """Move a finished output over the previous one: a file in one rename; a folder by renaming the old one
    aside first (a kill in between leaves the new one or the old one aside, and the stage unrecorded)."""
    if source.is_dir() and target.exists():
        aside = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)


def run_pipeline(config: RunConfig, out: str | os.PathLike, progress: bool = True) -> dict | None:
    """Run (or resume) every stage into `out`; returns the summary also written to out/summary.json (None in the
    other processes of a multi-process launch, which take part in the training stages only)."""
    out = check_writable(out)
    ctx = RunContext(config)
    shape = dataclasses.replace(BertShape.from_config(load_config(config.base_model)),
                                num_labels=ctx.spec.num_labels)
    table_source = _given_table(ctx, shape)  # inputs are checked before any work is done ...
    _ = ctx.splits, ctx.tokenizer  # ... the data and the tokenizer too, before the run folder exists
    common = _common(config)
    run = Run(out, config)

    run.stage("finetune", [common, config.finetune.key()], (), ("teacher",),
              lambda staging: finetune(ctx, staging / "teacher", config.finetune), every_process=True)
    _latency_stage(run, ctx, shape, progress)
    _space_stage(run, ctx, shape)
    run.stage("supernet", [common, config.supernet.key()], ("space",), ("supernet",),
              lambda staging: train_supernet(ctx, out / "teacher", load_search_space(out / "search_space.json"),
                                             staging / "supernet", config.supernet), every_process=True)
    if not run.processes.is_main_process:
        return None  # training is over: search and export run in the main process
    run.alone = True
    run.stage("search", [common, config.search.key(), config.metric], ("supernet", "latency"), ("search",),
              lambda staging: search_supernet(ctx, out / "supernet", staging / "search", config.search, progress))
    _export_stage(run, ctx, shape, progress)
    groups = {folder.name: load_exports(folder) for folder in sorted((out / "models").iterdir())
              if (folder / EXPORT_SUMMARY).exists()}
    summary = run_summary(out, groups, str((out / TABLE_NAME).resolve()),
                          {k[:-8]: v for k, v in run.done.items() if k.endswith("_seconds")},
                          {"table_source": table_source or "built in this run",
                           "precision": ctx.profile.describe_precision(), "anchor": anchor_line(ctx.table)},
                          config.export.budget_ms)
    write_json_atomic(out / "summary.json", summary)
    print(format_run_summary(summary))
    return summary


def _common(config: RunConfig) -> dict:
    """The settings every training, search and export stage depends on."""
    return {**{k: getattr(config, k) for k in ("model", "teacher", "task", "data_dir", "seed", "max_length")},
            "data": config.data.key()}


def _given_table(ctx: RunContext, shape: BertShape) -> str | None:
    """Load the latency table named in the config, else a shipped one whose fingerprint matches this machine,
    into `ctx.table`; returns where it came from (None: it must be built in the run folder)."""
    latency = ctx.config.latency
    if latency.table == "auto":
        ctx.table = find_shipped_table(shape, ctx.profile, latency.force)
    else:
        ctx.table = LatencyTable.load(latency.table, force=latency.force)
        ctx.table.check_shape(shape)
        if not ctx.table.profile.same_condition(ctx.profile):
            raise UserError(f"latency table {latency.table} was measured under profile {ctx.table.profile.to_dict()}, "
                            f"the run deploys under {ctx.profile.to_dict()}")
    return str(ctx.table.path.resolve()) if ctx.table is not None else None


def _latency_stage(run: Run, ctx: RunContext, shape: BertShape, progress: bool) -> None:
    """The run's own `latency_table.json`, valid on this machine: a given or shipped table re-anchored here
    (built here instead when it does not fit even re-anchored), else a table built here. The machine is part of
    the key, so a run folder carried to another machine re-anchors or rebuilds."""
    given, build, anchor = ctx.table, ctx.config.latency.build, ctx.config.latency.anchor

    def make_table(staging: Path) -> None:
        path = staging / TABLE_NAME
        if given is not None:
            try:
                anchored = anchor_table(given, anchor, progress=progress)
                print(f"[latency] {anchor_line(anchored)}")
                anchored.save(path)
                return
            except TableDoesNotFit as e:
                warn(f"{e}; building a table on this machine instead")
        # progress is kept in the (incomplete, so unloadable) table file: a killed build resumes
        print("\n".join(summary_lines(build_table(shape, ctx.profile, path, build, progress=progress))))

    source = [given.digest, anchor.key()] if given is not None else [shape.to_dict(), build.key()]
    run.stage("latency", [source, hardware_fingerprint(ctx.profile)], (), (TABLE_NAME,), make_table)
    ctx.table = LatencyTable.load(run.out / TABLE_NAME)


def _space_stage(run: Run, ctx: RunContext, shape: BertShape) -> None:
    """Algorithm 1, targets relative to the base model's cost under the run's metric."""
    config = ctx.config

    def make_space(staging: Path) -> None:
        cost = cost_model(config.metric, shape, ctx.table, ctx.profile.seq_len)
        slow_widths = ctx.table.off_alignment(config.space.ffn_step) if ctx.table is not None else None
        if slow_widths:
            warn(slow_widths)
        result = build_search_space(load_scores(run.out / "teacher"), shape, cost, config.space)
        result.save(staging / "search_space.json")
        print(result.format_table())

    run.stage("space", [config.space.key(), config.metric], ("latency", "finetune"), ("search_space.json",),
              make_space)


def _export_stage(run: Run, ctx: RunContext, shape: BertShape, progress: bool) -> None:
    """The base model (teacher) and front subnets as IR, each measured and evaluated as IR. The subnets are
    chosen first, so a budget that no front subnet meets fails before anything is replaced."""
    out, settings = run.out, ctx.config.export
    front, _ = load_search(out / "search") if (out / "search" / SEARCH_FRONT).exists() else ([], {})
    chosen = spread_along_front(front, settings.max_models)
    if settings.budget_ms is not None and front:  # last: the run's summary reports it against the budget
        chosen.append(select_subnet(front, budget_ms=settings.budget_ms))
    common = dict(calibration_size=settings.calibration_size, batch_size=settings.batch_size, progress=progress)
    source = {"super-network": str(out / "supernet"), "search": str(out / "search"),
              "selection": f"{len(chosen)} subnets spread along the Pareto front, no further fine-tuning"}

    def export_models(staging: Path) -> None:
        if not chosen:
            raise UserError(f"{out / 'search'} holds no Pareto front to export")
        teacher = ElasticBert(load_model(out / "teacher"))
        supernet, _ = load_supernet(out / "supernet")
        models = staging / "models"  # a killed export resumes model by model (same stage key, same settings)
        for int8 in (False, True) if settings.int8 else (False,):
            suffix = "-int8" if int8 else ""
            base, front = models / f"base{suffix}", models / f"front{suffix}"
            export_subnets(ctx, teacher, [shape.full_subnet()], base, int8=int8, measure=False,
                           source={"model": "the fine-tuned teacher (base model), no compression"}, **common)
            export_subnets(ctx, supernet, chosen, front, int8=int8, source=source, measure=False, **common)
            # in the same rounds: the front relative to the base, and the table re-anchored on its anchor subnets
            measure_exports([base, front], shape, progress, ctx.table, ctx.config.latency.anchor)

    run.stage("export", [_common(ctx.config), settings.key()], ("search",), ("models",), export_models)


def share_finished_stage(source: str | os.PathLike, target: str | os.PathLike, name: str,
                         outputs: tuple[str, ...]) -> None:
    """Copy a finished stage (its outputs and its record: key and seconds taken) from run folder `source` into
    run folder `target`, e.g. one teacher for several variants of a comparison. Nothing is trusted blindly: the
    target run recomputes the stage's key from its own config and re-runs the stage if its settings differ."""
    source, target = Path(source), Path(target)
    done = read_json(source / RECORD_NAME, "stage record")
    if name not in done or not all((source / o).exists() for o in outputs):
        raise UserError(f"{source} has no finished {name} stage to share")
    for o in outputs:
        if not (target / o).exists():
            shutil.copytree(source / o, target / o) if (source / o).is_dir() else shutil.copy2(source / o, target / o)
    record = read_json(target / RECORD_NAME, "stage record") if (target / RECORD_NAME).exists() else {}
    seconds = {f"{name}_seconds": done[f"{name}_seconds"]} if f"{name}_seconds" in done else {}
    write_json_atomic(target / RECORD_NAME, {**record, name: done[name], **seconds})
