"""Export a (sub)network through optimum-intel to an HF-style OpenVINO IR folder, optionally INT8 with NNCF.

The in-memory model is exported (`export_from_model`): exporting from a folder would re-create the model
from config.json, which knows nothing of per-layer widths.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import openvino as ov
from torch import nn
from transformers import PreTrainedTokenizerBase

from .files import atomic_output_dir
from .models import is_qa_model

IR_NAME = "openvino_model.xml"
# At most this many calibration samples are reduced in numpy rather than in NNCF's graph (`nncf_int8`).
NUMPY_STATISTICS_MAX_SAMPLES = 8


def export_task(model: nn.Module) -> str:
    """optimum's task name for the model's head (what `OVModelFor...` loads the IR as)."""
    return "question-answering" if is_qa_model(model.config) else "text-classification"


def export_openvino(model: nn.Module, out: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None,
                    static_shape: tuple[int, int] | None = None,
                    calibration_texts: Sequence[str | tuple[str, str]] | None = None,
                    overwrite: bool = False) -> Path:
    """Write openvino_model.xml/.bin + config.json (+ tokenizer) to `out` atomically.

    static_shape=(batch, seq) fixes the input shapes (what latency work measures); None keeps them dynamic.
    calibration_texts (sentences or sentence pairs; QA: question and context) turn on NNCF post-training INT8
    quantization.
    """
    from optimum.exporters.openvino import export_from_model

    with atomic_output_dir(out, overwrite) as tmp, telemetry_only_with_consent():
        model = model.eval()
        with _quiet_export(), _unchecked_trace(model), _frozen_gc():
            export_from_model(model, output=tmp, task=export_task(model))
        if static_shape is not None or calibration_texts:  # else optimum's IR is already the one to ship
            ir = ov.Core().read_model(tmp / IR_NAME)
            if static_shape is not None:
                ir.reshape({inp.get_any_name(): list(static_shape) for inp in ir.inputs})
            if calibration_texts:
                if tokenizer is None:
                    raise ValueError("INT8 calibration needs the tokenizer")
                ir = quantize_int8(ir, tokenizer, calibration_texts, static_shape)
            # read_model memory-maps the .bin: write beside it and rename, never overwrite it in place.
            ov.save_model(ir, tmp / "rewritten.xml", compress_to_fp16=False)
            for ext in (".xml", ".bin"):
                os.replace(tmp / f"rewritten{ext}", (tmp / IR_NAME).with_suffix(ext))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)


def quantize_int8(ir: ov.Model, tokenizer: PreTrainedTokenizerBase,
                  texts: Sequence[str | tuple[str, str]], static_shape: tuple[int, int] | None) -> ov.Model:
    """NNCF post-training quantization with the transformer preset on tokenized calibration texts."""
    import nncf

    names = {inp.get_any_name() for inp in ir.inputs}
    padding = dict(padding="max_length", max_length=static_shape[1]) if static_shape else dict(padding=True)

    def encode(text: str | tuple[str, str]) -> dict:
        pair = (text,) if isinstance(text, str) else tuple(text)
        enc = tokenizer(*pair, truncation=True, return_tensors="np", **padding)
        return {k: v for k, v in enc.items() if k in names}

    return nncf_int8(ir, nncf.Dataset(list(texts), encode), len(texts))


def nncf_int8(ir: ov.Model, dataset, samples: int, bias_correction: bool = True) -> ov.Model:
    """`nncf.quantize` with the transformer preset, the one INT8 recipe of deployment and timing alike. Timing may
    skip the bias correction (`bias_correction=False`): it changes bias values, not the graph (a random MiniLM-L6
    with non-zero biases: the same 811 ops either way, 5.5-5.7 s against 3.2 s per quantization on the AVX2 EPYC).

    Where statistics are reduced depends on how many samples feed them (measured on the AVX2 EPYC, MiniLM-L6):
    NNCF's in-graph reductions grow the model to ~900 ops whose compilation costs a fixed 2.1-2.6 s, cheap per sample
    after; reduced in numpy (`inplace_statistics=False`) the fixed cost goes and each sample costs more. Timing's one
    random sample: 5.7 -> 3.8-4.1 s, the same quantizers with bit-identical ranges. Whole exports calibrated on SST-2
    sentences, numpy against graph: 4 sentences 6.7 against 7.7-8.1 s, 8: 7.3-8.1 against 8.9-9.4 s, 16 numpy 10.2 s
    against 17 in the graph 9.0 s, 300: 42-50 against 17-20 s. So numpy up to NUMPY_STATISTICS_MAX_SAMPLES samples.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    logging.getLogger("nncf").setLevel(logging.ERROR)
    advanced = AdvancedQuantizationParameters(inplace_statistics=samples > NUMPY_STATISTICS_MAX_SAMPLES,
                                              disable_bias_correction=not bias_correction)
    return nncf.quantize(ir, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=samples,
                         advanced_parameters=advanced)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence what tracing a BERT classifier prints and nobody can act on: transformers' `loss_type=None ...
    ForCausalLMLoss` and `cache_position` deprecation lines (its own logger), torch's TracerWarnings from the
    mask utilities, and optimum/nncf/OpenVINO info logs. Only here, for the export call; nothing is filtered
    globally."""
    import torch
    from transformers.utils import logging as hf_logging

    for name in ("optimum", "nncf", "openvino"):
        logging.getLogger(name).setLevel(logging.ERROR)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _unchecked_trace(model: nn.Module) -> Iterator[None]:
    """Export without torch.jit.trace's check run, as optimum-intel already does for its SKIP_CHECK_TRACE_MODELS.

    The check traces the model a second time and compares outputs: 0.3-0.7 s per MiniLM-L6 export (AVX2 EPYC,
    measured when an export took ~4 s, before `telemetry_only_with_consent`), paid by every model a latency table, a
    re-anchoring and an export stage converts. A BERT classifier in eval mode traces deterministically (no dropout,
    no data-dependent control flow), and every exported IR is evaluated on the dev set against its PyTorch model
    anyway (`deploy.export_subnets`), which catches a wrong graph where it matters.
    optimum reads the tuple at call time; it is restored afterwards.
    """
    from optimum.exporters.openvino import utils

    saved = utils.SKIP_CHECK_TRACE_MODELS
    utils.SKIP_CHECK_TRACE_MODELS = (*saved, model.config.model_type)
    try:
        yield
    finally:
        utils.SKIP_CHECK_TRACE_MODELS = saved


@contextlib.contextmanager
def telemetry_only_with_consent() -> Iterator[None]:
    """OpenVINO's converter and NNCF send usage events only where the user recorded consent (`opt_in_out --opt_in`).

    Why: both treat a machine where nobody was ever asked (no consent file: fresh installs, containers, CI) as
    consenting, and `openvino_telemetry` sends each event from a forked copy of the whole Python process, ~37 forks
    per conversion. On the AVX2 EPYC that was two thirds of a MiniLM-L6 export in a bare process (3.46 s -> 1.11 s
    per export without it) and 80% in a process holding 4 GiB (6.74 s -> 1.33 s): page tables copied per fork,
    copy-on-write faults after. A recorded opt-in is respected (events are sent as OpenVINO sends them); otherwise
    the sender is a no-op inside this block only, so telemetry of the user's own OpenVINO calls is untouched.
    """
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:  # no telemetry package: OpenVINO uses its stub, nothing is sent
        yield
        return
    if OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.ACCEPTED:
        yield
        return
    send = TelemetrySender.send
    TelemetrySender.send = lambda self, backend, message: None
    try:
        yield
    finally:
        TelemetrySender.send = send


@contextlib.contextmanager
def _frozen_gc() -> Iterator[None]:
    """Everything alive before the export is left out of the garbage collections optimum runs during it.

    optimum-intel calls `gc.collect()` around every conversion to free the traced graph; each full collection walks
    every object the process holds (torch, transformers, datasets, the run's own state): 0.3-0.7 s per MiniLM-L6
    export in a bare process (AVX2 EPYC), the more the more objects a process holds. Objects created by the export
    itself are still collected; frozen ones are returned to the collector afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
