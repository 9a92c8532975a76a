import json
import logging
import warnings

import numpy as np
import openvino as ov
import pytest
import torch

from eftnas_hw.cli import main
from eftnas_hw.export import export_openvino
from eftnas_hw.latency import compile_ir
from eftnas_hw.models import build_subnet, load_model, load_tokenizer
from eftnas_hw.subnet import BertShape, SubnetConfig

SENTENCES = ["a gripping, beautifully acted film", "the plot goes nowhere and the jokes fall flat"]
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def torch_logits(model, enc):
    with torch.no_grad():
        return model.eval()(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()


def test_cli_export_subnet_matches_pytorch(tiny_model_dir, tmp_path):
    from optimum.intel import OVModelForSequenceClassification

    cfg = SubnetConfig((3, 0), (0, 96))
    cfg.save(tmp_path / "s.json")
    out = tmp_path / "ir"
    assert main(["export", "--model", str(tiny_model_dir), "--subnet", str(tmp_path / "s.json"),
                 "--out", str(out)]) == 0
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["eftnas_subnet"] == cfg.to_dict()
    tok = load_tokenizer(out)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ir = OVModelForSequenceClassification.from_pretrained(out, ov_config=F32)
    expected = torch_logits(build_subnet(load_model(tiny_model_dir), cfg), enc)
    np.testing.assert_allclose(ir(**enc).logits, expected, atol=1e-4)


def test_export_without_the_trace_check_writes_the_same_graph(tiny_model_dir, tmp_path, monkeypatch):
    """`_unchecked_trace` skips torch.jit.trace's second run; the graph (ops, shapes, weights) must be the one the
    checked trace gives, and optimum's own list must be left as it was."""
    import contextlib

    from optimum.exporters.openvino import utils

    from eftnas_hw import export

    before = utils.SKIP_CHECK_TRACE_MODELS
    model = build_subnet(load_model(tiny_model_dir), SubnetConfig((3, 0), (0, 96)))
    export_openvino(model, tmp_path / "unchecked", static_shape=(1, 16))
    assert utils.SKIP_CHECK_TRACE_MODELS is before and "bert" not in before
    monkeypatch.setattr(export, "_unchecked_trace", lambda model: contextlib.nullcontext())
    export_openvino(model, tmp_path / "checked", static_shape=(1, 16))

    def graph(name):
        ir = ov.Core().read_model(tmp_path / name / "openvino_model.xml")
        return [(op.get_type_name(), [str(o.get_partial_shape()) for o in op.outputs()]) for op in ir.get_ordered_ops()]

    assert graph("unchecked") == graph("checked")
    assert (tmp_path / "unchecked" / "openvino_model.bin").read_bytes() == \
        (tmp_path / "checked" / "openvino_model.bin").read_bytes()


@pytest.mark.parametrize("consent", ["recorded opt-in", "never asked"])
def test_export_forks_no_telemetry_senders_without_recorded_consent(tiny_model_dir, tmp_path, monkeypatch, consent):
    """openvino_telemetry sends every event from a forked copy of the process (3x slower exports); an export or
    INT8 quantization sends nothing unless the user opted in, and the sender is restored afterwards."""
    import multiprocessing
    import time

    from openvino_telemetry import Telemetry
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    from openvino_telemetry.utils.sender import TelemetrySender

    opted_in = consent == "recorded opt-in"
    result = ConsentCheckResult.ACCEPTED if opted_in else ConsentCheckResult.NO_FILE
    monkeypatch.setattr(OptInChecker, "check", lambda self, *args, **kwargs: result)
    monkeypatch.delenv("CI", raising=False)  # ovc and NNCF send nothing in CI jobs anyway
    sent, send = [], TelemetrySender.send
    monkeypatch.setattr(multiprocessing.Process, "start", lambda self: sent.append(self))  # nothing really sent
    try:  # the process-wide singleton decides consent when an app (ovc, nncf) re-initializes it: make ovc do so
        monkeypatch.setattr(Telemetry().backend, "app_name", "another app")
    except RuntimeError:  # not created yet: the export creates it
        pass
    model = build_subnet(load_model(tiny_model_dir), SubnetConfig((3, 0), (0, 96)))
    export_openvino(model, tmp_path / "ir", load_tokenizer(tiny_model_dir), static_shape=(1, 16),
                    calibration_texts=SENTENCES)
    deadline = time.time() + 30
    while Telemetry().sender.queue_size and time.time() < deadline:  # events go out from a thread pool
        time.sleep(0.05)
    assert TelemetrySender.send is send
    assert (len(sent) > 0) == opted_in, f"{len(sent)} telemetry processes started ({consent})"


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def export_cli_output(tiny_model_dir, tmp_path, capfd) -> str:
    """All an `eftnas-hw export` of a subnet prints: what reaches the file descriptors (C++ logs, print), what
    its libraries log (their handlers may hold a stream pytest swapped out, so records are collected at the
    loggers as well) and every Python warning it lets through (pytest would collect those out of sight)."""
    from transformers.utils import logging as hf_logging

    SubnetConfig((2, 4), (64, 128)).save(tmp_path / "s.json")
    hf_logging.warning_once.cache_clear()  # both transformers lines are warning_once: show them again if let out
    handler = _Lines()
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # transformers does not propagate
    for logger in loggers:
        logger.addHandler(handler)
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["export", "--model", str(tiny_model_dir), "--subnet", str(tmp_path / "s.json"),
                         "--out", str(tmp_path / "quiet")]) == 0
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    captured = capfd.readouterr()
    shown = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught]
    return "\n".join([captured.out, captured.err, *handler.lines, *shown])


def test_cli_export_prints_no_tracing_noise(tiny_model_dir, tmp_path, capfd):
    output = export_cli_output(tiny_model_dir, tmp_path, capfd)
    assert "wrote" in output  # the capture works: the command's own line is there
    for noise in ("loss_type=None", "cache_position", "TracerWarning"):
        assert noise not in output, f"{noise!r} printed by the export:\n{output}"


def test_static_shape_and_int8(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    export_openvino(model, tmp_path / "f32", tok, static_shape=(1, 32))
    export_openvino(model, tmp_path / "int8", tok, static_shape=(1, 32), calibration_texts=SENTENCES * 4)
    enc = tok(SENTENCES[:1], padding="max_length", max_length=32, return_tensors="np")
    results = {}
    for name in ("f32", "int8"):
        ir = ov.Core().read_model(tmp_path / name / "openvino_model.xml")
        assert all(list(inp.get_partial_shape().to_shape()) == [1, 32] for inp in ir.inputs)
        results[name] = compile_ir(ir, F32)({k: v for k, v in enc.items()})[0]
        ops = {op.get_type_name() for op in ir.get_ops()}
        assert ("FakeQuantize" in ops) == (name == "int8")
    np.testing.assert_allclose(results["f32"], torch_logits(model, enc), atol=1e-4)
    assert np.abs(results["int8"] - results["f32"]).max() < 0.5


def test_int8_statistics_are_reduced_in_numpy_only_for_few_samples(tiny_model_dir, tmp_path, monkeypatch):
    """Timing's one random sample skips compiling NNCF's instrumented graph; deployment's hundreds of sentences keep
    NNCF's in-graph reductions (2.5x faster there, `nncf_int8`). Both still give a quantized IR."""
    import nncf

    from eftnas_hw import export

    inplace, real = [], nncf.quantize
    monkeypatch.setattr(nncf, "quantize", lambda *a, advanced_parameters, **k: inplace.append(
        advanced_parameters.inplace_statistics) or real(*a, advanced_parameters=advanced_parameters, **k))
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    many = SENTENCES * (export.NUMPY_STATISTICS_MAX_SAMPLES // len(SENTENCES) + 1)
    for name, texts in (("one", SENTENCES[:1]), ("many", many)):
        export_openvino(model, tmp_path / name, tok, static_shape=(1, 16), calibration_texts=texts)
        ops = {op.get_type_name() for op in ov.Core().read_model(tmp_path / name / "openvino_model.xml").get_ops()}
        assert "FakeQuantize" in ops
    assert inplace == [False, True]


@pytest.mark.parametrize("subnet, message", [
    ({"heads": [5, 4], "ffn": [128, 128]}, "layer 0: 5 heads, the model allows 0..4"),
    ({"heads": [4, 4, 4], "ffn": [128, 128, 128]}, "subnet has 3 layers, the model has 2"),
    ({"heads": [4]}, "not a subnet config"),
])
def test_cli_bad_subnet_exits_2(tiny_model_dir, tmp_path, capsys, subnet, message):
    (tmp_path / "s.json").write_text(json.dumps(subnet))
    assert main(["export", "--model", str(tiny_model_dir), "--subnet", str(tmp_path / "s.json"),
                 "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ir").exists()


def test_cli_refuses_existing_output_and_bad_models(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "ir").mkdir()
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "ir")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "model not found" in capsys.readouterr().err
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert main(["info", "--model", str(tmp_path / "roberta")]) == 2
    assert "supported families" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "y"), "--static-shape", "1x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--static-shape expects BATCHxSEQ" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "y").exists()


def test_cli_info_counts_the_subnet(tiny_model_dir, tmp_path, capsys):
    SubnetConfig((2, 0), (64, 0)).save(tmp_path / "s.json")
    assert main(["info", "--model", str(tiny_model_dir), "--subnet", str(tmp_path / "s.json")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["subnet"] == {"heads": [2, 0], "ffn": [64, 0]}
    shape = BertShape.from_config(load_model(tiny_model_dir).config)
    assert info["params"] == SubnetConfig((2, 0), (64, 0)).params(shape) < shape.full_subnet().params(shape)
