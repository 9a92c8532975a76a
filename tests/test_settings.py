"""Settings: one dataclass per stage is the single source of defaults, types and ranges for the run config, the
YAML schema and the CLI flags; every unknown or mistyped setting is one UserError before any work."""
from __future__ import annotations

import dataclasses

import pytest

from eftnas_hw.cli import build_parser, main
from eftnas_hw.errors import UserError
from eftnas_hw.settings import (QUICK_RUN, FinetuneSettings, RunConfig, SearchSettings, SpaceSettings,
                                SupernetSettings, TableBuildSettings, parse_assignment)


def test_unknown_keys_are_refused_at_any_depth(tmp_path):
    (tmp_path / "c.yaml").write_text("latency:\n  build: {ffn_stepp: 64}\n")
    with pytest.raises(UserError, match="unknown setting latency.build.ffn_stepp"):
        RunConfig.load(tmp_path / "c.yaml")
    with pytest.raises(UserError, match="unknown setting finetune.epochz"):
        RunConfig.load(None, {"finetune": {"epochz": 3}})


@pytest.mark.parametrize("overrides, message", [
    ({"finetune": {"lr": "fast"}}, "lr must be float"),
    ({"finetune": {"batch_size": 0}}, "batch_size must be at least 1"),
    ({"finetune": {"batch_size": True}}, "batch_size must be int"),
    ({"finetune": {"max_train": 2.5}}, "max_train must be int"),
    ({"supernet": {"temperature": 0}}, "temperature must be above 0"),
    ({"supernet": {"num_random": -3}}, "num_random must be at least 0"),
    ({"supernet": {"reorder": "random"}}, "reorder must be one of"),
    ({"search": {"pop_size": 10, "n_evals": 5}}, "below one population"),
    ({"space": {"low": 0.9, "high": 0.5}}, "low 0.9 is above high 0.5"),
    ({"export": {"budget_ms": -1}}, "budget_ms must be above 0"),
    ({"max_length": 0}, "max_length must be at least 2"),
    ({"metric": "flops"}, "metric must be one of latency, gmacs"),
    ({"latency": 3}, "expected a mapping"),
    ({"supernet": {"lr": float("nan")}}, "finite"),
    ({"supernet": {"bf16": "maybe"}}, "bf16 must be one of true, false, auto, got 'maybe'"),
    ({"finetune": {"bf16": 1}}, "bf16 must be bool or str"),
    ({"supernet": {"group_by_length": True, "length_buckets": True}}, "two batch samplers: choose one"),
])
def test_bad_values_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        RunConfig.load(None, overrides)
    assert "\n" not in str(info.value)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    (tmp_path / "c.yaml").write_text("supernet: {lr: 3e-5}\n")  # YAML 1.1 reads this as a string
    assert RunConfig.load(tmp_path / "c.yaml").supernet.lr == pytest.approx(3e-5)


def test_quick_run_is_applied_over_the_defaults_and_a_file_over_it(tmp_path):
    default = RunConfig.load()
    assert default.max_length == QUICK_RUN["max_length"] and default.supernet.num_random == 1
    assert default.supernet.length_buckets and not default.finetune.length_buckets
    assert default.supernet.lr == QUICK_RUN["supernet"]["lr"] != SupernetSettings().lr  # short budget, higher lr
    assert default.supernet.temperature == SupernetSettings().temperature  # not named by the quick run: the default
    (tmp_path / "c.yaml").write_text("task: stsb\nmax_length: 128\n")
    config = RunConfig.load(tmp_path / "c.yaml", {"seed": 3})
    assert (config.task, config.max_length, config.seed, config.finetune.max_train) == ("stsb", 128, 3, 6000)
    assert RunConfig().merged(parse_assignment("supernet.lr=1e-4")).supernet.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("command, cls", [("finetune", FinetuneSettings), ("train-supernet", SupernetSettings),
                                          ("search", SearchSettings), ("space", SpaceSettings),
                                          ("profile", TableBuildSettings)])
def test_every_settings_field_is_a_flag_of_its_command(command, cls):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    dests = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(cls):
        assert f.name in dests, f"{command} has no flag for {cls.__name__}.{f.name}"
        assert dests[f.name].default is None  # unset flags leave the dataclass default in charge


def test_bad_flag_value_is_one_line_exit_2(tmp_path, capsys):
    code = main(["finetune", "--task", "sst2", "--out", str(tmp_path / "t"), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("eftnas-hw: error: batch_size must be at least 1") and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_bf16_auto_resolves_to_what_the_machine_computes_natively(tmp_path, capsys):
    from eftnas_hw.runtime import check_bf16, native_bf16
    assert check_bf16("auto") is native_bf16() and check_bf16(False) is False
    if not native_bf16():
        with pytest.raises(UserError, match="needs a CPU with AVX512-BF16 or AMX"):
            check_bf16(True)
    config = RunConfig.load(None, parse_assignment("finetune.bf16=auto"))
    assert config.finetune.bf16 == "auto" and RunConfig.load(None, parse_assignment("supernet.bf16=true")).supernet.bf16
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train-supernet"]
    flag = next(a for a in sub._actions if a.dest == "bf16")
    assert [flag.type(text) for text in ("auto", "false", "true")] == ["auto", False, True]
    code = main(["finetune", "--task", "sst2", "--out", str(tmp_path / "t"), "--bf16", "often"])
    assert code == 2 and "bf16 must be one of true, false, auto" in capsys.readouterr().err


def test_stage_keys_leave_out_later_settings_at_their_defaults():
    """A setting added later (keyed_when_set) keeps earlier runs' stage keys while at its default; set, it counts."""
    default = RunConfig()
    assert "group_by_length" not in default.supernet.key() and "group_by_length" in default.supernet.to_dict()
    later = ("group_by_length", "length_buckets", "bucket_batches")
    assert {k: v for k, v in default.supernet.to_dict().items() if k not in later} == default.supernet.key()
    grouped = default.merged(parse_assignment("supernet.group_by_length=true"))
    assert grouped.supernet.key()["group_by_length"] is True and grouped.key()["supernet"] == grouped.supernet.key()
