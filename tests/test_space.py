"""Algorithm 1: threshold search against targets, cost models shaping the space, errors, output, CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from eftnas_hw.cli import main
from eftnas_hw.cost import CostModel, gmacs_cost
from eftnas_hw.errors import UserError
from eftnas_hw.importance import SCORES_NAME, elastic_weight_names, save_scores
from eftnas_hw.models import random_bert
from eftnas_hw.settings import SpaceSettings
from eftnas_hw.space import ThresholdedScores, build_search_space
from eftnas_hw.subnet import SubnetConfig

from conftest import table_document


@pytest.fixture(scope="module")
def scores(tiny_shape):
    """Random element scores; layer 1 matters more than layer 0, so thresholds cut layer 0 first."""
    model = random_bert(tiny_shape)
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=gen) + (1.0 if ".layer.1." in n else 0.0)
            for n, p in model.named_parameters() if n in elastic_weight_names(model)}


def head_heavy_ms(s):
    """A synthetic latency table (ms): fixed overhead, heads expensive, FFN cheap (unlike MACs)."""
    return 2.0 + 1.0 * sum(s.heads) + 0.002 * sum(s.ffn)


head_heavy_latency = CostModel("latency_ms", "ms", "latency", head_heavy_ms)


def space_settings(low, high, **kw):
    """SpaceSettings with the FFN granularity these tests were written for (32; the default is 64)."""
    return SpaceSettings(low=low, high=high, **{"ffn_step": 32, **kw})


def test_thresholds_are_monotone_and_rounded(scores, tiny_shape):
    t = ThresholdedScores(scores, tiny_shape, ffn_step=32)
    assert t.subnet(t.tau(-1)) == tiny_shape.full_subnet()
    assert t.subnet(t.tau(len(t.all) - 1)) == type(tiny_shape.full_subnet())((0, 0), (0, 0))
    mid = t.subnet(float(torch.tensor(t.all).median()))
    assert all(f % 32 == 0 for f in mid.ffn) and mid.heads[0] < mid.heads[1] and mid.ffn[0] < mid.ffn[1]


def block_fixed_ms(s):
    """A bf16/INT8-like cost (ms): every kept block costs a fixed 1 ms on top of its width, which MACs miss."""
    return 1.0 + sum(1.0 + 0.1 * h for h in s.heads if h) + sum(1.0 + 0.004 * f for f in s.ffn if f)


block_fixed_latency = CostModel("latency_ms", "ms", "latency", block_fixed_ms)


def test_hardware_path_falls_in_cost_and_removes_whole_blocks(scores, tiny_shape):
    """The greedy path goes from the full model to every block removed with cost falling at every step; where
    blocks carry a fixed cost, its subnets at the targets include removed blocks."""
    from eftnas_hw.space import ImportancePerCost

    path = ImportancePerCost(scores, tiny_shape, ffn_step=32).path(block_fixed_latency)
    costs = [p[1] for p in path]
    assert path[0][0] == tiny_shape.full_subnet() and path[-1][0] == SubnetConfig((0, 0), (0, 0))
    assert all(b < a for a, b in zip(costs, costs[1:]))
    hw = build_search_space(scores, tiny_shape, block_fixed_latency, space_settings(0.5, 1.0, n=4, tol=0.15,
                                                                                   method="hardware"))
    assert any(0 in h or 0 in f for h, f in zip(hw.space.heads, hw.space.ffn))
    for target, cost, subnet in zip(hw.targets, hw.costs, hw.subnets):
        assert cost == pytest.approx(block_fixed_ms(subnet)) and abs(cost - target) <= 0.15 * target
        assert all(f % 32 == 0 or f == tiny_shape.intermediate_size for f in subnet.ffn)
    assert hw.subnets[-1] == tiny_shape.full_subnet() and "hardware method" in hw.format_table()


def test_hardware_path_keeps_the_important_units(tiny_shape):
    """With cost proportional to size (MACs-like), the greedy removes the least important units first: a layer
    whose scores are all higher keeps more of its heads and channels at every point of the path."""
    from eftnas_hw.space import ImportancePerCost

    model = random_bert(tiny_shape)
    scores = {n: torch.full(p.shape, 2.0 if ".layer.1." in n else 1.0) for n, p in model.named_parameters()
              if n in elastic_weight_names(model)}
    gmacs = gmacs_cost(tiny_shape, 16)
    for subnet, _, kept, _ in ImportancePerCost(scores, tiny_shape, ffn_step=32).path(gmacs):
        assert subnet.heads[0] <= subnet.heads[1] and subnet.ffn[0] <= subnet.ffn[1]
        assert kept >= 0


def test_group_score_magnitude_keeps_a_block_whose_signed_scores_cancel(tiny_shape):
    """Layer 0's element scores alternate +-3 (they sum to about zero), layer 1's are all +0.5. Summed signed, the
    greedy takes layer 0's blocks as free and removes them first; summed as |S| it removes layer 1's first. Units
    are counted in the super-network's order (signed S, most important first) either way."""
    from eftnas_hw.space import ImportancePerCost

    model = random_bert(tiny_shape)
    scores = {}
    for n, p in model.named_parameters():
        if n in elastic_weight_names(model):
            signs = torch.where(torch.arange(p.numel()) % 2 == 0, 3.0, -3.0).view(p.shape)
            scores[n] = signs if ".layer.0." in n else torch.full(p.shape, 0.5)

    def first_removed_block(group_score):
        path = ImportancePerCost(scores, tiny_shape, ffn_step=32, group_score=group_score).path(block_fixed_latency)
        subnet = next(s for s, *_ in path if 0 in s.heads or 0 in s.ffn)
        return [layer for layer in range(2) if subnet.heads[layer] == 0 or subnet.ffn[layer] == 0]

    assert first_removed_block("signed") == [0]
    assert first_removed_block("magnitude") == [1]
    counted = ImportancePerCost(scores, tiny_shape, ffn_step=32, group_score="magnitude")
    assert all(k > 0 for k in counted.heads_kept[0][1:]) and counted.heads_kept[0][-1] == pytest.approx(
        3.0 * 4 * tiny_shape.hidden_size * tiny_shape.head_size * tiny_shape.num_heads)


def test_tau_search_hits_each_target(scores, tiny_shape):
    full = head_heavy_latency(tiny_shape.full_subnet())
    result = build_search_space(scores, tiny_shape, head_heavy_latency, space_settings(0.4, 1.0, n=4, tol=0.1))
    assert len(result.subnets) == 4 and result.unit == "ms" and result.metric == "latency"
    assert result.targets == pytest.approx(tuple(t * full for t in (0.4, 0.6, 0.8, 1.0)))  # fractions of full
    assert result.settings.n == 4 and result.settings.ffn_step == 32
    for target, cost, subnet in zip(result.targets, result.costs, result.subnets):
        assert cost == pytest.approx(head_heavy_ms(subnet)) and abs(cost - target) <= 0.1 * target
        assert result.space.contains(subnet)
    assert list(result.taus) == sorted(result.taus, reverse=True)  # higher target, lower threshold
    assert result.subnets[-1] == tiny_shape.full_subnet()
    assert result.reachable == (pytest.approx(2.0), pytest.approx(full))


def test_latency_and_gmacs_give_different_spaces(scores, tiny_shape):
    gmacs = gmacs_cost(tiny_shape, 128)
    assert (gmacs.name, gmacs.unit, gmacs.label) == ("gmacs", "GMACs", "GMACs@128")
    assert gmacs(tiny_shape.full_subnet()) == pytest.approx(tiny_shape.full_subnet().gmacs(tiny_shape, 128))
    latency, macs = (build_search_space(scores, tiny_shape, cost, space_settings(0.4, 0.8, n=3, tol=0.15))
                     for cost in (head_heavy_latency, gmacs))
    assert latency.space != macs.space and latency.taus != macs.taus
    assert macs.unit == "GMACs" and macs.metric == "GMACs@128"
    assert macs.costs[0] == pytest.approx(gmacs(macs.subnets[0]))
    assert macs.targets[0] == pytest.approx(0.4 * gmacs(tiny_shape.full_subnet()))


def test_unreachable_and_missed_targets_are_user_errors(scores, tiny_shape):
    full = head_heavy_ms(tiny_shape.full_subnet())  # 10.512 ms; everything removed: 2 ms
    with pytest.raises(UserError, match=r"reachable range 2\.\.\d"):
        build_search_space(scores, tiny_shape, head_heavy_latency, space_settings(1.0 / full, 1.0))
    with pytest.raises(UserError, match="reachable range"):
        build_search_space(scores, tiny_shape, head_heavy_latency, space_settings(5.0 / full, 2.0))
    with pytest.raises(UserError, match="within"):
        build_search_space(scores, tiny_shape, head_heavy_latency, space_settings(5.0 / full, 1.0, n=9, tol=1e-6))
    with pytest.raises(UserError, match="above"):
        build_search_space(scores, tiny_shape, head_heavy_latency, space_settings(1.0, 5.0 / full))


def test_include_full_table_and_json(scores, tiny_shape, tmp_path):
    result = build_search_space(scores, tiny_shape, head_heavy_latency,
                                space_settings(0.4, 0.7, n=2, tol=0.1, include_full=True))
    assert result.space.largest() == tiny_shape.full_subnet()
    result.save(tmp_path / "search_space.json")
    saved = json.loads((tmp_path / "search_space.json").read_text())
    assert saved["size"] == result.space.size and saved["unit"] == "ms" and len(saved["configurations"]) == 2
    assert {"target", "predicted", "tau", "heads", "ffn"} <= set(saved["configurations"][0])
    table = result.format_table()
    assert f"search space size: {result.space.size:,}" in table and len(table.splitlines()) > tiny_shape.num_layers


def test_space_cli(scores, tiny_model_dir, tiny_shape, tmp_path, capsys):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    save_scores(scores, folder / SCORES_NAME)
    out = tmp_path / "search_space.json"
    args = ["space", "--scores", str(folder), "--gmacs", "--n", "3", "--ffn-step", "32", "--tol", "0.15",
            "--out", str(out)]
    assert main(args + ["--low", "0.3", "--high", "0.65"]) == 0  # fractions of the full model's GMACs@128
    saved = json.loads(out.read_text())
    assert saved["unit"] == "GMACs" and len(saved["configurations"]) == 3
    full = tiny_shape.full_subnet().gmacs(tiny_shape, 128)
    assert saved["configurations"][0]["target"] == pytest.approx(0.3 * full)
    assert saved["configurations"][-1]["target"] == pytest.approx(0.65 * full)
    assert saved["settings"]["low"] == 0.3 and saved["settings"]["ffn_step"] == 32
    assert "search space size" in capsys.readouterr().out
    assert main(args + ["--low", "0.3", "--high", "5", "--overwrite"]) == 2
    assert "reachable range" in capsys.readouterr().err


def test_space_cli_refuses_existing_out_without_overwrite(scores, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    save_scores(scores, folder / SCORES_NAME)
    out = tmp_path / "search_space.json"
    out.write_text("keep me")
    args = ["space", "--scores", str(folder), "--gmacs", "--n", "2", "--ffn-step", "32", "--tol", "0.15",
            "--low", "0.3", "--high", "0.65", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(args + ["--overwrite"]) == 0
    assert len(json.loads(out.read_text())["configurations"]) == 2


def test_space_cli_with_latency_table(scores, tiny_model_dir, tiny_shape, tmp_path, capsys):
    from dataclasses import replace

    from eftnas_hw.latency import LatencyTable, Profile

    profile = Profile(name="test-1t-b1-s16", threads=1, batch=1, seq_len=16, precision="f32")

    def table(shape):  # heads expensive, FFN cheap: a cost MACs would not predict
        return table_document(shape, profile, 1.0, [0.0, 1.0, 2.0, 3.0, 4.0], [0, 64, 128], [0.0, 0.1, 0.2])

    LatencyTable(table(tiny_shape)).save(tmp_path / "table.json")
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    save_scores(scores, folder / SCORES_NAME)
    out = tmp_path / "search_space.json"
    args = ["space", "--scores", str(folder / SCORES_NAME), "--n", "3", "--ffn-step", "32", "--tol", "0.15",
            "--out", str(out), "--low", "0.42", "--high", "0.96"]  # about 4..9 ms of the full model's 9.4 ms
    assert main(args + ["--table", str(tmp_path / "table.json")]) == 0
    saved = json.loads(out.read_text())
    assert saved["unit"] == "ms" and saved["reachable"][1] == pytest.approx(9.4)
    assert saved["configurations"][0]["target"] == pytest.approx(0.42 * 9.4)
    assert all(abs(c["predicted"] - c["target"]) <= 0.15 * c["target"] for c in saved["configurations"])
    LatencyTable(table(replace(tiny_shape, hidden_size=32, head_size=8))).save(tmp_path / "other.json")
    assert main(args + ["--table", str(tmp_path / "other.json"), "--overwrite"]) == 2
    assert "another model shape" in capsys.readouterr().err
