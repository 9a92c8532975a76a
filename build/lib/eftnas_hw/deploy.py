"""Deployable subnets: extract from the super-network, export to OpenVINO IR, then measure what was shipped.

Each exported folder is an HF-style IR (optimum-intel) with *dynamic* [batch, sequence] inputs: real inputs are
far shorter than the profile's length (SST-2 batches pad to ~40 tokens, not 128), and a dynamic IR runs them
at their own length while still reproducing the static-shape latency exactly when reshaped to the profile's
[batch, seq] (which is how its latency is measured here, and how the latency table's blocks were measured).
The dev metric is computed with the IR itself through the OpenVINO runtime, under the profile's precision.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError
from .export import IR_NAME, export_openvino
from .files import read_json, write_json_atomic
from .latency import Profile
from .subnet import SubnetConfig

RECORD_NAME = "eftnas_export.json"
RUN_NAME = "export.json"
# Profile fields that change latency: a table built under other values cannot predict this measurement.
LATENCY_FIELDS = ("device", "threads", "streams", "batch", "seq_len", "hint")


@dataclass(frozen=True)
class ExportSettings:
    """What every model of one export run shares; a resumed run must have the same."""

    task: str
    int8: bool
    calibration_size: int
    max_length: int
    profile: dict
    source: dict  # where the subnets come from (super-network folder, search folder, budget...)


def ir_logits(ir: str | os.PathLike, batches: Sequence[tuple[np.ndarray, dict]], num_examples: int,
              config: dict | None = None) -> np.ndarray:
    """Logits of an IR folder/file over length-sorted batches (index, tensors), in dataset order."""
    from .latency.measure import core

    path = Path(ir)
    path = path / IR_NAME if path.is_dir() else path
    compiled = core().compile_model(core().read_model(str(path)), "CPU", config or {})
    names = {inp.get_any_name() for inp in compiled.inputs}
    logits = None
    for index, batch in batches:
        out = compiled({k: np.asarray(v) for k, v in batch.items() if k in names})[0]
        if logits is None:
            logits = np.zeros((num_examples, out.shape[-1]), dtype=np.float32)
        logits[index] = out
    return logits


def runtime_config(profile) -> dict:
    """The profile's numerics (its precision hint) without its thread limits: dev evaluation is throughput."""
    return {k: v for k, v in profile.ov_config().items() if k == "INFERENCE_PRECISION_HINT"}


def _check_table(table, supernet, profile) -> None:
    table.check_shape(supernet.shape)
    diffs = [f"{f}: table {getattr(table.profile, f)!r}, export {getattr(profile, f)!r}" for f in LATENCY_FIELDS
             if getattr(table.profile, f) != getattr(profile, f)]
    if diffs:
        raise UserError("the latency table was measured under another profile, its predictions cannot be "
                        "compared with this measurement: " + "; ".join(diffs))


def export_subnets(supernet, configs: Sequence[SubnetConfig | dict], out_dir: str | os.PathLike, tokenizer,
                   profile, task: str, data_dir: str | os.PathLike | None, int8: bool = False, table=None,
                   calibration_size: int = 300, max_length: int = 128, batch_size: int = 64,
                   source: dict | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Export each subnet (a SubnetConfig or a search record with 'config') to out_dir/subnet-NN/, resumably.

    Per model: extract (no fine-tuning), export (dynamic shapes, optional NNCF INT8 calibrated on training
    sentences), measure latency under `profile`, evaluate the IR and the PyTorch subnet on the dev set, write
    README.md (model card) and eftnas_export.json. Writes out_dir/summary.{json,csv}; returns the records.
    """
    from datasets import DatasetDict
    from tqdm.auto import tqdm

    from .data import calibration_texts, compute_metrics, load_task, task_spec, tokenize_task
    from .latency import hardware_fingerprint, measure_ir_ms, statistic_for
    from .supernet import length_batches, evaluate_subnets

    spec = task_spec(task)
    if supernet.shape.num_labels != spec.num_labels:
        raise UserError(f"the super-network has {supernet.shape.num_labels} outputs, task {task} needs "
                        f"{spec.num_labels}")
    if table is not None:
        _check_table(table, supernet, profile)
    records = [c if isinstance(c, dict) else {"config": c.to_dict()} for c in configs]
    if not records:
        raise UserError("no subnets to export")
    for r in records:
        SubnetConfig.from_dict(r["config"]).validate(supernet.shape)
    if int8 or profile.precision == "int8":  # an INT8 profile measures INT8 models, and those carry no hint
        int8, profile = True, replace(profile, precision="int8")
    out_dir = Path(out_dir)
    settings = ExportSettings(task, int8, calibration_size, max_length, profile.to_dict(), source or {})
    run = {**asdict(settings), "subnets": [r["config"] for r in records]}
    if overwrite:
        shutil.rmtree(out_dir, ignore_errors=True)
    elif (out_dir / RUN_NAME).exists():
        if read_json(out_dir / RUN_NAME, "export run record") != run:
            raise UserError(f"{out_dir} holds an export with other settings (pass --overwrite to replace it)")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"output folder {out_dir} exists (pass --overwrite to replace it)")
    write_json_atomic(out_dir / RUN_NAME, run)

    dev = DatasetDict(validation=load_task(task, data_dir)["validation"])
    data = tokenize_task(dev, tokenizer, task, max_length)["validation"]
    batches = length_batches(data, batch_size, tokenizer.pad_token_id or 0)
    labels = np.asarray(data["label"])
    calibration = calibration_texts(task, data_dir, calibration_size) if int8 else None
    fingerprint = hardware_fingerprint(profile)
    statistic = statistic_for(profile)  # the one the latency tables are built and validated with

    done = []
    for i, record in enumerate(tqdm(records, desc="export", unit="model", disable=not progress)):
        folder = out_dir / f"subnet-{i:02d}"
        previous = folder / RECORD_NAME
        if previous.exists():  # finished by an interrupted run with the same settings (checked above)
            done.append(read_json(previous, "export record"))
            continue
        cfg = SubnetConfig.from_dict(record["config"])
        model = supernet.set_active_subnet(cfg).get_active_subnet().eval()
        export_openvino(model, folder, tokenizer, static_shape=None, calibration_texts=calibration, overwrite=True)
        measured = measure_ir_ms(folder, profile)
        ir_metrics = compute_metrics(task, ir_logits(folder, batches, len(data), runtime_config(profile)), labels)
        torch_metrics = evaluate_subnets(supernet, [cfg], data, task, batch_size)[0]
        predicted = table.predict_ms(cfg) if table is not None else record.get("latency_ms")
        result = {
            "name": folder.name, "config": cfg.to_dict(), "precision": profile.precision,
            "metric_name": spec.main_metric,
            "predicted_ms": predicted, "measured_ms": measured[statistic], "measured_statistic": statistic,
            "measured": measured,
            "ir_dev_metric": ir_metrics["metric"], "ir_dev_metrics": ir_metrics,
            "torch_dev_metric": torch_metrics["metric"], "search_metric": record.get("metric"),
            f"gmacs@{profile.seq_len}": cfg.gflops(supernet.shape, profile.seq_len),
            "params": cfg.params(supernet.shape), "task": task, "profile": profile.to_dict(),
            "fingerprint": fingerprint, "table_fingerprint": table.fingerprint if table is not None else None,
            "table_precision": table.profile.precision if table is not None else None,
            "source": settings.source, "calibration_size": calibration_size if int8 else 0}
        _write_text(folder / "README.md", model_card(result, supernet.shape))
        write_json_atomic(previous, result)
        done.append(result)
    write_summary(done, out_dir)
    return done


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(records: Sequence[dict], out_dir: Path) -> None:
    """summary.json (full records) and summary.csv (one line per model) with the prediction error."""
    rows = []
    for r in records:
        error = 100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] if r["predicted_ms"] else None
        rows.append({"name": r["name"], "precision": r["precision"], "predicted_ms": r["predicted_ms"],
                     "measured_ms": r["measured_ms"], "prediction_error_pct": error,
                     "ir_dev_metric": r["ir_dev_metric"], "torch_dev_metric": r["torch_dev_metric"],
                     "search_metric": r["search_metric"],
                     "heads": " ".join(map(str, r["config"]["heads"])), "ffn": " ".join(map(str, r["config"]["ffn"]))})
    write_json_atomic(out_dir / "summary.json", list(records))
    tmp = out_dir / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "summary.csv")


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def model_card(r: dict, shape) -> str:
    """README.md of one exported folder: what it is, how good and fast it measured, how it was made."""
    p, cfg, m = r["profile"], r["config"], r["measured"]
    seq = p["seq_len"]
    widths = "\n".join(f"| {i} | {h} | {f} |" for i, (h, f) in enumerate(zip(cfg["heads"], cfg["ffn"])))
    source = "\n".join(f"- {k}: `{v}`" for k, v in r["source"].items()) or "- (not recorded)"
    int8 = (f"NNCF post-training INT8 quantization (transformer preset) calibrated on {r['calibration_size']} "
            f"training inputs of {r['task']}" if r["precision"] == "int8" else
            f"f32 weights, no quantization, run in {r['precision']}")
    fp = r["fingerprint"]
    ov_config = {k: str(v) for k, v in Profile.from_dict(p).ov_config().items()}
    table_precision = r["table_precision"]
    predicted = "predicted latency (latency table" + (
        f", for the {table_precision} model)" if table_precision not in (None, r["precision"]) else ")")
    measured = (f"{r['measured_ms']:.2f} ms ({m['min']:.2f} / {m['p10']:.2f} / {m['median']:.2f})"
                + (" UNSTABLE (noisy machine)" if m["unstable"] else ""))
    table_fp = ("the latency table was measured on the same CPU/OpenVINO" if r["table_fingerprint"] is None
                or {k: v for k, v in r["table_fingerprint"].items() if k != "profile"}
                == {k: v for k, v in fp.items() if k != "profile"} else
                f"the latency table was measured elsewhere: `{r['table_fingerprint']}`")
    return f"""# {r['name']}: EFTNAS-HW subnet for {r['task']} ({r['precision']}, OpenVINO IR)

A BERT subnet extracted from a weight-sharing super-network (base model: {shape.describe()}) and exported
unchanged (no fine-tuning after extraction, as in EFTNAS) to an OpenVINO IR through optimum-intel.

| | |
|---|---|
| task | {r['task']} |
| dev {r['metric_name']} of this IR (OpenVINO runtime) | {_fmt(r['ir_dev_metric'])} |
| dev {r['metric_name']} of the same subnet in PyTorch (super-network) | {_fmt(r['torch_dev_metric'])} |
| search-split {r['metric_name']} (the NSGA-II objective) | {_fmt(r['search_metric'])} |
| {predicted} | {_fmt(r['predicted_ms'], '.2f')} ms |
| measured latency, {r['measured_statistic']} (wall min / p10 / median) | {measured} |
| GMACs at sequence length {seq} | {r[f'gmacs@{seq}']:.4g} |
| parameters | {r['params']:,} |
| precision | {int8} |

Dev metrics: all GLUE dev examples of the task, batched (length-sorted, padded per batch) with dynamic shapes.

## Per-layer widths (0 = sub-block removed, residual path only)
| layer | attention heads (of {shape.num_heads}) | FFN width (of {shape.intermediate_size}) |
|---|---|---|
{widths}

## Latency
Measured with the profile's protocol (`eftnas_hw.latency.measure_ir_ms`): compiled with the profile's OpenVINO
settings, warmed up, {m['n']} timed calls; reported: `{r['measured_statistic']}`, the statistic the latency tables
are built and validated with (`cpu_min` = least process CPU time of a call, which with one inference thread is
its undisturbed wall time even on a busy machine; `min` = least wall time).

- profile: `{p}`
- machine fingerprint: `{ {k: v for k, v in fp.items() if k != 'profile'} }`
- {table_fp}

## Input shapes
The IR has **dynamic** `[batch, sequence]` inputs, so it runs each request at its real length (much cheaper than
padding to {seq}). Its latency above was measured after reshaping it to the profile's static
`[{p['batch']}, {seq}]`, which is exactly the graph a static export produces. To serve fixed shapes, reshape once
after loading (`model.reshape({p['batch']}, {seq})` in optimum-intel, `ov.Model.reshape` in OpenVINO).

## How it was made
{source}
- extraction: `ElasticBert.set_active_subnet(cfg).get_active_subnet()` (physically smaller layers)
- export: `optimum.exporters.openvino.export_from_model` (text-classification), {int8}

## Use
The settings below are the ones measured above. Without them OpenVINO picks its own threads and, on CPUs with
AMX or AVX512-BF16, runs an f32 IR in bf16 (faster, slightly different logits).

```python
from optimum.intel import OVModelForSequenceClassification
from transformers import AutoTokenizer
model = OVModelForSequenceClassification.from_pretrained("{r['name']}", ov_config={ov_config})
tokenizer = AutoTokenizer.from_pretrained("{r['name']}")
```
"""


def export_from_search(search_dir: str | os.PathLike, out_dir: str | os.PathLike, budget_ms: float | None = None,
                       budget_gflops: float | None = None, supernet_dir: str | os.PathLike | None = None,
                       profile: str | os.PathLike | None = None, table_path: str | os.PathLike | None = None,
                       force: bool = False, data_dir: str | os.PathLike | None = None, int8: bool = False,
                       calibration_size: int = 300, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """`eftnas-hw export --front SEARCH`: the whole front, or the one subnet a budget selects.

    The super-network, latency table and data folder default to the ones the search used; the profile defaults
    to the table's (a search on GMACs has no table, so it needs an explicit profile).
    """
    from .latency import LatencyTable
    from .models import load_tokenizer
    from .search import load_search, select_subnet
    from .supernet import load_supernet

    front, settings = load_search(search_dir)
    if budget_ms is not None or budget_gflops is not None:
        front = [select_subnet(front, budget_ms, budget_gflops)]
    supernet_dir = supernet_dir or settings.get("supernet")
    if not supernet_dir:
        raise UserError(f"{search_dir} does not record its super-network: pass --supernet")
    supernet, space = load_supernet(supernet_dir)
    table_path = table_path or settings.get("table_path")
    table = LatencyTable.load(table_path, force=force) if table_path else None
    if profile is not None:
        profile = Profile.load(profile)
    elif table is not None:
        profile = table.profile
    else:
        raise UserError("no latency table to take the deployment profile from: pass --profile")
    task = settings["cache_key"]["task"]
    source = {"super-network": str(Path(supernet_dir).resolve()), "search": str(Path(search_dir).resolve()),
              "search objective": f"metric on {settings.get('search_examples')} search-split examples vs "
                                  f"{settings['cost_name']}",
              "selection": (f"best front subnet under {budget_ms} ms" if budget_ms is not None else
                            f"best front subnet under {budget_gflops} GMACs" if budget_gflops is not None else
                            "whole Pareto front")}
    return export_subnets(supernet, front, out_dir, load_tokenizer(supernet_dir), profile, task,
                          data_dir or settings.get("data_dir"), int8=int8, table=table,
                          calibration_size=calibration_size, max_length=settings["cache_key"]["max_length"],
                          source=source, overwrite=overwrite, progress=progress)
