"""Where training runs: the compute device, this process's place in a multi-process launch, and the checkpoints
that let a killed training stage resume."""
from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
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


def batching_args(settings) -> dict:
    """The TrainingArguments both training stages derive alike from their settings (`bf16`, `group_by_length`):
    the CPU when there is no GPU, bf16 resolved (`check_bf16`), and the sampler: HF's LengthGroupedSampler with
    `group_by_length`, else random batches (`length_buckets` replaces either, see `LengthBucketing`)."""
    return {"use_cpu": cpu_only(), "bf16": check_bf16(settings.bf16),
            "train_sampling_strategy": "group_by_length" if settings.group_by_length else "random"}


class LengthBuckets(torch.utils.data.Sampler):
    """Batches of similar lengths, in random order: each epoch the examples are shuffled, cut into mega-batches of
    `mega` batches, sorted by length inside each and cut into batches, and the batches are shuffled (the last, short
    one stays last, so the DataLoader cuts the same batches). Padded per batch, SST-2's random batches of 32 hold 3.0x
    their real tokens at length 64, these 1.01x. HF's LengthGroupedSampler leaves the batches of each mega-batch
    longest first: a long-to-short sweep every 50 batches, which cost STS-B 5-9 points in one measurement."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = np.asarray(lengths), batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # each epoch its own order, the same one when a killed run resumes inside it

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order, size = rng.permutation(len(self.lengths)), self.mega * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        batches = [batches[i] for i in rng.permutation(len(batches))] + last
        return iter([int(i) for batch in batches for i in batch])


class LengthBucketing:
    """Trainer mixin: `length_buckets=True` draws the training batches from `LengthBuckets` over the examples'
    token counts, instead of the sampler `train_sampling_strategy` names."""

    def __init__(self, *args, batching, **kwargs):
        """`batching`: the stage's settings (fields `length_buckets`, `bucket_batches`)."""
        super().__init__(*args, **kwargs)
        self.length_buckets, self.bucket_batches = batching.length_buckets, batching.bucket_batches

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.length_buckets or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset.select_columns(["input_ids"]).to_dict()["input_ids"]]
        return LengthBuckets(lengths, self.args.train_batch_size, self.args.seed, self.bucket_batches)


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
