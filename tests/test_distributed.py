"""Training under a multi-process launch (torchrun here, `accelerate launch` alike) needs no code of ours beyond
the Trainer: two CPU processes share the batches (DDP over gloo), only the main process writes and reports, and
the stages that do not train run once."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY_SHAPE
from test_pipeline import TINY_RUN

from eftnas_hw.models import random_bert


def _torchrun(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return done


def test_run_under_torchrun_trains_in_both_processes_and_writes_once(tiny_model_dir, glue_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**TINY_RUN, "model": str(tiny_model_dir), "data_dir": str(glue_dir)}))
    out = tmp_path / "run"
    done = _torchrun("-m", "eftnas_hw.cli", "run", "--config", str(config), "--out", str(out))
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    supernet = json.loads((out / "supernet" / "report.json").read_text())
    assert teacher["processes"] == 2 and supernet["processes"] == 2
    # 96 examples, 16 per process and step: 3 steps with two processes where one process would take 6.
    assert teacher["optimizer_steps"] == 3
    for stage in ("latency", "space", "search", "export"):
        assert done.stdout.count(f"[{stage}] running") == 1, stage
    assert done.stdout.count("[supernet] running") == 2
    assert json.loads((out / "summary.json").read_text())["models"]


def test_sandwich_steps_under_ddp_keep_every_process_in_step(tmp_path):
    """Each step's subnets exchange gradients once (after the largest); a subnet whose gradients were left out
    of the exchange would make the processes, which see different batches, drift apart."""
    _torchrun(str(Path(__file__).with_name("supernet_ddp_worker.py")), str(tmp_path), timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    initial = random_bert(TINY_SHAPE, seed=11).state_dict()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(rank0[name], initial[name])  # the weights were trained
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key
