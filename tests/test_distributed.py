"""Training under a multi-process launch (torchrun here, `accelerate launch` alike) needs no code of ours beyond
the Trainer: two CPU processes share the batches (DDP over gloo), only the main process writes and reports, and
the stages that do not train run once."""
import json
import os
import subprocess
import sys

from test_pipeline import TINY_RUN


def test_run_under_torchrun_trains_in_both_processes_and_writes_once(tiny_model_dir, glue_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**TINY_RUN, "model": str(tiny_model_dir), "data_dir": str(glue_dir)}))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "eftnas_hw.cli", "run", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    supernet = json.loads((out / "supernet" / "report.json").read_text())
    assert teacher["processes"] == 2 and supernet["processes"] == 2
    # 96 examples, 16 per process and step: 3 steps with two processes where one process would take 6.
    assert teacher["optimizer_steps"] == 3
    for stage in ("latency", "space", "search", "export"):
        assert done.stdout.count(f"[{stage}] running") == 1, stage
    assert done.stdout.count("[supernet] running") == 2
    assert json.loads((out / "summary.json").read_text())["models"]
