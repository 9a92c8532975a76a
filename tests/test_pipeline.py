"""The whole pipeline on a tiny BERT and real SST-2 rows: every stage runs, a second run skips them all, and a
changed later setting re-runs only the stages that depend on it."""
import json
import shutil

import pytest

from eftnas_hw.cli import main
from eftnas_hw.errors import UserError
from eftnas_hw.evolution import spread_along_front
from eftnas_hw.pipeline import run_pipeline, share_finished_stage
from eftnas_hw.reports import format_run_summary
from eftnas_hw.settings import RunConfig

TINY_RUN = {
    "task": "sst2", "max_length": 32,
    "latency": {"build": {"ffn_step": 64, "subnets": 8, "block_rounds": 3,
                          "subnet_rounds": 2, "group_size": 7},
                "anchor": {"subnets": 4, "rounds": 2, "bound_pct": 60}},
    "finetune": {"epochs": 1.0, "max_train": 96, "batch_size": 16},
    # tol 0.5: a 2-layer model's measured table moves in steps of ~40% of a target (a whole block), and where
    # they fall depends on this machine's timing noise; the space's own tolerance is tested in test_space
    "space": {"low": 0.4, "high": 1.0, "n": 3, "ffn_step": 32, "tol": 0.5},
    "supernet": {"max_steps": 3, "max_train": 64, "batch_size": 16},
    "search": {"pop_size": 6, "n_evals": 12, "max_search": 48},
    "export": {"max_models": 2},
}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    config = RunConfig.load(None, {**TINY_RUN, "model": str(tiny_model_dir), "data_dir": str(glue_dir)})
    return out, config, run_pipeline(config, out, progress=False)


def test_every_stage_leaves_its_artifacts(tiny_run):
    out, _, summary = tiny_run
    for artifact in ("latency_table.json", "teacher/importance.safetensors", "search_space.json",
                     "supernet/search_space.json", "search/front.json", "models/base/subnet-00/openvino_model.xml",
                     "summary.json"):
        assert (out / artifact).exists(), artifact
    groups = {r["group"] for r in summary["models"]}
    assert groups == {"base", "front"}
    assert summary["table"] == str((out / "latency_table.json").resolve())  # no shipped table fits the tiny shape
    base = [r for r in summary["models"] if r["group"] == "base"][0]
    assert base["speedup"] == pytest.approx(1.0)
    assert all(r["measured_ms"] > 0 and 0 <= r["ir_dev_metric"] <= 1 for r in summary["models"])
    # prediction errors, absolute and relative to the base model measured in the same stage (drift removed)
    front = [r for r in summary["models"] if r["group"] == "front"]
    relative = [abs(r["predicted_ms"] / base["predicted_ms"] / (r["measured_ms"] / base["measured_ms"]) - 1)
                for r in front]
    p = summary["prediction"]
    assert p["relative_mape_pct"] == pytest.approx(100 * sum(relative) / len(relative))
    assert p["base_error_pct"] == pytest.approx(100 * (base["predicted_ms"] / base["measured_ms"] - 1))
    # and predicted again by the table re-anchored on its anchor subnets timed in the export's own rounds
    reanchored = [abs(r["reanchored_ms"] / r["measured_ms"] - 1) for r in summary["models"]]
    assert p["reanchored"]["mape_pct"] == pytest.approx(100 * sum(reanchored) / len(reanchored))
    assert p["reanchored"]["anchor"].startswith("in the export's timing rounds") and summary["budget"] is None


def test_a_budget_is_reported_against_the_measured_latency(tiny_run, tmp_path, capsys):
    """With --budget-ms the chosen subnet is exported last and the summary says whether it measured within it."""
    out, config, _ = tiny_run
    shutil.copytree(out, tmp_path / "run")  # only the export stage runs again there
    summary = run_pipeline(config.merged({"export": {"budget_ms": 1e4}}), tmp_path / "run", progress=False)
    chosen = [r for r in summary["models"] if r["group"] == "front"][-1]
    b = summary["budget"]
    assert b["model"] == f"front/{chosen['name']}" and b["measured_ms"] == chosen["measured_ms"] and b["held"]
    assert f"budget 10000 ms: front/{chosen['name']} predicted" in capsys.readouterr().out
    over = {**summary, "budget": {**b, "ms": b["measured_ms"] / 1.1, "held": False}}
    assert "OVER the budget by 10.0%" in format_run_summary(over)


def test_rerun_skips_finished_stages_and_changed_settings_rerun_later_ones(tiny_run, capsys):
    out, config, _ = tiny_run
    stages = json.loads((out / "stages.json").read_text())
    run_pipeline(config, out, progress=False)
    printed = capsys.readouterr().out
    assert "[finetune] up to date" in printed and "[export] up to date" in printed
    config = config.merged({"search": {"n_evals": 18}})
    run_pipeline(config, out, progress=False)
    printed = capsys.readouterr().out
    assert "[supernet] up to date" in printed and "[search] running" in printed and "[export] running" in printed
    after = json.loads((out / "stages.json").read_text())
    assert after["finetune"] == stages["finetune"] and after["search"] != stages["search"]


def test_shared_stages_are_taken_with_their_seconds_and_later_stages_run(tiny_run, tmp_path, capsys):
    """tools/reproduce_results.py gives a lever on the search the super-network of an earlier variant: the copy
    must be accepted by key, carry the seconds it cost, and leave the stages after it to run."""
    out, config, _ = tiny_run
    source = json.loads((out / "stages.json").read_text())
    target = tmp_path / "lever"
    target.mkdir()
    for stage, outputs in (("finetune", ("teacher",)), ("latency", ("latency_table.json",)),
                           ("space", ("search_space.json",)), ("supernet", ("supernet",))):
        share_finished_stage(out, target, stage, outputs)
    run_pipeline(config.merged({"search": {"max_search": 32}}), target, progress=False)
    printed = capsys.readouterr().out
    assert "[supernet] up to date" in printed and "[search] running" in printed
    record = json.loads((target / "stages.json").read_text())
    assert record["supernet"] == source["supernet"] and record["supernet_seconds"] == source["supernet_seconds"]
    with pytest.raises(UserError, match="no finished search stage"):
        share_finished_stage(tmp_path / "lever", tmp_path / "other", "search", ("nothing-here",))


def test_config_errors_are_user_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("finetune: {epochz: 3}\n")
    with pytest.raises(UserError, match="unknown setting finetune.epochz"):
        RunConfig.load(tmp_path / "c.yaml")
    (tmp_path / "bad.yaml").write_text("task: [sst2\n")
    assert main(["run", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 2
    with pytest.raises(UserError, match="metric must be"):
        RunConfig.load(None, {"metric": "flops"})
    assert not (tmp_path / "r").exists()  # a rejected run leaves no folder behind


def test_spread_along_front_keeps_both_ends():
    front = [{"i": i} for i in range(10)]
    picked = spread_along_front(front, 4)
    assert picked[0] == front[0] and picked[-1] == front[-1] and len(picked) == 4
    assert spread_along_front(front[:3], 5) == front[:3]


def test_regression_task_runs_end_to_end(tiny_model_dir, glue_dir, tmp_path):
    """STS-B: one output, MSE + distillation, Spearman as the metric; the 2-label tiny model gets a new head."""
    config = RunConfig.load(None, {**TINY_RUN, "task": "stsb", "model": str(tiny_model_dir),
                                    "data_dir": str(glue_dir)})
    summary = run_pipeline(config, tmp_path / "run", progress=False)
    teacher = json.loads((tmp_path / "run" / "teacher" / "metrics.json").read_text())
    assert teacher["main_metric"] == "spearman" and "pearson" in teacher["dev"]
    assert {r["group"] for r in summary["models"]} == {"base", "front"}
    assert all(-1 <= r["ir_dev_metric"] <= 1 and r["measured_ms"] > 0 for r in summary["models"])


def test_bad_table_and_build_settings_fail_before_any_work(tiny_model_dir, glue_dir, tmp_path):
    """D3 and 'too late': a mistyped build setting or a missing table is one error before fine-tuning starts."""
    base = {**TINY_RUN, "model": str(tiny_model_dir), "data_dir": str(glue_dir)}
    with pytest.raises(UserError, match="unknown setting latency.build.ffn_stepp"):
        RunConfig.load(None, {**base, "latency": {"build": {"ffn_stepp": 64}}})
    config = RunConfig.load(None, {**base, "latency": {"table": str(tmp_path / "missing.json")}})
    with pytest.raises(UserError, match="latency table not found"):
        run_pipeline(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_given_table_is_identified_by_content_not_path_or_time(tiny_run, tmp_path, capsys):
    """D4: the same table under another path and modification time (a fresh clone, a copied run folder) is the
    same input: nothing re-runs. A table with other content is another input: the stages after it re-run."""
    import shutil

    out, config, _ = tiny_run
    table = tmp_path / "a" / "table.json"
    table.parent.mkdir()
    shutil.copy(out / "latency_table.json", table)
    first = tmp_path / "run-a"
    shutil.copytree(out, first)
    config = config.merged({"latency": {"table": str(table)}})
    run_pipeline(config, first, progress=False)
    assert "re-anchored on this machine" in capsys.readouterr().out
    # the given table is re-anchored into the run folder; the given file itself is not touched
    anchored = json.loads((first / "latency_table.json").read_text())
    assert anchored["anchor"]["n"] == 4 and "anchor" not in json.loads(table.read_text())

    moved = tmp_path / "b" / "copy.json"
    moved.parent.mkdir()
    moved.write_bytes(table.read_bytes())  # new path, new modification time, same content
    second = tmp_path / "run-b"
    shutil.copytree(first, second)
    run_pipeline(config.merged({"latency": {"table": str(moved)}}), second, progress=False)
    printed = capsys.readouterr().out
    assert "running" not in printed and "[space] up to date" in printed and "[export] up to date" in printed


def test_a_table_that_does_not_fit_this_machine_is_rebuilt_in_the_run(tiny_run, tmp_path, monkeypatch, capsys):
    """A given table whose re-anchoring leaves a large residual is not used: `run` warns in one line and builds
    a table on this machine instead, recorded like any built table."""
    import dataclasses

    from eftnas_hw import pipeline
    from eftnas_hw.context import RunContext
    from eftnas_hw.latency import TableDoesNotFit
    from eftnas_hw.models import load_config
    from eftnas_hw.subnet import BertShape

    out, config, _ = tiny_run

    def refuse(table, settings, progress=True):
        raise TableDoesNotFit("latency table does not fit this machine even re-anchored: residual MAPE 30.0%")

    monkeypatch.setattr(pipeline, "anchor_table", refuse)
    ctx = RunContext(config.merged({"latency": {"table": str(out / "latency_table.json")}}))
    shape = dataclasses.replace(BertShape.from_config(load_config(config.model)), num_labels=2)
    pipeline._given_table(ctx, shape)
    run = pipeline.Run(tmp_path / "run", ctx.config)
    capsys.readouterr()
    pipeline._latency_stage(run, ctx, shape, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0] and "building a table on this machine instead" in err[0]
    built = json.loads((tmp_path / "run" / "latency_table.json").read_text())
    assert built["complete"] and "anchor" not in built and ctx.table.validation["n"] == 8
    assert "latency" in json.loads((tmp_path / "run" / "stages.json").read_text())


def _write_config(config: RunConfig, path) -> str:
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict()))
    return str(path)


def test_a_failed_stage_keeps_the_previous_outputs_and_their_record(tiny_run, tmp_path, monkeypatch, capsys):
    """Issue 12's lost export: a rejected budget and a stage that fails half-way both leave the finished front
    and its record as they were, so re-running the original command finds it up to date."""
    import shutil

    from eftnas_hw import pipeline

    out, config, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    run_pipeline(config, run, progress=False)  # other tests changed the shared run: back to this config
    before = json.loads((run / "stages.json").read_text())
    fronts = sorted(p.name for p in (run / "models" / "front").iterdir())
    yaml_config = _write_config(config, tmp_path / "config.yaml")
    assert main(["run", "--config", yaml_config, "--out", str(run), "--budget-ms", "0.0001"]) == 2
    assert main(["run", "--config", yaml_config, "--out", str(run), "--budget-ms", "-1"]) == 2

    def fail_half_way(ctx, supernet, subnets, out_dir, **kwargs):
        (out_dir / "subnet-00").mkdir(parents=True)
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(pipeline, "export_subnets", fail_half_way)
    with pytest.raises(RuntimeError, match="half-way"):
        run_pipeline(config.merged({"export": {"max_models": 1}}), run, progress=False)
    assert json.loads((run / "stages.json").read_text()) == before
    assert sorted(p.name for p in (run / "models" / "front").iterdir()) == fronts
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["run", "--config", yaml_config, "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "[export] up to date" in printed and "running" not in printed
    assert json.loads((run / "summary.json").read_text())["models"][-1]["group"] == "front"


def test_a_run_killed_in_the_supernet_stage_resumes_from_its_checkpoint(tiny_run, tmp_path, monkeypatch, capsys):
    """A kill after the second checkpoint: the re-run trains only the remaining steps, from the checkpoint."""
    import shutil

    from eftnas_hw.supernet import SandwichTrainer

    out, config, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    config = config.merged({"supernet": {"max_steps": 5, "save_minutes": 1e-9}})  # a checkpoint every step
    save, step = SandwichTrainer._save_checkpoint, SandwichTrainer.training_step
    steps_taken = []

    def killed_after_step_2(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.global_step == 2:
            raise KeyboardInterrupt

    def counted(self, *args, **kwargs):
        steps_taken.append(self.state.global_step)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SandwichTrainer, "_save_checkpoint", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run, progress=False)
    monkeypatch.setattr(SandwichTrainer, "_save_checkpoint", save)
    monkeypatch.setattr(SandwichTrainer, "training_step", counted)
    run_pipeline(config, run, progress=False)
    assert "[supernet] running (resuming)" in capsys.readouterr().out
    assert steps_taken == [2, 3, 4]  # steps 3-5 only: the first two came from the checkpoint
    assert json.loads((run / "supernet" / "report.json").read_text())["steps"] == 5
    assert not list((run / ".partial").iterdir())  # finished stages leave no staging behind
