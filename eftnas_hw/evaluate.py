"""Task metrics of subnets: of an activated subnet of the super-network (PyTorch), and of an exported IR
(OpenVINO runtime). Shared by the super-network report, the search and the export; evaluation only, no training.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset

from .data import TaskSpec, compute_metrics
from .elastic import ElasticBert
from .latency import Profile, compile_ir
from .subnet import SubnetConfig


def length_batches(dataset: Dataset, batch_size: int, pad_id: int) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Examples sorted by length and padded per batch: little padding, and built once for all subnets."""
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in dataset.column_names]
    rows = dataset.select_columns(columns).to_dict()  # plain lists: indexing a datasets Column is slow
    order = np.argsort([len(ids) for ids in rows["input_ids"]], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        width = max(len(rows["input_ids"][i]) for i in index)
        batch = {}
        for c in columns:
            fill = pad_id if c == "input_ids" else 0
            batch[c] = torch.tensor([rows[c][i] + [fill] * (width - len(rows[c][i])) for i in index])
        if "attention_mask" not in batch:
            batch["attention_mask"] = (batch["input_ids"] != pad_id).long()
        batches.append((index, batch))
    return batches


class SubnetEvaluator:
    """Task metrics (data.compute_metrics; 'metric' = the main one) of activated subnets of `supernet` on one
    tokenized split. The length-sorted batches and the labels are built once, for every subnet evaluated (a
    search evaluates hundreds on the same split); an IR can be scored on the same batches (`ir_logits`)."""

    def __init__(self, supernet: ElasticBert, dataset: Dataset, spec: TaskSpec, batch_size: int = 64):
        self.supernet, self.spec, self.num_examples = supernet, spec, len(dataset)
        self.batches = length_batches(dataset, batch_size, supernet.config.pad_token_id or 0)
        self.labels = np.asarray(dataset.select_columns(["label"]).to_dict()["label"])

    def __call__(self, cfg: SubnetConfig) -> dict[str, float]:
        supernet = self.supernet
        device = next(supernet.parameters()).device
        active = supernet.active
        supernet.model.eval()
        supernet.set_active_subnet(cfg)
        logits = np.zeros((self.num_examples, supernet.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for index, batch in self.batches:
                logits[index] = supernet(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        supernet.set_active_subnet(active)
        return compute_metrics(self.spec, logits, self.labels)


def evaluate_subnets(supernet: ElasticBert, configs: Sequence[SubnetConfig], dataset: Dataset, spec: TaskSpec,
                     batch_size: int = 64) -> list[dict[str, float]]:
    """Task metrics of each subnet on a tokenized split (see SubnetEvaluator)."""
    evaluator = SubnetEvaluator(supernet, dataset, spec, batch_size)
    return [evaluator(cfg) for cfg in configs]


def ir_logits(ir: str | os.PathLike, batches: Sequence[tuple[np.ndarray, dict]], num_examples: int,
              config: dict | None = None) -> np.ndarray:
    """Logits of an IR folder/file over length-sorted batches (index, tensors), in dataset order."""
    compiled = compile_ir(ir, config or {})
    names = {inp.get_any_name() for inp in compiled.inputs}
    logits = None
    for index, batch in batches:
        out = compiled({k: np.asarray(v) for k, v in batch.items() if k in names})[0]
        if logits is None:
            logits = np.zeros((num_examples, out.shape[-1]), dtype=np.float32)
        logits[index] = out
    return logits


def runtime_config(profile: Profile) -> dict:
    """The profile's numerics (its precision hint) without its thread limits: dev evaluation is throughput."""
    return {k: v for k, v in profile.ov_config().items() if k == "INFERENCE_PRECISION_HINT"}
