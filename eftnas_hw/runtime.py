"""Where training runs: the compute device and this process's place in a multi-process launch."""
from __future__ import annotations

from datetime import timedelta

import torch
from accelerate import PartialState


def cpu_only() -> bool:
    """True without a GPU/XPU: the Trainer then needs use_cpu=True, or a multi-process launch (torchrun,
    `accelerate launch`) trains one full, unsynchronised copy per process instead of sharing the batches."""
    return not torch.accelerator.is_available()


def compute_device() -> torch.device:
    """The accelerator when there is one (the Trainer picks it the same way), else the CPU."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def training_processes() -> PartialState:
    """This process's place in a multi-process launch (one process when not launched so). The long timeout lets
    the other processes wait while the main one runs a stage alone (a latency table takes minutes)."""
    return PartialState(cpu=cpu_only(), timeout=timedelta(hours=2))
