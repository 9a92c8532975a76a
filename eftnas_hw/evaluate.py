"""Task metrics of models and subnets: a PyTorch model, an activated subnet of the super-network, or an exported
IR (OpenVINO runtime), all scored the same way on the same batches. Shared by fine-tuning, the super-network
report, the search and the export; evaluation only, no training.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from .data import TaskSpec, compute_metrics
from .elastic import ElasticBert
from .latency import Profile, compile_ir
from .models import head_logits
from .qa import best_answers, question_scores, squad_metrics
from .subnet import SubnetConfig

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
OUTPUT_ORDER = {"start_logits": 0, "end_logits": 1}  # a QA IR's two outputs, stacked as models.head_logits does


def length_batches(dataset: Dataset, batch_size: int, pad_id: int) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Examples sorted by length and padded per batch: little padding, and built once for all subnets."""
    columns = [c for c in MODEL_INPUTS if c in dataset.column_names]
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


class Outputs:
    """Per-example model outputs in dataset order, filled batch by batch: [N, classes] logits, or for QA [N,
    longest window, 2] start/end logits (positions past a window's end stay at -inf: never an answer)."""

    def __init__(self, num_examples: int, longest: int):
        self.num_examples, self.longest, self.values = num_examples, longest, None

    def put(self, index: np.ndarray, out: np.ndarray) -> None:
        if self.values is None:
            shape = (self.num_examples, self.longest, out.shape[-1]) if out.ndim == 3 else \
                (self.num_examples, out.shape[-1])
            self.values = np.full(shape, -np.inf if out.ndim == 3 else 0.0, dtype=np.float32)
        if out.ndim == 3:
            self.values[index, :out.shape[1]] = out
        else:
            self.values[index] = out


class Evaluator:
    """Task metrics ('metric' = the main one) of models on one tokenized split: the length-sorted batches and
    what scoring needs (labels; for QA each window's example, offsets, context and gold answers) are built once,
    for every model evaluated (a search evaluates hundreds on the same split)."""

    def __init__(self, dataset: Dataset, spec: TaskSpec, batch_size: int = 64, pad_id: int = 0, bf16: bool = False):
        self.spec, self.num_examples, self.bf16 = spec, len(dataset), bf16
        self.batches = length_batches(dataset, batch_size, pad_id)
        self.longest = max(b["input_ids"].shape[1] for _, b in self.batches)
        if spec.qa is None:
            self.labels = np.asarray(dataset.select_columns(["label"]).to_dict()["label"])
        else:
            rows = dataset.select_columns(["example", "offsets", "context", "gold"]).to_dict()
            ids = list(dict.fromkeys(rows["example"]))  # examples in order of their first window
            position = {e: i for i, e in enumerate(ids)}
            self.windows = [position[e] for e in rows["example"]]
            self.offsets = rows["offsets"]
            self.contexts, self.gold = [None] * len(ids), [None] * len(ids)
            for e, context, gold in zip(self.windows, rows["context"], rows["gold"]):
                self.contexts[e], self.gold[e] = context, gold

    def outputs(self, model: nn.Module) -> np.ndarray:
        """The model's outputs on every example (see Outputs), in inference mode (under bf16 autocast with
        `bf16`: the numerics of a bf16 deployment, 1.5x faster on an AVX512-BF16 CPU)."""
        device = next(model.parameters()).device
        model.eval()
        out = Outputs(self.num_examples, self.longest)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=self.bf16):
            for index, batch in self.batches:
                logits = head_logits(model(**{k: v.to(device) for k, v in batch.items()}))
                out.put(index, logits.float().cpu().numpy())
        return out.values

    def score(self, outputs: np.ndarray) -> dict[str, float]:
        """The task's metrics from outputs in dataset order (a model's, or an IR's from `ir_logits`)."""
        if self.spec.qa is None:
            return compute_metrics(self.spec, outputs, self.labels)
        metrics = squad_metrics(self._answers(outputs), self.gold)
        return {**metrics, "metric": metrics[self.spec.main_metric]}

    def _answers(self, outputs: np.ndarray) -> list[str]:
        """QA: each question's best answer span over its windows."""
        qa = self.spec.qa
        return best_answers(self.contexts, self.windows, self.offsets, outputs, qa.n_best, qa.max_answer_length)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.score(self.outputs(model))

    def standard_error(self, outputs: np.ndarray, resamples: int = 400, seed: int = 0) -> float:
        """Bootstrap standard error of the main metric over the split's examples (QA: its questions): how far
        apart two subnets' metrics must be before the split can tell them apart (one SST-2 sentence of 400 moves
        accuracy by 0.25 points)."""
        rng = np.random.default_rng(seed)
        if self.spec.qa is None:
            n = self.num_examples
            predictions = outputs if self.spec.is_regression else outputs.argmax(-1)
            values = [compute_metrics(self.spec, predictions[i], self.labels[i], main_only=True)["metric"]
                      for i in rng.integers(0, n, (resamples, n))]
        else:  # per-question scores, then the mean of resampled questions
            scores = question_scores(self._answers(outputs), self.gold)[self.spec.main_metric]
            values = scores[rng.integers(0, len(scores), (resamples, len(scores)))].mean(axis=1)
        return float(np.std(values, ddof=1))


# Memory for the layer outputs of evaluated subnets' leading layers (`PrefixCache`): ~12 MB per prefix on a
# 400-sentence SST-2 search split with MiniLM-L6, so ~85 prefixes, the last ~15 subnets' worth.
PREFIX_CACHE_BYTES = 1 << 30


class PrefixCache:
    """Outputs of the first k layers of subnets evaluated before, keyed by those layers' (heads, FFN width).

    NSGA-II's children share their leading layers with parents and with each other: in a default SST-2 search 27%
    of the layer compute re-ran layers some earlier subnet had run on the same inputs. A subnet whose first k layers
    were seen starts at layer k from the stored output (the same tensor its own layers would compute: same weights,
    same inputs). Least recently used prefixes go first past `max_bytes`; with the default, the same search's
    evaluations took 92 s instead of 115 (AVX2 EPYC)."""

    def __init__(self, max_bytes: int = PREFIX_CACHE_BYTES):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()

    def longest(self, layers: tuple) -> tuple[int, list[torch.Tensor] | None]:
        """(k, per-batch outputs of layer k-1) for the longest stored prefix of `layers` (k < len(layers))."""
        for k in range(len(layers) - 1, 0, -1):
            if layers[:k] in self.entries:
                self.entries.move_to_end(layers[:k])
                return k, self.entries[layers[:k]]
        return 0, None

    def put(self, prefix: tuple, outputs: list[torch.Tensor]) -> None:
        if prefix in self.entries or self.max_bytes <= 0:
            return
        self.entries[prefix] = outputs
        self.bytes += sum(t.nbytes for t in outputs)
        while self.bytes > self.max_bytes and self.entries:
            self.bytes -= sum(t.nbytes for t in self.entries.popitem(last=False)[1])


class SubnetEvaluator(Evaluator):
    """An Evaluator of activated subnets of `supernet` (the active subnet is restored after each call); the leading
    layers a subnet shares with one evaluated before are not run again (`PrefixCache`), so the super-network's
    weights must stay as they are for the evaluator's life (build a new one after training further)."""

    def __init__(self, supernet: ElasticBert, dataset: Dataset, spec: TaskSpec, batch_size: int = 64,
                 bf16: bool = False, cache_bytes: int = PREFIX_CACHE_BYTES):
        super().__init__(dataset, spec, batch_size, supernet.config.pad_token_id or 0, bf16)
        self.supernet, self.prefixes = supernet, PrefixCache(cache_bytes)

    def __call__(self, cfg: SubnetConfig) -> dict[str, float]:
        return self.score(self.subnet_outputs(cfg))

    def subnet_outputs(self, cfg: SubnetConfig) -> np.ndarray:
        supernet = self.supernet
        active = supernet.active
        supernet.set_active_subnet(cfg)
        try:
            with self._prefix_replay(tuple(zip(cfg.heads, cfg.ffn))):
                return self.outputs(supernet.model)
        finally:
            supernet.set_active_subnet(active)

    @contextlib.contextmanager
    def _prefix_replay(self, layers: tuple) -> Iterator[None]:
        """Layers 0..k-1 replay the stored output of the longest known prefix, batch by batch (they run in the
        order of `self.batches`); the outputs of layers k..n-2 are recorded as new prefixes."""
        k, stored = self.prefixes.longest(layers)
        modules = self.supernet.layers
        batch = iter(range(len(self.batches)))
        recorded = {j: [] for j in range(k, len(modules) - 1)}

        def replay(module, args):  # before layer 0 runs: point the replaying layers at this batch's output
            b = next(batch)
            for m in modules[:k]:
                m.replay = stored[b]

        def record(j):
            return lambda module, args, output: recorded[j].append(output)

        hooks = [modules[j].register_forward_hook(record(j)) for j in recorded]
        if k:
            hooks.append(modules[0].register_forward_pre_hook(replay))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            for m in modules:
                vars(m).pop("replay", None)
        for j, outputs in recorded.items():
            if len(outputs) == len(self.batches):
                self.prefixes.put(layers[:j + 1], outputs)


def evaluate_subnets(supernet: ElasticBert, configs: Sequence[SubnetConfig], dataset: Dataset, spec: TaskSpec,
                     batch_size: int = 64) -> list[dict[str, float]]:
    """Task metrics of each subnet on a tokenized split (see SubnetEvaluator)."""
    evaluator = SubnetEvaluator(supernet, dataset, spec, batch_size)
    return [evaluator(cfg) for cfg in configs]


def ir_logits(ir: str | os.PathLike, evaluator: Evaluator, config: dict | None = None) -> np.ndarray:
    """An IR's outputs (folder/file) on the evaluator's batches, in dataset order (QA: start and end logits)."""
    compiled = compile_ir(ir, config or {})
    names = {inp.get_any_name() for inp in compiled.inputs}
    out = Outputs(evaluator.num_examples, evaluator.longest)
    for index, batch in evaluator.batches:
        result = compiled({k: np.asarray(v) for k, v in batch.items() if k in names})
        values = [result[o] for o in sorted(compiled.outputs, key=lambda o: OUTPUT_ORDER.get(o.get_any_name(), 0))]
        out.put(index, values[0] if len(values) == 1 else np.stack(values, axis=-1))
    return out.values


def runtime_config(profile: Profile) -> dict:
    """The profile's numerics (its precision hint) without its thread limits: dev evaluation is throughput."""
    return {k: v for k, v in profile.ov_config().items() if k == "INFERENCE_PRECISION_HINT"}
