"""Deployable subnets: extract from the super-network, export to OpenVINO IR, then measure what was shipped.

Each exported folder is an HF-style IR (optimum-intel) with *dynamic* [batch, sequence] inputs: real inputs are
far shorter than the profile's length (SST-2 batches pad to ~40 tokens, not 128), and a dynamic IR runs them
at their own length while still reproducing the static-shape latency exactly when reshaped to the profile's
[batch, seq] (which is how its latency is measured here, and how the latency table's blocks were measured).
The dev metric is computed with the IR itself through the OpenVINO runtime, under the profile's precision.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .card import model_card
from .context import RunContext
from .data import calibration_texts, check_trained_task
from .elastic import ElasticBert
from .errors import UserError
from .evaluate import SubnetEvaluator, ir_logits, runtime_config
from .evolution import select_subnet, spread_along_front
from .export import export_openvino, export_task
from .files import check_writable, read_json, write_json_atomic, write_text_atomic
from .latency import LatencyTable, Profile, TableDoesNotFit, anchor_line, hardware_fingerprint
from .latency.anchor import anchor_models, fit_anchor
from .latency.fingerprint import warn_if_int8_is_slow
from .latency.measure import STATISTICS, ir_path, measure_compiled
from .latency.prepare import exported_irs
from .latency.slow_state import timed_out_of_a_slow_state
from .reports import EXPORT_SUMMARY, write_export_summary
from .search import load_search
from .settings import AnchorSettings
from .subnet import BertShape, EvaluatedSubnet, SubnetConfig
from .supernet import REPORT_FILE, load_supernet

RECORD_NAME = "eftnas_export.json"
PENDING_NAME = "eftnas_export.pending.json"  # exported and evaluated, not yet measured (removed once it is)
RUN_NAME = "export.json"
# The exported models are timed together in interleaved rounds once all are exported, not one by one after each
# export: on a 2-vCPU VM a noisy period then inflates rounds of every model alike, and the lowest round median drops
# them. Timed one by one, the default run's front on an AVX2 EPYC read -3% to +22% off the same IRs re-timed
# interleaved minutes later (MAPE 7.2% against the table, 2.4% re-timed; README "Latency tables").
MEASURE_ROUNDS = 32
# Profile fields that change latency: a table built under other values cannot predict this measurement.
LATENCY_FIELDS = ("device", "threads", "streams", "batch", "seq_len", "hint")


@dataclass(frozen=True)
class ExportedModel:
    """One exported IR folder: the subnet as the search knew it (predicted latency, search metric) and what was
    measured on the IR (latency under the profile, dev metric through the OpenVINO runtime)."""

    name: str
    subnet: EvaluatedSubnet
    task: str
    metric_name: str
    precision: str
    measured_ms: float
    measured_statistic: str
    measured: dict
    ir_dev_metric: float
    ir_dev_metrics: dict
    torch_dev_metric: float
    params: int
    profile: dict
    fingerprint: dict
    table_fingerprint: dict | None
    table_precision: str | None
    source: dict
    calibration_size: int
    table_anchor: str | None = None
    label_names: tuple[str, ...] = ()  # the IR config's id2label, in id order (what its predictions read as)
    head: str = "text-classification"  # optimum's task: what OVModelFor... loads the IR as
    # The table re-anchored on its anchor's subnets timed in the same rounds as this model (`measure_exports`): its
    # prediction, and how that anchor fitted (None where the table is for another precision, or there is none).
    reanchored_ms: float | None = None
    export_anchor: str | None = None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "subnet": self.subnet.to_dict(), "label_names": list(self.label_names)}

    @classmethod
    def from_dict(cls, d: dict) -> "ExportedModel":
        try:
            return cls(**{**d, "subnet": EvaluatedSubnet.from_dict(d["subnet"]),
                          "label_names": tuple(d.get("label_names", ()))})
        except (KeyError, TypeError) as e:
            raise UserError(f"not an export record ({type(e).__name__}: {e})") from None


def _check_table(table: LatencyTable, supernet: ElasticBert, profile: Profile) -> None:
    table.check_shape(supernet.shape)
    diffs = [f"{f}: table {getattr(table.profile, f)!r}, export {getattr(profile, f)!r}" for f in LATENCY_FIELDS
             if getattr(table.profile, f) != getattr(profile, f)]
    if diffs:
        raise UserError("the latency table was measured under another profile, its predictions cannot be "
                        "compared with this measurement: " + "; ".join(diffs))


def _prepare_out_dir(out_dir: Path, run: dict, overwrite: bool) -> None:
    """A folder of an interrupted export with the same settings is resumed; anything else is refused."""
    check_writable(out_dir)
    if overwrite:
        shutil.rmtree(out_dir, ignore_errors=True)
    elif (out_dir / RUN_NAME).exists():
        if read_json(out_dir / RUN_NAME, "export run record") != run:
            raise UserError(f"{out_dir} holds an export with other settings (pass --overwrite to replace it)")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"output folder {out_dir} exists (pass --overwrite to replace it)")
    write_json_atomic(out_dir / RUN_NAME, run)


def export_subnets(ctx: RunContext, supernet: ElasticBert, subnets: Sequence[EvaluatedSubnet | SubnetConfig],
                   out_dir: str | os.PathLike, int8: bool = False, calibration_size: int = 300,
                   batch_size: int = 64, source: dict | None = None, overwrite: bool = False,
                   progress: bool = True, measure: bool = True) -> list[ExportedModel]:
    """Export each subnet to out_dir/subnet-NN/, resumably, under `ctx`'s profile and latency table.

    Per model: extract (no fine-tuning), export (dynamic shapes, optional NNCF INT8 calibrated on training
    sentences), evaluate the IR and the PyTorch subnet on the dev set. Then all of them are timed together, beside
    the table's anchor subnets (`measure_exports`). Returns the records; measure=False leaves the models pending and
    returns none, for `measure_exports` to time them in the same rounds as another folder's (the run's base model
    and front).
    """
    if supernet.shape.num_labels != ctx.spec.num_labels:
        raise UserError(f"the super-network has {supernet.shape.num_labels} outputs, task {ctx.spec.name} needs "
                        f"{ctx.spec.num_labels}")
    profile = ctx.profile
    if ctx.table is not None:
        _check_table(ctx.table, supernet, profile)
    records = [s if isinstance(s, EvaluatedSubnet) else EvaluatedSubnet(s, None) for s in subnets]
    if not records:
        raise UserError("no subnets to export")
    for r in records:
        r.config.validate(supernet.shape)
    if int8 or profile.precision == "int8":  # an INT8 profile measures INT8 models, and those carry no hint
        int8, profile = True, replace(profile, precision="int8")
        warn_if_int8_is_slow()
    out_dir = Path(out_dir)
    source = source or {}
    _prepare_out_dir(out_dir, {"task": ctx.spec.name, "int8": int8, "calibration_size": calibration_size,
                               "max_length": ctx.config.max_length, "profile": profile.to_dict(), "source": source,
                               "subnets": [r.config.to_dict() for r in records]}, overwrite)
    calibration = calibration_texts(ctx.spec, ctx.splits["train"], calibration_size) if int8 else None
    evaluator = SubnetEvaluator(supernet, ctx.dev, ctx.spec, batch_size)  # dev batches: once for all models
    fingerprint = hardware_fingerprint(profile)
    folders = [out_dir / f"subnet-{i:02d}" for i in range(len(records))]
    for record, folder in zip(tqdm(records, desc="export", unit="model", disable=not progress), folders):
        # a folder with a record or a pending one was finished that far by an interrupted run with the same
        # settings (checked above)
        if not (folder / RECORD_NAME).exists() and not (folder / PENDING_NAME).exists():
            _export_and_evaluate(ctx, evaluator, record, folder, profile, calibration, source, fingerprint)
    if not measure:
        return []
    return measure_exports([out_dir], supernet.shape, progress, ctx.table, ctx.config.latency.anchor)[0]


def measure_exports(out_dirs: Sequence[str | os.PathLike], shape: BertShape, progress: bool = True,
                    table: LatencyTable | None = None, anchor: AnchorSettings = AnchorSettings()
                    ) -> list[list[ExportedModel]]:
    """Time the exported, not yet measured models of several export folders together, under their profile
    (MEASURE_ROUNDS interleaved rounds), then give each its README.md (model card) and eftnas_export.json and each
    folder its summary.{json,csv}; returns each folder's records.

    Why together: models timed in one measurement share its rounds, so their latencies relative to each other
    carry no drift of the machine between measurements. A run's base model and front timed apart (the base alone,
    the front ~50 s later) read the base 5% apart from the full-size front subnet, the same graph, on the AVX2 EPYC.
    For the same reason `table`'s anchor subnets (`anchor`) are timed in these rounds too, where the table is for
    the models' precision, and the table re-anchored on them predicts each model again (`reanchored_ms`): the
    table anchored minutes earlier, before the search, carries the machine's speed of that minute, and a shared VM
    moves by 6-18% between minutes (the AVX2 EPYC's default runs: the exported models 8.5% faster than at the
    anchoring 5 minutes before, the same IRs re-timed right after back at the anchoring's level).
    """
    out_dirs = [Path(d) for d in out_dirs]
    runs = [read_json(d / RUN_NAME, "export run record") for d in out_dirs]
    if any(r["profile"] != runs[0]["profile"] for r in runs):
        raise UserError("exports measured together must share a profile: " + ", ".join(map(str, out_dirs)))
    folders = [[d / f"subnet-{i:02d}" for i in range(len(r["subnets"]))] for d, r in zip(out_dirs, runs)]
    pending = [f for group in folders for f in group if not (f / RECORD_NAME).exists()]
    if pending:
        profile = Profile.from_dict(runs[0]["profile"])
        reanchor = table is not None and table.profile.precision == profile.precision
        subnets, models = anchor_models(table, anchor) if reanchor else ([], [])
        started = time.time()
        irs = [ir_path(f) for f in pending]
        with exported_irs(models, profile) as anchor_irs:
            def measure(again: bool) -> list[dict]:
                desc = ("measuring again (slow?)" if again else "measuring") if progress else None
                return measure_compiled(irs + anchor_irs, profile, MEASURE_ROUNDS, desc=desc)

            # the anchor's full model, timed after the pending models, tells a slow state of the machine
            stats, retries = timed_out_of_a_slow_state(measure, len(pending), table.predict_ms(subnets[0])) \
                if reanchor else (measure(False), 0)
        checked, line = _reanchor(table, subnets, stats[len(pending):], anchor, time.time() - started, retries) \
            if reanchor else (None, None)
        for folder, measured in zip(pending, stats):
            result = ExportedModel.from_dict(read_json(folder / PENDING_NAME, "pending export record"))
            result = replace(result, measured_ms=measured["ms"], measured=measured, export_anchor=line,
                             measured_statistic=STATISTICS[measured["statistic"]],
                             reanchored_ms=checked.predict_ms(result.subnet.config) if checked else None)
            write_text_atomic(folder / "README.md", model_card(result, shape))
            write_json_atomic(folder / RECORD_NAME, result.to_dict())  # the marker of a finished model
            (folder / PENDING_NAME).unlink()
    done = []
    for out_dir, group in zip(out_dirs, folders):
        done.append([ExportedModel.from_dict(read_json(f / RECORD_NAME, "export record")) for f in group])
        write_export_summary(done[-1], out_dir)
    return done


def _reanchor(table: LatencyTable, subnets: list[SubnetConfig], stats: list[dict], anchor: AnchorSettings,
              seconds: float, slow_state_retries: int = 0) -> tuple[LatencyTable | None, str]:
    """`table` re-anchored on its anchor subnets' measurements (None where no rising line fits them) and the line
    that says how; a residual above the anchor's bound is reported, not refused: the models are measured anyway."""
    try:
        checked = fit_anchor(table, subnets, np.array([s["ms"] for s in stats]), anchor, refuse=False,
                             cpus=stats[0].get("cpus", []), seconds=round(seconds, 1),
                             slow_state_retries=slow_state_retries)
    except TableDoesNotFit as e:
        return None, f"no re-anchoring in the export's rounds: {e}"
    return checked, "in the export's timing rounds, " + anchor_line(checked)


def _export_and_evaluate(ctx: RunContext, evaluator: SubnetEvaluator, record: EvaluatedSubnet, folder: Path,
                         profile: Profile, calibration: list | None, source: dict, fingerprint: dict) -> None:
    """Extract, export and evaluate one subnet; writes its record, still without a measurement, as PENDING_NAME."""
    cfg, table, task, supernet = record.config, ctx.table, ctx.spec.name, evaluator.supernet
    model = supernet.set_active_subnet(cfg).get_active_subnet().eval()
    export_openvino(model, folder, ctx.tokenizer, static_shape=None, calibration_texts=calibration, overwrite=True)
    ir_metrics = evaluator.score(ir_logits(folder, evaluator, runtime_config(profile)))
    torch_metrics = evaluator(cfg)
    predicted = table.predict_ms(cfg) if table is not None else record.latency_ms
    result = ExportedModel(
        name=folder.name, subnet=replace(record, gmacs=cfg.gmacs(supernet.shape, profile.seq_len),
                                         latency_ms=predicted),
        task=task, metric_name=ctx.spec.main_metric, precision=profile.precision,
        measured_ms=0.0, measured_statistic="", measured={},
        ir_dev_metric=ir_metrics["metric"], ir_dev_metrics=ir_metrics, torch_dev_metric=torch_metrics["metric"],
        params=cfg.params(supernet.shape), profile=profile.to_dict(), fingerprint=fingerprint,
        table_fingerprint=table.machine if table is not None else None,
        table_precision=table.profile.precision if table is not None else None, source=source,
        calibration_size=len(calibration) if calibration else 0,
        table_anchor=anchor_line(table) if table is not None else None,
        label_names=() if ctx.spec.qa else tuple(str(model.config.id2label[i])
                                                 for i in range(model.config.num_labels)),
        head=export_task(model))
    write_json_atomic(folder / PENDING_NAME, result.to_dict())


def load_exports(out_dir: str | os.PathLike) -> list[ExportedModel]:
    """The records of a finished export folder."""
    data = read_json(Path(out_dir) / EXPORT_SUMMARY, "export summary")
    return [ExportedModel.from_dict(r) for r in data]


def export_from_search(ctx: RunContext, search_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       budget_ms: float | None = None, budget_gmacs: float | None = None,
                       supernet_dir: str | os.PathLike | None = None, int8: bool = False,
                       calibration_size: int = 300, overwrite: bool = False, progress: bool = True,
                       max_models: int | None = None) -> list[ExportedModel]:
    """`eftnas-hw export --front SEARCH`: the whole front (at most `max_models`, spread along it), or the one
    subnet a budget selects.

    `ctx` carries the task (from the search), the profile and the latency table (by default the search's).
    """
    front, settings = load_search(search_dir)
    if budget_ms is not None or budget_gmacs is not None:
        front = [select_subnet(front, budget_ms, budget_gmacs)]
    elif max_models is not None:
        front = spread_along_front(front, max_models)
    supernet_dir = supernet_dir or settings.get("supernet")
    if not supernet_dir:
        raise UserError(f"{search_dir} does not record its super-network: pass --supernet")
    check_trained_task(Path(supernet_dir) / REPORT_FILE, ctx.spec.name, "super-network")
    supernet, _ = load_supernet(supernet_dir)
    source = {"super-network": str(Path(supernet_dir).resolve()), "search": str(Path(search_dir).resolve()),
              "search objective": f"metric on {settings.get('search_examples')} search-split examples vs "
                                  f"{settings['cost_name']}",
              "selection": (f"best front subnet under {budget_ms} ms" if budget_ms is not None else
                            f"best front subnet under {budget_gmacs} GMACs" if budget_gmacs is not None else
                            f"{len(front)} subnets spread along the Pareto front" if max_models is not None else
                            "whole Pareto front")}
    return export_subnets(ctx, supernet, front, out_dir, int8=int8, calibration_size=calibration_size,
                          source=source, overwrite=overwrite, progress=progress)
