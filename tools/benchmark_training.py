"""How fast does the super-network train here: f32 or bf16 autocast, random or length-grouped batches, with or
without a random subnet in the sandwich? How fast does the fine-tune, with and without its feed-forward blocks
on real tokens only? And where does a run's time go?

    python tools/benchmark_training.py [--steps 24] [--rounds 2] [--max-length 64] [--num-random 1]
        [--sampling random length_buckets] [--finetune] [--run RUN]

Times the real training loop (`supernet.fit_supernet`: the sandwich rule, the teacher's forward, the distillation
loss, AdamW) on the packaged MiniLM-L6 with SST-2 sentences (real ones from $EFTNAS_GLUE_DIR or
../shared/data/glue, else made-up ones of the same length) at the quick run's batch of 32. Each measurement trains
two epochs of 32 x steps sentences and times the second (the first builds the optimizer and warms up; a whole
epoch, because batch costs vary with their lengths), every mode interleaved in rounds; prints one JSON line per
measurement, the medians (optimizer steps per second) and each mode's speed-up over f32 with random batches. bf16
is measured only where the CPU computes in it (AVX512-BF16, AMX). With --run, it also prints the wall-clock each
stage of that run folder took (its stages.json). With --finetune, it also times the fine-tune's Trainer (HF
Trainer, random batches of 32, the packaged MiniLM-L6 with a new head) with padded and unpadded feed-forward blocks
(`unpadding.py`), interleaved, the last `steps` of 2 x steps optimizer steps.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from eftnas_hw.context import RunContext
from eftnas_hw.data import DEFAULT_TASK
from eftnas_hw.elastic import ElasticBert
from eftnas_hw.models import load_model
from eftnas_hw.pipeline import RECORD_NAME
from eftnas_hw.runtime import native_bf16
from eftnas_hw.settings import RunConfig, SupernetSettings
from eftnas_hw.subnet import BertShape, SearchSpace
from eftnas_hw.supernet import fit_supernet
from eftnas_hw.unpadding import unpad_feed_forward

REPO = Path(__file__).resolve().parents[1]


class StepTimer(TrainerCallback):
    """Records when each optimizer step ends."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def steps_per_second(ctx: RunContext, space: SearchSpace, train, steps: int, mode: "Mode") -> float:
    """Optimizer steps per second over the second of two epochs of `train` (`steps` batches each)."""
    teacher = load_model(None, num_labels=2)
    supernet = ElasticBert(load_model(None, num_labels=2))
    settings = SupernetSettings(max_steps=2 * steps, batch_size=32, num_random=mode.num_random, bf16=mode.bf16,
                                save_minutes=1e6, **({mode.sampling: True} if mode.sampling != "random" else {}))
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="eftnas-bench-") as work:
        fit_supernet(supernet, teacher, space, train, ctx.tokenizer, work, settings, 0, False, resume=False,
                     callbacks=[timer])
    return steps / (timer.ends[-1] - timer.ends[steps - 1])


def finetune_steps_per_second(ctx: RunContext, train, steps: int, unpadded: bool) -> float:
    """Fine-tuning optimizer steps per second over the last `steps` of 2 x steps (random batches of 32)."""
    model = load_model(None, num_labels=2)
    if unpadded:
        unpad_feed_forward(model)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="eftnas-bench-") as work:
        args = TrainingArguments(output_dir=work, per_device_train_batch_size=32, max_steps=2 * steps, seed=0,
                                 learning_rate=5e-5, report_to="none", save_strategy="no", disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=train, processing_class=ctx.tokenizer,
                callbacks=[timer]).train()
    return steps / (timer.ends[-1] - timer.ends[steps - 1])


@dataclass(frozen=True)
class Mode:
    bf16: bool
    num_random: int
    sampling: str

    def __str__(self) -> str:
        return f"{'bf16' if self.bf16 else 'f32'}, {self.num_random} random, {self.sampling}"


def training_data(ctx: RunContext, n: int):
    """Real SST-2 training sentences when the GLUE folder is here, else made-up sentences of their length."""
    from datasets import Dataset

    glue = Path(os.environ.get("EFTNAS_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    if (glue / "SST-2").is_dir():
        ctx.config = ctx.config.merged({"data_dir": str(glue)})
        return ctx.tokenized(ctx.train(n)), "SST-2 training sentences"
    words = "a gripping and beautifully acted film that never quite finds its own voice".split()
    rows = {"text": [" ".join(words[: 6 + i % 9] * 2) for i in range(n)], "label": [i % 2 for i in range(n)]}
    encoded = Dataset.from_dict(rows).map(lambda b: ctx.tokenizer(b["text"], truncation=True,
                                                                  max_length=ctx.config.max_length),
                                          batched=True, remove_columns=["text"])
    return encoded, "made-up sentences (no GLUE folder found)"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per epoch (two epochs per fit)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all modes")
    parser.add_argument("--max-length", type=int, default=64, help="token truncation (the quick run's: 64)")
    parser.add_argument("--num-random", type=int, nargs="+", default=[1],
                        help="random subnets per sandwich step to measure (the quick run's: 1)")
    parser.add_argument("--sampling", nargs="+", default=["random", "length_buckets"],
                        choices=["random", "length_buckets", "group_by_length"],
                        help="batch sampling to measure (group_by_length: HF's LengthGroupedSampler)")
    parser.add_argument("--finetune", action="store_true",
                        help="also time the fine-tune with padded and unpadded feed-forward blocks")
    parser.add_argument("--run", help="a run folder: print its stages' wall-clock too")
    args = parser.parse_args()

    ctx = RunContext(RunConfig(task=DEFAULT_TASK, max_length=args.max_length))
    train, source = training_data(ctx, 32 * args.steps)
    shape = BertShape.from_config(load_model(None, num_labels=2).config)
    space = SearchSpace(tuple((3, 6, 12) for _ in range(shape.num_layers)),
                        tuple((384, 768, 1536) for _ in range(shape.num_layers)))
    modes = [Mode(bf16, k, sampling) for k in args.num_random for sampling in args.sampling
             for bf16 in [False] + ([True] if native_bf16() else [])]
    results = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            results[mode].append(steps_per_second(ctx, space, train, args.steps, mode))
            print(json.dumps({"round": r, "mode": str(mode), "steps_per_s": round(results[mode][-1], 4)}),
                  flush=True)
    finetune = {False: [], True: []}
    for r in range(args.rounds if args.finetune else 0):
        for unpadded in finetune:
            finetune[unpadded].append(finetune_steps_per_second(ctx, train, args.steps, unpadded))
            print(json.dumps({"round": r, "mode": f"fine-tune, {'unpadded' if unpadded else 'padded'} feed-forward",
                              "steps_per_s": round(finetune[unpadded][-1], 4)}), flush=True)
    medians = {m: statistics.median(v) for m, v in results.items()}
    summary = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "data": source,
               "max_length": args.max_length, "batch": 32, "sentences": len(train),
               "steps_per_s_median": {str(m): round(v, 4) for m, v in medians.items()},
               "speedup_over_f32_random_batches": {
                   str(m): round(v / medians[Mode(False, m.num_random, "random")], 3)
                   for m, v in medians.items() if Mode(False, m.num_random, "random") in medians}}
    if args.finetune:
        padded, unpadded = (statistics.median(finetune[u]) for u in (False, True))
        summary["finetune_steps_per_s_median"] = {"padded": round(padded, 4), "unpadded": round(unpadded, 4)}
        summary["finetune_unpadded_speedup"] = round(unpadded / padded, 3)
    if not native_bf16():
        summary["bf16"] = "not measured: this CPU has neither AVX512-BF16 nor AMX"
    if args.run:
        record = json.loads((Path(args.run) / RECORD_NAME).read_text())
        summary["stage_seconds"] = {k.removesuffix("_seconds"): v for k, v in record.items()
                                    if k.endswith("_seconds")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
