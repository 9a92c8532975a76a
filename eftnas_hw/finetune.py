"""Teacher fine-tuning with the HF Trainer, accumulating EFTNAS's first-order importance (eq. 3) on the way.

The Trainer supplies the loop (checkpointing, resume, logging, mixed precision, accelerate/torchrun);
`importance.ImportanceCallback` reads the gradients before each optimizer step. The teacher folder holds the
model, the tokenizer, importance.safetensors and metrics.json, so it serves as both the model and the scores later.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .context import RunContext
from .evaluate import Evaluator
from .errors import UserError
from .files import atomic_output_dir, check_writable, json_digest, write_json_atomic
from .importance import SCORES_NAME, ImportanceCallback, save_scores
from .models import check_head, load_config, load_model, save_model
from .runtime import CheckpointEveryMinutes, LengthBucketing, batching_args, prepare_checkpoints
from .settings import FinetuneSettings
from .unpadding import unpad_feed_forward

METRICS_NAME = "metrics.json"


class BucketedTrainer(LengthBucketing, Trainer):
    """The HF Trainer, with `length_buckets`: batches of similar lengths in random order (runtime.LengthBuckets)."""


def finetune(ctx: RunContext, out_dir: str | os.PathLike, settings: FinetuneSettings = FinetuneSettings(),
             resume: bool = True, overwrite: bool = False) -> dict | None:
    """Fine-tune `ctx`'s model on its task and score its elastic weights in one Trainer run; returns the dev
    metrics (None in the other processes of a multi-process launch: the main one writes the outputs).

    The run lasts `epochs + score_epochs` epochs under one learning-rate schedule and the scores cover every
    optimizer step (`score_epochs` are the paper's extra scoring epochs after convergence). With an already
    fine-tuned teacher (`ctx.config.teacher`) the same run is a scoring pass: `scoring_epochs` at learning rate 0,
    so the gradients are read and the weights stay the teacher's. `out_dir` receives everything at once at the
    end. Checkpoints go to `<out_dir>.checkpoints`; with `resume`, an interrupted run continues from the last one.
    """
    out_dir, config, spec = Path(out_dir), ctx.config, ctx.spec
    scoring_only = config.teacher is not None
    if out_dir.exists() and not overwrite:
        raise UserError(f"output folder {out_dir} exists (pass --overwrite to replace it)")
    check_writable(out_dir)
    qa = spec.qa is not None
    base = load_config(config.base_model)
    check_head(base, config.base_model, qa)  # a fine-tuned teacher with the other head
    outputs = base.num_labels if scoring_only and not qa else spec.num_labels
    if outputs != spec.num_labels:
        raise UserError(f"teacher {config.teacher} has {outputs} outputs, the data of {spec.name} needs "
                        f"{spec.num_labels}")
    train = ctx.train(settings.max_train)  # the search split is kept apart: never seen here
    work = out_dir.with_name(out_dir.name + ".checkpoints")
    prepare_checkpoints(work, {"model": str(config.base_model), "task": spec.name, "seed": config.seed,
                               "max_length": config.max_length, "train": json_digest(list(train["idx"])),
                               "settings": settings.to_dict()}, resume)
    # A new classifier head is drawn from torch's global RNG, which a process seeds at random: seed it first, or
    # the same run config gives another teacher (and another search space and front) every time.
    set_seed(config.seed)
    model = load_model(config.base_model, num_labels=spec.num_labels, label_names=spec.label_names, qa=qa,
                       problem_type="regression" if spec.is_regression else "single_label_classification")
    unpad_feed_forward(model)  # random batches pad to 3x their tokens; the saved model is plain transformers
    train = ctx.tokenized(train)
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.scoring_epochs if scoring_only else settings.epochs + settings.score_epochs,
        learning_rate=0.0 if scoring_only else settings.lr, weight_decay=0.0,
        per_device_eval_batch_size=2 * settings.batch_size, seed=config.seed, save_strategy="no",
        save_total_limit=1, logging_steps=50, eval_strategy="no", report_to="none", dataloader_num_workers=0,
        **batching_args(settings))
    importance = ImportanceCallback(settings.alpha)
    trainer = BucketedTrainer(model=model, args=args, train_dataset=train, processing_class=ctx.tokenizer,
                              data_collator=DataCollatorWithPadding(ctx.tokenizer),
                              callbacks=[importance, CheckpointEveryMinutes(settings.save_minutes)],
                              batching=settings)
    checkpoint = get_last_checkpoint(str(work)) if resume and work.is_dir() else None
    if checkpoint:
        importance.resume_from(checkpoint)
        print(f"resuming from {checkpoint}")
    train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
    if not trainer.is_world_process_zero():
        return None  # under torchrun / `accelerate launch` the main process evaluates, writes and reports
    dev = Evaluator(ctx.dev, spec, 2 * settings.batch_size, ctx.tokenizer.pad_token_id or 0)(trainer.model)
    metrics = {"task": spec.name, "model": str(config.base_model or "minilm-l6"), "main_metric": spec.main_metric,
               "fine_tuned_here": not scoring_only, "label_names": list(spec.label_names),
               "dev": dev, "train_examples": len(train), "settings": settings.to_dict(), "seed": config.seed,
               "trained_in": "bf16" if args.bf16 else "f32",
               "optimizer_steps": trainer.state.global_step, "processes": args.world_size,
               "train_runtime_s": train_metrics.get("train_runtime")}
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        save_model(trainer.model, tmp, ctx.tokenizer, overwrite=True)
        save_scores(importance.scores, tmp / SCORES_NAME)
        write_json_atomic(tmp / METRICS_NAME, metrics)
    shutil.rmtree(work, ignore_errors=True)
    return metrics
