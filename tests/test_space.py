"""Algorithm 1: threshold search against targets, cost models shaping the space, errors, output, CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from eftnas_hw.cli import main
from eftnas_hw.errors import UserError
from eftnas_hw.finetune import SCORES_NAME, elastic_weight_names, save_scores
from eftnas_hw.models import random_bert
from eftnas_hw.space import ThresholdedScores, build_search_space, cost_function


@pytest.fixture(scope="module")
def scores(tiny_shape):
    """Random element scores; layer 1 matters more than layer 0, so thresholds cut layer 0 first."""
    model = random_bert(tiny_shape)
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=gen) + (1.0 if ".layer.1." in n else 0.0)
            for n, p in model.named_parameters() if n in elastic_weight_names(model)}


def head_heavy_latency(s):
    """A synthetic latency table (ms): fixed overhead, heads expensive, FFN cheap (unlike MACs)."""
    return 2.0 + 1.0 * sum(s.heads) + 0.002 * sum(s.ffn)


def test_thresholds_are_monotone_and_rounded(scores, tiny_shape):
    t = ThresholdedScores(scores, tiny_shape, ffn_step=32)
    assert t.subnet(t.tau(-1)) == tiny_shape.full_subnet()
    assert t.subnet(t.tau(len(t.all) - 1)) == type(tiny_shape.full_subnet())((0, 0), (0, 0))
    mid = t.subnet(float(torch.tensor(t.all).median()))
    assert all(f % 32 == 0 for f in mid.ffn) and mid.heads[0] < mid.heads[1] and mid.ffn[0] < mid.ffn[1]


def test_tau_search_hits_each_target(scores, tiny_shape):
    full = head_heavy_latency(tiny_shape.full_subnet())
    result = build_search_space(scores, tiny_shape, head_heavy_latency, 0.4 * full, full, n=4, tol=0.1)
    assert len(result.subnets) == 4 and result.unit == "ms"
    for target, cost, subnet in zip(result.targets, result.costs, result.subnets):
        assert cost == pytest.approx(head_heavy_latency(subnet)) and abs(cost - target) <= 0.1 * target
        assert result.space.contains(subnet)
    assert list(result.taus) == sorted(result.taus, reverse=True)  # higher target, lower threshold
    assert result.subnets[-1] == tiny_shape.full_subnet()
    assert result.reachable == (pytest.approx(2.0), pytest.approx(full))


def test_latency_and_gflops_give_different_spaces(scores, tiny_shape):
    gflops, unit, label = cost_function(tiny_shape, None, 128)
    assert (unit, label) == ("GMACs", "gflops@128")
    spaces = []
    for cost in (head_heavy_latency, gflops):
        full = cost(tiny_shape.full_subnet())
        spaces.append(build_search_space(scores, tiny_shape, cost, 0.4 * full, 0.8 * full, n=3, tol=0.15))
    latency, macs = spaces
    assert latency.space != macs.space and latency.taus != macs.taus
    assert macs.costs[0] == pytest.approx(gflops(macs.subnets[0]))


def test_unreachable_and_missed_targets_are_user_errors(scores, tiny_shape):
    full = head_heavy_latency(tiny_shape.full_subnet())
    with pytest.raises(UserError, match=r"reachable range 2\.\.\d"):
        build_search_space(scores, tiny_shape, head_heavy_latency, 1.0, full)
    with pytest.raises(UserError, match="reachable range"):
        build_search_space(scores, tiny_shape, head_heavy_latency, 5.0, 2 * full)
    with pytest.raises(UserError, match="within"):
        build_search_space(scores, tiny_shape, head_heavy_latency, 5.0, full, n=9, tol=1e-6)
    with pytest.raises(UserError, match="above"):
        build_search_space(scores, tiny_shape, head_heavy_latency, full, 5.0)


def test_include_full_table_and_json(scores, tiny_shape, tmp_path):
    full = head_heavy_latency(tiny_shape.full_subnet())
    result = build_search_space(scores, tiny_shape, head_heavy_latency, 0.4 * full, 0.7 * full, n=2, tol=0.1,
                                include_full=True)
    assert result.space.largest() == tiny_shape.full_subnet()
    result.save(tmp_path / "search_space.json")
    saved = json.loads((tmp_path / "search_space.json").read_text())
    assert saved["size"] == result.space.size and saved["unit"] == "ms" and len(saved["configurations"]) == 2
    assert {"target", "predicted", "tau", "heads", "ffn"} <= set(saved["configurations"][0])
    table = result.format_table()
    assert f"search space size: {result.space.size:,}" in table and len(table.splitlines()) > tiny_shape.num_layers


def test_space_cli(scores, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    save_scores(scores, folder / SCORES_NAME)
    out = tmp_path / "search_space.json"
    args = ["space", "--scores", str(folder), "--metric", "gflops", "--n", "3", "--tol", "0.15", "--out", str(out)]
    assert main(args + ["--low", "0.004", "--high", "0.008"]) == 0
    saved = json.loads(out.read_text())
    assert saved["unit"] == "GMACs" and len(saved["configurations"]) == 3
    assert "search space size" in capsys.readouterr().out
    assert main(args + ["--low", "0.004", "--high", "5"]) == 2
    assert "reachable range" in capsys.readouterr().err


def test_space_cli_with_latency_table(scores, tiny_model_dir, tiny_shape, tmp_path, capsys):
    from dataclasses import replace

    from eftnas_hw.latency import LatencyTable, Profile, hardware_fingerprint
    from eftnas_hw.latency.table import FORMAT, VERSION

    profile = Profile(name="test-1t-b1-s16", threads=1, batch=1, seq_len=16)

    def table(shape):  # heads expensive, FFN cheap: a cost MACs would not predict
        return {"format": FORMAT, "version": VERSION, "shape": shape.to_dict(), "profile": profile.to_dict(),
                "fingerprint": hardware_fingerprint(profile), "complete": True,
                "blocks": {"fixed_ms": 1.0, "attention_ms": [0.0, 1.0, 2.0, 3.0, 4.0],
                           "ffn_grid": [0, 64, 128], "ffn_ms": [0.0, 0.1, 0.2]},
                "calibration": {"scale": 1.0, "offset_ms": 0.0}, "validation": {"n": 0}}

    LatencyTable(table(tiny_shape)).save(tmp_path / "table.json")
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    save_scores(scores, folder / SCORES_NAME)
    out = tmp_path / "search_space.json"
    args = ["space", "--scores", str(folder / SCORES_NAME), "--n", "3", "--tol", "0.15", "--out", str(out)]
    assert main(args + ["--table", str(tmp_path / "table.json"), "--low", "4", "--high", "9"]) == 0
    saved = json.loads(out.read_text())
    assert saved["unit"] == "ms" and saved["reachable"][1] == pytest.approx(9.4)
    assert all(abs(c["predicted"] - c["target"]) <= 0.15 * c["target"] for c in saved["configurations"])
    LatencyTable(table(replace(tiny_shape, hidden_size=32, head_size=8))).save(tmp_path / "other.json")
    assert main(args + ["--table", str(tmp_path / "other.json"), "--low", "4", "--high", "9"]) == 2
    assert "another model shape" in capsys.readouterr().err
