"""Teacher fine-tuning with the HF Trainer, accumulating EFTNAS's first-order importance (eq. 3) on the way.

S = -alpha * sum_t dL/dW^(t) * W^(t), element-wise, for the weights of every linear that can be made elastic.
-dL/dW * W is the first-order Taylor estimate of how much the loss would rise if that weight were set to zero,
so a large S marks a weight the task needs. The Trainer supplies the loop (checkpointing, resume, logging,
mixed precision, accelerate/torchrun); `ImportanceCallback` only reads gradients just before each optimizer
step, when they are complete (accumulated over micro-batches and synchronised across processes).
"""
from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from .errors import UserError
from .files import write_json_atomic
from .subnet import BertShape

SCORES_NAME = "importance.safetensors"
METRICS_NAME = "metrics.json"
ELASTIC_SUFFIXES = ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                    "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight")


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


def elastic_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of every elastic linear: Q, K, V, attention output, FFN intermediate and output."""
    return [name for name, _ in model.named_parameters()
            if ".encoder.layer." in name and name.endswith(ELASTIC_SUFFIXES)]


class ImportanceCallback(TrainerCallback):
    """Accumulates S = -alpha * sum_t grad * W over optimizer steps; saved beside every Trainer checkpoint."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha
        self.scores: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model: nn.Module = None, **kwargs):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in elastic_weight_names(model):
                p = params[name]
                if p.grad is None:
                    continue
                step = -self.alpha * p.grad.float() * p.float()
                self.scores[name] = step + self.scores[name].to(step.device) if name in self.scores else step

    def on_save(self, args, state, control, **kwargs):
        """Scores are training state: a resumed run must continue the sum, so each checkpoint carries it."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir() and self.scores:
            save_scores(self.scores, checkpoint / SCORES_NAME)

    def resume_from(self, checkpoint: str | os.PathLike) -> None:
        path = Path(checkpoint) / SCORES_NAME
        if not path.is_file():
            raise UserError(f"checkpoint {checkpoint} has no {SCORES_NAME}; remove it to restart fine-tuning")
        self.scores = load_scores(path)


def save_scores(scores: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """safetensors written to a temporary name, then renamed (a checkpoint never holds half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in scores.items()}, str(tmp))
    os.replace(tmp, path)


def load_scores(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Raw element scores from importance.safetensors, or from a fine-tuning output folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_NAME
    if not path.is_file():
        raise UserError(f"importance scores not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"importance scores {path} are corrupt ({e})") from None


def _layer_weight(scores: dict[str, torch.Tensor], layer: int, suffix: str) -> torch.Tensor:
    key = f"encoder.layer.{layer}.{suffix}"
    matches = [v for k, v in scores.items() if k.endswith(key) and (k == key or k[: -len(key)].endswith("."))]
    if len(matches) != 1:
        raise UserError(f"importance scores have no single entry for {key} (wrong model or truncated file?)")
    return matches[0].float()


def layer_scores(scores: dict[str, torch.Tensor], shape: BertShape, layer: int) -> dict[str, torch.Tensor]:
    """One layer's element scores keyed by the short names query, key, value, attention_output, intermediate,
    output, checked against `shape`."""
    names = ("query", "key", "value", "attention_output", "intermediate", "output")
    out = {n: _layer_weight(scores, layer, s) for n, s in zip(names, ELASTIC_SUFFIXES)}
    inner, hd, ffn = shape.num_heads * shape.head_size, shape.hidden_size, shape.intermediate_size
    expected = {"query": (inner, hd), "key": (inner, hd), "value": (inner, hd), "attention_output": (hd, inner),
                "intermediate": (ffn, hd), "output": (hd, ffn)}
    for n, t in out.items():
        if tuple(t.shape) != expected[n]:
            raise UserError(f"layer {layer} {n} scores have shape {tuple(t.shape)}, the model needs {expected[n]}")
    return out


def head_importance(scores: dict[str, torch.Tensor], shape: BertShape) -> torch.Tensor:
    """[L, H]: mean element score over everything removing a head removes (its Q, K, V rows and output columns).

    Q and K are combined as in the paper. V and the attention-output columns are included too because removing
    a head deletes them as well, and the first-order estimate of the loss change of removing a group of weights
    is the sum of their element terms; leaving them out would ignore the path through which the head writes
    to the residual stream. All heads hold the same number of weights, so the mean ranks like the sum.
    """
    rows = []
    for layer in range(shape.num_layers):
        s = layer_scores(scores, shape, layer)
        qkv = torch.cat([s["query"], s["key"], s["value"]], dim=1).view(shape.num_heads, -1)
        out = s["attention_output"].T.reshape(shape.num_heads, -1)
        rows.append(torch.cat([qkv, out], dim=1).mean(dim=1))
    return torch.stack(rows)


def channel_importance(scores: dict[str, torch.Tensor], shape: BertShape) -> torch.Tensor:
    """[L, F]: mean element score of each FFN channel's intermediate row and output column."""
    rows = []
    for layer in range(shape.num_layers):
        s = layer_scores(scores, shape, layer)
        rows.append(torch.cat([s["intermediate"], s["output"].T], dim=1).mean(dim=1))
    return torch.stack(rows)


def finetune(model_name: str | os.PathLike | None, task: str, out_dir: str | os.PathLike,
             data_dir: str | os.PathLike | None = None, epochs: float = 3.0, score_epochs: float = 0.0,
             max_train: int | None = None, batch_size: int = 32, lr: float = 5e-5, seed: int = 0,
             resume: bool = True, max_length: int = 128, alpha: float = 1.0, save_steps: int = 500,
             overwrite: bool = False) -> dict | None:
    """Fine-tune the teacher and score its elastic weights in one Trainer run; returns the dev metrics
    (None in the other processes of a multi-process launch: the main one writes the outputs).

    The run lasts `epochs + score_epochs` epochs under one learning-rate schedule and the scores cover every
    optimizer step (`score_epochs` are the paper's extra scoring epochs after convergence). `out_dir` receives
    the teacher (HF folder + tokenizer), importance.safetensors and metrics.json, all at once at the end.
    Checkpoints go to `<out_dir>.checkpoints`; with `resume`, an interrupted run continues from the last one.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from .data import compute_metrics, load_task, task_spec, tokenize_task
    from .models import load_model, load_tokenizer, save_model

    spec = task_spec(task)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"output folder {out_dir} exists (pass --overwrite to replace it)")
    if epochs + score_epochs <= 0:
        raise UserError("fine-tuning needs epochs + score-epochs > 0")
    work = out_dir.with_name(out_dir.name + ".checkpoints")
    if not resume and training_processes().is_main_process:
        shutil.rmtree(work, ignore_errors=True)
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, num_labels=spec.num_labels,
                       problem_type="regression" if spec.is_regression else "single_label_classification")
    splits = load_task(task, data_dir, seed=seed, max_train=max_train)
    del splits["search"]  # kept apart for the architecture search; the teacher never sees it
    data = tokenize_task(splits, tokenizer, task, max_length)

    args = TrainingArguments(
        output_dir=str(work), num_train_epochs=epochs + score_epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size, learning_rate=lr, seed=seed, save_strategy="steps",
        save_steps=save_steps, save_total_limit=1, logging_steps=50, eval_strategy="no", report_to="none",
        dataloader_num_workers=0, use_cpu=cpu_only())
    importance = ImportanceCallback(alpha)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids),
                      callbacks=[importance])
    checkpoint = get_last_checkpoint(str(work)) if resume and work.is_dir() else None
    if checkpoint:
        importance.resume_from(checkpoint)
        print(f"resuming from {checkpoint}")
    train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
    dev = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    metrics = {"task": task, "model": str(model_name or "minilm-l6"), "main_metric": spec.main_metric,
               "dev": dev, "train_examples": len(data["train"]), "epochs": epochs, "score_epochs": score_epochs,
               "optimizer_steps": trainer.state.global_step, "processes": args.world_size,
               "train_runtime_s": train_metrics.get("train_runtime"),
               "alpha": alpha, "seed": seed}
    if not trainer.is_world_process_zero():
        return None  # under torchrun / `accelerate launch` the main process writes and reports
    # The teacher folder itself holds the scores and metrics, so it serves as both --model and --scores later.
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(trainer.model, staging, tokenizer)
    save_scores(importance.scores, staging / SCORES_NAME)
    write_json_atomic(staging / METRICS_NAME, metrics)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return metrics
