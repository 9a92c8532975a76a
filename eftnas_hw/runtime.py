"""Where training runs: the compute device, this process's place in a multi-process launch, and the checkpoints
that let a killed training stage resume."""
from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback

from .errors import UserError
from .files import read_json, write_json_atomic

CHECKPOINT_RECORD = "run.json"  # in a checkpoint folder: the settings its checkpoints were trained with


def cpu_only() -> bool:
    """True without a GPU/XPU: the Trainer then needs use_cpu=True, or a multi-process launch (torchrun,
    `accelerate launch`) trains one full, unsynchronised copy per process instead of sharing the batches."""
    return not torch.accelerator.is_available()


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: the CPU (AVX512-BF16, AMX) when it trains, else the GPU.
    Elsewhere torch emulates bf16, slower than f32."""
    if cpu_only():
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


def check_bf16(bf16: bool | str) -> bool:
    """The bf16 setting resolved: `auto` where the machine computes bf16 natively (`native_bf16`); true on a CPU
    without it is refused (torch would emulate it, slower than f32)."""
    if bf16 == "auto":
        return native_bf16()
    if bf16 and cpu_only() and not native_bf16():
        raise UserError("bf16 training needs a CPU with AVX512-BF16 or AMX (or a GPU); this one has neither")
    return bool(bf16)


def sampling(group_by_length: bool) -> str:
    """The Trainer's sampler: batches of similar lengths (padded per batch, so SST-2's short sentences stop
    paying for the longest one in a random batch: 3.0x the real tokens at length 64), or random ones."""
    return "group_by_length" if group_by_length else "random"


def compute_device() -> torch.device:
    """The accelerator when there is one (the Trainer picks it the same way), else the CPU."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def training_processes() -> PartialState:
    """This process's place in a multi-process launch (one process when not launched so). The long timeout lets
    the other processes wait while the main one runs a stage alone (a latency table takes minutes)."""
    return PartialState(cpu=cpu_only(), timeout=timedelta(hours=2))


def prepare_checkpoints(work_dir: Path, record: dict, resume: bool) -> None:
    """The checkpoint folder of an unfinished run with the same settings (`record`) is resumed; one with other
    settings is refused (resuming it would silently continue another training). Without `resume` it is cleared.
    The main process prepares it, the others (multi-process launch) check it."""
    processes = training_processes()
    with processes.main_process_first():
        if work_dir.is_dir() and (resume or not processes.is_main_process):
            path = work_dir / CHECKPOINT_RECORD
            previous = read_json(path, "checkpoint record") if path.is_file() else record
            if previous != record:
                raise UserError(f"{work_dir} holds an unfinished run with other settings; delete it or use the "
                                f"same ones")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
        if processes.is_main_process:
            write_json_atomic(work_dir / CHECKPOINT_RECORD, record)


class CheckpointEveryMinutes(TrainerCallback):
    """Save a Trainer checkpoint every `minutes` of training, whatever a step costs: a kill then loses at most
    that much, on a 2-core CPU (seconds per step) as on a GPU (milliseconds). Step-count checkpointing cannot
    promise that: 500 steps are 8 minutes on one machine and never reached in a short run on another. In a
    multi-process launch the main process's clock decides for all, so they all save at the same step."""

    def __init__(self, minutes: float):
        self.seconds = 60 * minutes
        self.last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        due = [time.monotonic() - self.last >= self.seconds]
        if training_processes().num_processes > 1:
            broadcast_object_list(due)
        if due[0]:
            control.should_save = True
            self.last = time.monotonic()
        return control
