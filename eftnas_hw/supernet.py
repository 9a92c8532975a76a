"""The weight-sharing super-network (EFTNAS 3.3): reordered teacher weights trained with the sandwich rule + KD.

Every optimizer step trains the smallest, `num_random` random and the largest subnets of the search space on
the same batch, accumulating their gradients (under DDP exchanged once, after the largest), each distilled from
the frozen fine-tuned teacher with
    L = kd_alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + ce_alpha * CE(student, labels)
(regression: MSE to the teacher's output + MSE to the labels; extractive QA: the same KL + CE over the token
positions, once for the start and once for the end logits, averaged). It is a `transformers.Trainer` subclass, so
checkpointing, resume, logging and accelerate/torchrun come from the library. Random subnets are drawn from an
RNG seeded by (seed, global_step): a run killed and resumed from its last checkpoint draws the same subnets as
an uninterrupted one (the Trainer restores the data order, dropout RNG and optimizer state).
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .context import RunContext
from .elastic import ElasticBert
from .errors import UserError
from .data import check_trained_task
from .evaluate import evaluate_subnets
from .finetune import METRICS_NAME
from .files import atomic_output_dir, check_writable, read_json, write_json_atomic
from .importance import SCORES_NAME, load_scores
from .models import head_logits, load_model, save_model
from .reorder import reorder_model
from .runtime import (CheckpointEveryMinutes, LengthBucketing, batching_args, check_bf16, prepare_checkpoints,
                      training_processes)
from .settings import SupernetSettings
from .subnet import BertShape, SearchSpace, SubnetConfig
from .unpadding import unpad_feed_forward

SPACE_FILE = "search_space.json"
ORDERING_FILE = "ordering.json"
REPORT_FILE = "report.json"
LABEL_KEYS = ("labels", "start_positions", "end_positions")  # the targets in a batch, never model inputs


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, is_regression: bool,
                      kd_alpha: float, ce_alpha: float, temperature: float) -> torch.Tensor:
    """EFTNAS eq. 4-6: alpha_KD * T^2 * KL(teacher_T || student_T) + alpha_ce * CE; MSE terms for regression.
    QA (`student` [batch, tokens, 2], `labels` [batch, 2]: start and end positions): the classification loss over
    token positions for the start and for the end, averaged."""
    if student.ndim == 3:
        return sum(distillation_loss(student[..., i], teacher[..., i], labels[:, i], False, kd_alpha, ce_alpha,
                                     temperature) for i in range(2)) / 2
    if is_regression:
        student = student.squeeze(-1)
        return kd_alpha * F.mse_loss(student, teacher.squeeze(-1)) + ce_alpha * F.mse_loss(student, labels.float())
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                  reduction="batchmean")
    return kd_alpha * t * t * kl + ce_alpha * F.cross_entropy(student, labels)


def sandwich_subnets(space: SearchSpace, num_random: int, seed: int, step: int) -> list[SubnetConfig]:
    """Smallest, `num_random` random and (last) the largest subnet for optimizer step `step` (a pure function of
    both). The largest comes last because it uses every trained weight: its backward alone synchronises DDP."""
    rng = random.Random(seed * 1_000_003 + step)
    return [space.smallest()] + [space.sample(rng) for _ in range(num_random)] + [space.largest()]


def fixed_subnets(space: SearchSpace, num_random: int, seed: int = 0) -> dict[str, SubnetConfig]:
    """The subnets reports compare across runs: largest, smallest and `num_random` seeded random ones."""
    rng = random.Random(seed)
    named = {"largest": space.largest(), "smallest": space.smallest()}
    named.update({f"random_{i}": space.sample(rng) for i in range(num_random)})
    return named


class SandwichTrainer(LengthBucketing, Trainer):
    """HF Trainer whose step trains several subnets of one ElasticBert on a batch, distilled from a teacher."""

    def __init__(self, *args: Any, supernet: ElasticBert, space: SearchSpace, teacher: nn.Module,
                 settings: SupernetSettings, is_regression: bool, **kwargs: Any):
        super().__init__(*args, model=supernet.model, **kwargs)
        self.supernet, self.space, self.settings, self.is_regression = supernet, space, settings, is_regression
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.model_accepts_loss_kwargs = False  # our loss is a batch mean: let the Trainer scale it for accumulation

    def _teacher_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # under bf16 training the frozen teacher runs in bf16 too (the losses are computed in f32)
        with torch.no_grad(), torch.autocast(self.args.device.type, torch.bfloat16, enabled=self.args.bf16):
            return head_logits(self.teacher(**{k: v for k, v in inputs.items() if k not in LABEL_KEYS})).float()

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = self._prepare_inputs(inputs)
        inputs["teacher_logits"] = self._teacher_logits(inputs)  # once per batch, shared by all subnets
        s = self.settings
        losses = []
        subnets = sandwich_subnets(self.space, s.num_random, self.args.seed, self.state.global_step)
        for i, cfg in enumerate(subnets):
            self.supernet.set_active_subnet(cfg)
            # Under DDP the earlier subnets' gradients accumulate locally and the last backward (the largest)
            # all-reduces the sum: one gradient exchange per step instead of one per subnet.
            with contextlib.nullcontext() if i == len(subnets) - 1 else self.accelerator.no_sync(model):
                losses.append(super().training_step(model, dict(inputs), num_items_in_batch))
        return torch.stack(losses).mean()  # gradients are summed over the subnets; the log shows their mean loss

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        teacher = inputs.pop("teacher_logits", None)
        if teacher is None:
            teacher = self._teacher_logits(inputs)
        if "labels" in inputs:
            labels = inputs.pop("labels")
        else:  # QA: the answer's start and end token
            labels = torch.stack([inputs.pop("start_positions"), inputs.pop("end_positions")], dim=-1)
        outputs = model(**inputs)
        s = self.settings
        loss = distillation_loss(head_logits(outputs).float(), teacher, labels, self.is_regression, s.kd_alpha,
                                 s.ce_alpha, s.temperature)
        return (loss, outputs) if return_outputs else loss


def fit_supernet(supernet: ElasticBert, teacher: nn.Module, space: SearchSpace, train: Dataset, tokenizer: Any,
                 work_dir: str | os.PathLike, settings: SupernetSettings, seed: int, is_regression: bool,
                 resume: bool = True, callbacks: Sequence[TrainerCallback] = ()) -> int:
    """Train `supernet` in place; checkpoints go to `work_dir`, and resume=True continues from its last one.

    Returns the number of optimizer steps taken in total.
    """
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=settings.batch_size, learning_rate=settings.lr,
        weight_decay=settings.weight_decay, num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        lr_scheduler_type="cosine", seed=seed, save_strategy="no", save_total_limit=2,
        logging_steps=settings.logging_steps,
        # torch's fused AdamW (transformers' default, which fine-tuning uses): the same update as "adamw_torch",
        # whose per-tensor loop took 128 ms of every ~1 s step here, fused 17 ms (MiniLM-L6's 22.7M weights, the
        # embeddings' dense gradients included; 2-vCPU AVX2 EPYC)
        optim="adamw_torch_fused",
        report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
        ddp_find_unused_parameters=True,  # a small subnet leaves most weights without gradient
        **batching_args(settings))
    trainer = SandwichTrainer(args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                              processing_class=tokenizer, supernet=supernet, space=space,
                              callbacks=[CheckpointEveryMinutes(settings.save_minutes), *callbacks],
                              teacher=teacher, settings=settings, is_regression=is_regression,
                              batching=settings)
    checkpoint = get_last_checkpoint(str(work_dir)) if resume and Path(work_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    supernet.model.eval()
    return trainer.state.global_step


def load_search_space(path: str | os.PathLike) -> SearchSpace:
    """A search space JSON: `SearchSpace.to_dict()` itself, or a larger record holding it under 'space'."""
    data = read_json(path, "search space")
    if not isinstance(data, dict):
        raise UserError(f"search space {path} is not a JSON object")
    return SearchSpace.from_dict(data.get("space", data))


def load_supernet(path: str | os.PathLike) -> tuple[ElasticBert, SearchSpace]:
    """A trained super-network folder -> (ElasticBert in eval mode with its full weights, its search space)."""
    space = load_search_space(Path(path) / SPACE_FILE)
    supernet = ElasticBert(load_model(path))
    space.validate(supernet.shape)
    supernet.model.eval()
    return supernet, space


def train_supernet(ctx: RunContext, teacher_dir: str | os.PathLike, space: SearchSpace, out_dir: str | os.PathLike,
                   settings: SupernetSettings = SupernetSettings(), resume: bool = True,
                   overwrite: bool = False) -> dict | None:
    """Reorder the teacher by `settings.reorder`, train the super-network, write it to `out_dir`; returns the
    report (dev metrics of the largest, smallest and a few seeded random subnets).

    Under torchrun / `accelerate launch` every process trains; only the main one writes and returns the report.
    Checkpoints live in `<out_dir>.partial` until the run completes; calling again with the same arguments resumes
    there.
    """
    out_dir, teacher_dir = Path(out_dir), Path(teacher_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"output folder {out_dir} exists (pass --overwrite to replace it)")
    check_writable(out_dir)
    check_trained_task(teacher_dir / METRICS_NAME, ctx.spec.name, "teacher")
    teacher = unpad_feed_forward(load_model(teacher_dir, qa=ctx.spec.qa is not None))  # (other heads refused)
    shape = BertShape.from_config(teacher.config)
    space.validate(shape)
    if shape.num_labels != ctx.spec.num_labels:
        raise UserError(f"teacher {teacher_dir} has {shape.num_labels} outputs, task {ctx.spec.name} needs "
                        f"{ctx.spec.num_labels}")
    scores = None  # inputs are all checked before any work is done
    if settings.reorder == "first-order":
        if not (teacher_dir / SCORES_NAME).is_file():
            raise UserError(f"{teacher_dir / SCORES_NAME} not found: first-order reordering needs the fine-tuning "
                            f"importance scores (or choose --reorder l1/none)")
        scores = load_scores(teacher_dir)
    student = load_model(teacher_dir)
    ordering = reorder_model(student, settings.reorder, scores)
    supernet = ElasticBert(student)
    train = ctx.tokenized(ctx.train(settings.max_train))
    work_dir = out_dir.with_name(out_dir.name + ".partial")
    record = {"teacher": str(teacher_dir.resolve()), "task": ctx.spec.name, "seed": ctx.config.seed,
              "max_length": ctx.config.max_length, "space": space.to_dict(), "settings": settings.to_dict()}
    prepare_checkpoints(work_dir, record, resume)

    started = time.perf_counter()
    steps = fit_supernet(supernet, teacher, space, train, ctx.tokenizer, work_dir, settings, ctx.config.seed,
                         ctx.spec.is_regression, resume)
    train_seconds = time.perf_counter() - started
    if not training_processes().is_main_process:
        return None  # the main process evaluates, writes and reports

    named = fixed_subnets(space, settings.report_random, ctx.config.seed)
    metrics = evaluate_subnets(supernet, list(named.values()), ctx.dev, ctx.spec)
    seq_len = ctx.profile.seq_len
    report = {"task": ctx.spec.name, "train_examples": len(train), "steps": steps,
              "train_seconds_this_run": round(train_seconds, 1), "processes": training_processes().num_processes,
              "settings": settings.to_dict(), "trained_in": "bf16" if check_bf16(settings.bf16) else "f32",
              "seed": ctx.config.seed, "split": "validation", "gmacs_seq_len": seq_len,
              "subnets": [{"name": n, "subnet": c.to_dict(), "gmacs": round(c.gmacs(shape, seq_len), 4),
                           "params": c.params(shape), **{k: round(v, 5) for k, v in m.items()}}
                          for (n, c), m in zip(named.items(), metrics)]}
    with atomic_output_dir(out_dir, overwrite) as tmp:
        save_model(supernet.model, tmp, ctx.tokenizer, overwrite=True)
        write_json_atomic(tmp / SPACE_FILE, space.to_dict())
        write_json_atomic(tmp / ORDERING_FILE, ordering.to_dict())
        write_json_atomic(tmp / REPORT_FILE, report)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report
