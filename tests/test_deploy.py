"""Export of searched subnets: the IR reproduces the super-network's subnet, is measured, carded and resumable."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import openvino as ov
import pytest
import torch

from eftnas_hw import deploy
from eftnas_hw.context import RunContext
from eftnas_hw.data import glue_spec, load_task, tokenize
from eftnas_hw.deploy import ExportedModel, export_subnets, load_exports
from eftnas_hw.elastic import ElasticBert
from eftnas_hw.errors import UserError
from eftnas_hw.evaluate import Evaluator, ir_logits
from eftnas_hw.latency import LatencyTable, Profile
from eftnas_hw.latency.anchor import anchor_models
from eftnas_hw.latency.slow_state import SLOW_STATE_FACTOR, STATE_RETRIES
from eftnas_hw.models import load_model, load_tokenizer
from eftnas_hw.settings import AnchorSettings, RunConfig
from eftnas_hw.subnet import SubnetConfig

from conftest import table_document

PROFILE = Profile(name="tiny", threads=1, batch=1, seq_len=16, precision="f32")
SUBNETS = [SubnetConfig((1, 4), (32, 128)), SubnetConfig((0, 2), (64, 0))]
WORDS = "good bad great awful fine boring lovely dull superb terrible film plot acting".split()


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    """A tiny SST-2 folder in the GLUE TSV layout (train + dev)."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train.tsv", 40), ("dev.tsv", 24)):
        lines = ["sentence\tlabel"] + [" ".join(rng.choice(WORDS, rng.integers(2, 12))) + f"\t{i % 2}"
                                       for i in range(n)]
        (root / "SST-2" / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def supernet(tiny_model_dir):
    return ElasticBert(load_model(tiny_model_dir)).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def synthetic_table(shape, profile=PROFILE):
    return LatencyTable(table_document(shape, profile, 0.2, [0.1 * h for h in range(shape.num_heads + 1)],
                                       [0, shape.intermediate_size // 2, shape.intermediate_size], [0.0, 0.15, 0.3]))


def make_ctx(model_dir, data_dir, table=None, profile=PROFILE) -> RunContext:
    """The run context an export runs under: task data, tokenizer, the profile measured under and the table."""
    ctx = RunContext(RunConfig(model=str(model_dir), task="sst2", data_dir=str(data_dir), max_length=16))
    ctx.profile, ctx.table = profile, table
    return ctx


@pytest.fixture(scope="module")
def exported(supernet, tiny_model_dir, sst2_dir, tiny_shape, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "front"
    ctx = make_ctx(tiny_model_dir, sst2_dir, synthetic_table(tiny_shape))
    records = export_subnets(ctx, supernet, SUBNETS, out, progress=False, source={"supernet": "tiny"})
    return out, records


def test_exported_ir_reproduces_the_supernet_subnet(exported, supernet, tokenizer, sst2_dir):
    out, records = exported
    dev = tokenize(load_task("sst2", sst2_dir)["validation"], tokenizer, glue_spec("sst2"), 16)
    evaluator = Evaluator(dev, glue_spec("sst2"), 8, tokenizer.pad_token_id)
    for cfg, record in zip(SUBNETS, records):
        assert isinstance(record, ExportedModel)
        folder = out / record.name
        supernet.set_active_subnet(cfg)
        with torch.inference_mode():
            expected = np.zeros((len(dev), 2), dtype=np.float32)
            for index, batch in evaluator.batches:
                expected[index] = supernet(**batch).logits.numpy()
        got = ir_logits(folder, evaluator, {"INFERENCE_PRECISION_HINT": "f32"})
        np.testing.assert_allclose(got, expected, atol=1e-4)
        # dynamic shapes: batches of different length and size ran through the same IR
        assert ov.Core().read_model(folder / "openvino_model.xml").inputs[0].get_partial_shape().is_dynamic
        assert record.ir_dev_metric == pytest.approx(record.torch_dev_metric)
        assert record.subnet.config == cfg


def test_records_card_and_summary(exported, tiny_shape):
    out, records = exported
    table = synthetic_table(tiny_shape)
    for cfg, record in zip(SUBNETS, records):
        assert record.subnet.latency_ms == pytest.approx(table.predict_ms(cfg))
        assert record.measured_ms > 0 and record.measured_ms == record.measured["ms"]
        card = (out / record.name / "README.md").read_text()
        for text in ("sst2", f"| 1 | {cfg.heads[1]} | {cfg.ffn[1]} |", "dynamic", "benchmark_app -m openvino_model.xml",
                     "'seq_len': 16",
                     f"{record.measured_ms:.2f} ms"):
            assert text in card
        assert record.reanchored_ms > 0 and record.export_anchor.startswith("in the export's timing rounds, table "
                                                                            "re-anchored on this machine")
        assert f"re-anchored in this export's timing rounds | {record.reanchored_ms:.2f} ms" in card
        assert f"median {record.measured['median']:.2f}" in card
        cpus = record.measured["cpus"]  # on a machine with more CPUs than the profile's threads: bound, and said so
        assert (f"taskset -c {','.join(map(str, cpus))} benchmark_app" in card) if cpus else ("OpenVINO pinned" in card)
        stored = json.loads((out / record.name / "eftnas_export.json").read_text())
        assert stored == record.to_dict() and ExportedModel.from_dict(stored) == record
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(SUBNETS) and "prediction_error_pct" in summary[0]
    assert load_exports(out) == records


def test_model_card_snippet_loads_the_ir_as_measured(exported, supernet, tokenizer, monkeypatch):
    out, records = exported
    record, cfg = records[0], SUBNETS[0]
    card = (out / record.name / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(out)  # the card names its folder relative to where it is used
    scope = {}
    exec(snippet, scope)
    batch = scope["tokenizer"](["a fine, moving film", "dull"], padding=True, return_tensors="pt")
    supernet.set_active_subnet(cfg)
    with torch.inference_mode():
        expected = supernet(**batch).logits.numpy()
    # f32 as measured: OpenVINO's bf16 default on AMX CPUs differs by ~2e-4 here
    np.testing.assert_allclose(scope["model"](**batch).logits.numpy(), expected, atol=1e-5)


def test_rerun_resumes_without_exporting_again(exported, supernet, tiny_model_dir, sst2_dir, tiny_shape,
                                               monkeypatch):
    out, records = exported
    monkeypatch.setattr(deploy, "export_openvino", lambda *a, **k: pytest.fail("re-exported a finished model"))
    ctx = make_ctx(tiny_model_dir, sst2_dir, synthetic_table(tiny_shape))
    again = export_subnets(ctx, supernet, SUBNETS, out, progress=False, source={"supernet": "tiny"})
    assert again == records
    with pytest.raises(UserError, match="other settings"):
        export_subnets(make_ctx(tiny_model_dir, sst2_dir), supernet, SUBNETS[:1], out, progress=False)


def test_two_export_folders_are_timed_in_one_measurement(exported, tiny_shape, tmp_path, monkeypatch):
    """A run's base model and its front (`measure_exports`): the pending models of both folders share one
    interleaved measurement, each folder gets its records and summary; folders of other profiles are refused."""
    out, records = exported
    folders = [tmp_path / "base", tmp_path / "front"]
    for folder in folders:
        shutil.copytree(out, folder)
        for record in records:
            (folder / record.name / deploy.RECORD_NAME).rename(folder / record.name / deploy.PENDING_NAME)
    calls, real = [], deploy.measure_compiled
    monkeypatch.setattr(deploy, "measure_compiled", lambda paths, *a, **k: calls.append(paths) or real(paths, *a, **k))
    base, front = deploy.measure_exports(folders, tiny_shape, progress=False)
    assert [[(p.parent.parent.name, p.parent.name) for p in paths] for paths in calls] == [
        [(f.name, r.name) for f in folders for r in records]]
    for folder, done in zip(folders, (base, front)):
        assert [d.name for d in done] == [r.name for r in records] and all(d.measured_ms > 0 for d in done)
        assert [m.name for m in load_exports(folder)] == [r.name for r in records]
    run = json.loads((folders[1] / deploy.RUN_NAME).read_text())
    (folders[1] / deploy.RUN_NAME).write_text(json.dumps({**run, "profile": {**run["profile"], "threads": 2}}))
    with pytest.raises(UserError, match="share a profile"):
        deploy.measure_exports(folders, tiny_shape, progress=False)


def test_models_exported_but_not_measured_are_timed_together_on_resume(exported, supernet, tiny_model_dir, sst2_dir,
                                                                       tiny_shape, tmp_path, monkeypatch):
    """A kill between export and measurement leaves pending records: a rerun exports nothing again and times the
    pending models together, in one interleaved measurement."""
    out, records = exported
    copy = tmp_path / "front"
    shutil.copytree(out, copy)
    for record in records:
        (copy / record.name / deploy.RECORD_NAME).rename(copy / record.name / deploy.PENDING_NAME)
    monkeypatch.setattr(deploy, "export_openvino", lambda *a, **k: pytest.fail("re-exported an evaluated model"))
    calls, real = [], deploy.measure_compiled
    monkeypatch.setattr(deploy, "measure_compiled", lambda paths, *a, **k: calls.append(paths) or real(paths, *a, **k))
    ctx = make_ctx(tiny_model_dir, sst2_dir, synthetic_table(tiny_shape))
    again = export_subnets(ctx, supernet, SUBNETS, copy, progress=False, source={"supernet": "tiny"})
    anchor_subnets = AnchorSettings().subnets  # timed beside them: the table re-anchored in the same rounds
    assert [[p.parent.name for p in paths][:len(records)] for paths in calls] == [[r.name for r in records]]
    assert [len(paths) for paths in calls] == [len(records) + anchor_subnets]
    for old, new in zip(records, again):
        assert new.measured_ms > 0 and new.measured_ms == new.measured["ms"] != old.measured_ms
        assert replace(new, measured_ms=old.measured_ms, measured=old.measured, reanchored_ms=old.reanchored_ms,
                       export_anchor=old.export_anchor) == old
        assert not (copy / new.name / deploy.PENDING_NAME).exists()
        assert f"{new.measured_ms:.2f} ms" in (copy / new.name / "README.md").read_text()


def test_the_table_is_re_anchored_in_the_exports_own_rounds(exported, tiny_shape, tmp_path, monkeypatch):
    """The table's anchor subnets are timed after the exported models in the same measurement, and the table
    re-anchored on them predicts each model (`reanchored_ms`); with a table for another precision nothing is added."""
    out, records = exported
    folder = tmp_path / "front"
    shutil.copytree(out, folder)
    table, settings = synthetic_table(tiny_shape), AnchorSettings()
    subnets, _ = anchor_models(table, settings)

    @contextmanager
    def fake_irs(models, profile):
        yield [tmp_path / f"anchor-{i}.xml" for i in range(len(models))]

    def fake_measure(paths, *args, **kwargs):  # the machine at `factor` x the table's time, as the anchor says
        calls.append(paths)
        anchor = {tmp_path / f"anchor-{i}.xml": factor * table.calibrated_ms(s) for i, s in enumerate(subnets)}
        return [dict.fromkeys(("ms", "median", "min", "p90"), anchor.get(p, 1.0))
                | {"n": 100, "unstable": False, "statistic": "common-mode"}
                for p in paths]

    monkeypatch.setattr(deploy, "exported_irs", fake_irs)
    monkeypatch.setattr(deploy, "measure_compiled", fake_measure)
    for other_precision, factor in ((False, 1.2), (True, 1.2), (False, 2.5)):
        for record in records:
            (folder / record.name / deploy.RECORD_NAME).rename(folder / record.name / deploy.PENDING_NAME)
        calls = []
        used = synthetic_table(tiny_shape, replace(PROFILE, precision="int8")) if other_precision else table
        done = deploy.measure_exports([folder], tiny_shape, progress=False, table=used, anchor=settings)[0]
        # over SLOW_STATE_FACTOR x the table: possibly a slow state, timed again (here it is the machine's speed)
        assert len(calls) == (1 + STATE_RETRIES if factor > SLOW_STATE_FACTOR else 1)
        assert len(calls[0]) == len(records) + (0 if other_precision else settings.subnets)
        for cfg, model in zip(SUBNETS, done):
            assert model.measured_ms == 1.0
            if other_precision:
                assert model.reanchored_ms is None and model.export_anchor is None
            else:
                assert model.reanchored_ms == pytest.approx(factor * table.calibrated_ms(cfg))
                assert f"full model {100 * (factor - 1):+.1f}% against the table" in model.export_anchor
                assert ("timed 2 more time(s)" in model.export_anchor) == (factor > SLOW_STATE_FACTOR)


def test_mismatched_table_is_refused(supernet, tiny_model_dir, sst2_dir, tiny_shape, tmp_path):
    other_shape = replace(tiny_shape, intermediate_size=256)
    with pytest.raises(UserError, match="another model shape: intermediate_size 128"):
        export_subnets(make_ctx(tiny_model_dir, sst2_dir, synthetic_table(other_shape)), supernet, SUBNETS,
                       tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="another profile.*threads: table 2, export 1"):
        export_subnets(make_ctx(tiny_model_dir, sst2_dir, synthetic_table(tiny_shape, replace(PROFILE, threads=2))),
                       supernet, SUBNETS, tmp_path / "b", progress=False)


def test_int8_export_is_quantized_and_measured(supernet, tiny_model_dir, sst2_dir, tmp_path):
    records = export_subnets(make_ctx(tiny_model_dir, sst2_dir), supernet, SUBNETS[:1], tmp_path / "int8",
                             int8=True, calibration_size=8, progress=False)
    ir = ov.Core().read_model(tmp_path / "int8" / "subnet-00" / "openvino_model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ops())
    record = records[0]
    assert record.precision == "int8" and record.subnet.latency_ms is None and record.measured_ms > 0
    assert 0 <= record.ir_dev_metric <= 1
    assert "INT8" in (tmp_path / "int8" / "subnet-00" / "README.md").read_text()


def test_bf16_profile_exports_f32_weights_run_in_bf16(supernet, tiny_model_dir, sst2_dir, tiny_shape, tmp_path):
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 (the refusal is tested in test_latency)")
    bf16 = replace(PROFILE, precision="bf16")
    ctx = make_ctx(tiny_model_dir, sst2_dir, synthetic_table(tiny_shape), profile=bf16)
    [record] = export_subnets(ctx, supernet, SUBNETS[:1], tmp_path / "bf16", progress=False)
    card = (tmp_path / "bf16" / "subnet-00" / "README.md").read_text()
    assert record.precision == "bf16" and "run in bf16" in card and "'INFERENCE_PRECISION_HINT': 'bf16'" in card
    assert "for the f32 model" in card  # the table's prediction is for f32


@pytest.fixture(scope="module")
def supernet_dir(tiny_model_dir, tmp_path_factory):
    """A super-network folder as `eftnas-hw supernet` writes it: the model plus its search_space.json."""
    import shutil

    from eftnas_hw.subnet import SearchSpace

    out = tmp_path_factory.mktemp("supernet") / "sn"
    shutil.copytree(tiny_model_dir, out)
    space = SearchSpace(heads=((1, 2, 4),) * 2, ffn=((0, 64, 128),) * 2)
    (out / "search_space.json").write_text(json.dumps(space.to_dict()))
    return out


def test_cli_search_select_export(supernet_dir, sst2_dir, tiny_shape, tmp_path, capsys):
    from eftnas_hw.cli import main

    table = tmp_path / "table.json"
    synthetic_table(tiny_shape).save(table)
    search = tmp_path / "search"
    common = ["search", "--supernet", str(supernet_dir), "--task", "sst2", "--data-dir", str(sst2_dir),
              "--table", str(table), "--pop-size", "4", "--n-evals", "12", "--out", str(search)]
    assert main(common) == 0
    front = json.loads((search / "front.json").read_text())
    assert front and all("latency_ms" in r and "gmacs" in r for r in front)
    # every front point carries its search-split standard error: the bootstrap over the split's sentences agrees
    # with accuracy's binomial sqrt(p (1 - p) / n)
    n = json.loads((search / "search.json").read_text())["search_examples"]
    for r in front:
        binomial = (r["metric"] * (1 - r["metric"]) / n) ** 0.5
        assert r["metric_se"] == pytest.approx(binomial, rel=0.3, abs=1e-9)
    assert main(common) == 0  # a finished search run again is answered entirely from its cache
    assert "0 this run" in capsys.readouterr().out

    fastest = min(r["latency_ms"] for r in front)
    assert main(["select", "--search", str(search), "--budget-ms", str(fastest / 2)]) == 2
    assert "below the cheapest front subnet" in capsys.readouterr().err
    selected = tmp_path / "s.json"
    assert main(["select", "--search", str(search), "--budget-ms", str(fastest), "--out", str(selected)]) == 0
    assert json.loads(selected.read_text()) == min(front, key=lambda r: r["latency_ms"])["config"]

    out = tmp_path / "deploy"
    assert main(["export", "--front", str(search), "--budget-ms", str(fastest), "--out", str(out)]) == 0
    record = ExportedModel.from_dict(json.loads((out / "subnet-00" / "eftnas_export.json").read_text()))
    assert record.subnet.config == SubnetConfig.load(selected)
    assert record.subnet.latency_ms == pytest.approx(fastest) and record.profile["seq_len"] == 16
    assert "+- " in (out / "subnet-00" / "README.md").read_text()  # the card shows the search metric's SE
    if len(front) >= 2:  # at most N front subnets, spread along it: both ends
        spread = tmp_path / "spread"
        assert main(["export", "--front", str(search), "--max-models", "2", "--out", str(spread)]) == 0
        exported = [json.loads((spread / f"subnet-0{i}" / "eftnas_export.json").read_text()) for i in range(2)]
        assert [e["subnet"]["config"] for e in exported] == [front[0]["config"], front[-1]["config"]]
        assert not (spread / "subnet-02").exists()


def test_cli_search_refuses_a_table_of_another_shape(supernet_dir, sst2_dir, tiny_shape, tmp_path, capsys):
    from eftnas_hw.cli import main

    table = tmp_path / "table.json"
    synthetic_table(replace(tiny_shape, num_heads=8, head_size=8)).save(table)
    assert main(["search", "--supernet", str(supernet_dir), "--task", "sst2", "--data-dir", str(sst2_dir),
                 "--table", str(table), "--pop-size", "4", "--n-evals", "8", "--out", str(tmp_path / "s")]) == 2
    assert "another model shape: num_heads 4 (table 8), head_size 16 (table 8)" in capsys.readouterr().err
