"""The SQuAD teacher of the README's QA results: MiniLM-L6 fine-tuned for extractive QA on a GPU machine, then
handed to `eftnas-hw run --teacher` like any fine-tuned checkpoint a user brings.

    python tools/squad_teacher_gpu.py prepare work/dev     # here: windows of the run's train/search splits
    python3 tools/squad_teacher_gpu.py train work/dev OUT  # on the GPU machine (torch + transformers only)
    python tools/squad_teacher_gpu.py assemble OUT work/squad-teacher   # here: an HF folder

Why a GPU: fine-tuning MiniLM-L6 on 7,982 windows of 384 tokens takes about 0.2 s per window per epoch on the
2-core CPUs here (~27 min an epoch); on an H100 an epoch took 5-6 s. The splits are the run's own
(`results/squad/config.yaml`: SQuAD v1.1 dev split by article, seed 0), so the teacher never sees the evaluation
or the search articles; the learning rate and epoch are chosen by F1 on the search split, never on the evaluation
split. The GPU machine has no `datasets` and no OpenVINO: windows travel pre-tokenized (numpy), the packaged
weights as an fp16 copy, and the result comes back as fp16 in three chunks (the machine returns files of at most
16 MiB). The same teacher can be trained here, slowly, with `eftnas-hw finetune --train-file ... --epochs 5
--lr 2e-4` (the recipe chosen below).
"""
from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATES = ((1e-4, 8), (2e-4, 6))  # (learning rate, epochs); an epoch's checkpoint is chosen by search F1
BATCH = 32


def prepare(out: Path) -> None:
    from safetensors.torch import save_file

    from eftnas_hw.data import data_source, load_data, tokenize
    from eftnas_hw.evaluate import Evaluator
    from eftnas_hw.models import load_model, load_tokenizer
    from eftnas_hw.settings import RunConfig

    config = RunConfig.load(REPO / "results/squad/config.yaml")
    splits, spec = load_data(data_source(None, None, config.data), seed=config.seed)
    tokenizer = load_tokenizer(None)
    out.mkdir(parents=True, exist_ok=True)
    train = tokenize(splits["train"], tokenizer, spec)
    search = tokenize(splits["search"], tokenizer, spec, training=False)

    def pad(rows: list, dtype) -> np.ndarray:
        array = np.zeros((len(rows), spec.qa.window), dtype=dtype)
        for i, r in enumerate(rows):
            array[i, :len(r)] = r
        return array

    np.savez_compressed(out / "train.npz", input_ids=pad(train["input_ids"], np.uint16),
                        token_type_ids=pad(train["token_type_ids"], np.uint8),
                        start=np.array(train["start_positions"], np.int16),
                        end=np.array(train["end_positions"], np.int16))
    np.savez_compressed(out / "search.npz", input_ids=pad(search["input_ids"], np.uint16),
                        token_type_ids=pad(search["token_type_ids"], np.uint8))
    scoring = Evaluator(search, spec)  # what scoring a window needs, as plain lists (the GPU has no `datasets`)
    with open(out / "search.pkl", "wb") as f:
        pickle.dump({"windows": scoring.windows, "offsets": [[tuple(o) for o in w] for w in scoring.offsets],
                     "contexts": scoring.contexts, "gold": [list(g) for g in scoring.gold]}, f)
    model = load_model(None, qa=True)
    (out / "minilm").mkdir(exist_ok=True)
    model.config.save_pretrained(out / "minilm")
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(out / "minilm/model.safetensors"))
    print(f"{len(train)} training windows, {len(search)} search windows in {out}")


def train(data: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForQuestionAnswering

    sys.path.insert(0, str(REPO))
    from eftnas_hw.qa import best_answers, squad_metrics  # numpy only: no datasets, no OpenVINO needed

    device = torch.device("cuda")
    tr, se = np.load(data / "train.npz"), np.load(data / "search.npz")
    with open(data / "search.pkl", "rb") as f:
        meta = pickle.load(f)
    ids, types = (torch.tensor(tr[k].astype(np.int64)) for k in ("input_ids", "token_type_ids"))
    starts, ends = (torch.tensor(tr[k].astype(np.int64)) for k in ("start", "end"))
    search_ids, search_types = (torch.tensor(se[k].astype(np.int64)) for k in ("input_ids", "token_type_ids"))

    def search_f1(model) -> dict:
        model.eval()
        outs = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(0, len(search_ids), 256):
                x = search_ids[i:i + 256].to(device)
                o = model(input_ids=x, token_type_ids=search_types[i:i + 256].to(device),
                          attention_mask=(x != 0).long())
                outs.append(torch.stack([o.start_logits, o.end_logits], -1).float().cpu())
        logits = torch.cat(outs).numpy()
        for i, offsets in enumerate(meta["offsets"]):
            logits[i, len(offsets):] = -np.inf
        model.train()
        return squad_metrics(best_answers(meta["contexts"], meta["windows"], meta["offsets"], logits), meta["gold"])

    base = load_file(str(data / "minilm/model.safetensors"))
    config = BertConfig.from_pretrained(data / "minilm")
    log, best = [], (-1.0, None, None)
    for lr, epochs in LEARNING_RATES:
        torch.manual_seed(0)
        model = BertForQuestionAnswering(config)
        missing, _ = model.load_state_dict({k: v.float() for k, v in base.items()}, strict=False)
        assert not [k for k in missing if "position_ids" not in k], missing
        model.to(device)
        steps = epochs * (len(ids) // BATCH)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(  # 10% warm-up, then linear decay
            optimizer, lambda s: min((s + 1) / (0.1 * steps), max(0.0, (steps - s) / (0.9 * steps))))
        generator, started = torch.Generator().manual_seed(0), time.time()
        for epoch in range(epochs):
            order = torch.randperm(len(ids), generator=generator)
            for b in range(len(ids) // BATCH):
                j = order[b * BATCH:(b + 1) * BATCH]
                x = ids[j].to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=x, token_type_ids=types[j].to(device), attention_mask=(x != 0).long(),
                                 start_positions=starts[j].to(device), end_positions=ends[j].to(device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            row = {"lr": lr, "epoch": epoch + 1, **search_f1(model), "seconds": round(time.time() - started, 1)}
            print(row, flush=True)
            log.append(row)
            if row["f1"] > best[0]:
                best = (row["f1"], row, {k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(best[2], "/tmp/teacher.safetensors", metadata={"format": "pt"})
    blob = Path("/tmp/teacher.safetensors").read_bytes()
    size = (len(blob) + 2) // 3
    for i in range(3):
        (out / f"teacher.part{i}").write_bytes(blob[i * size:(i + 1) * size])
    (out / "teacher_log.json").write_text(json.dumps({"log": log, "best": best[1]}, indent=1))
    print("best", best[1])


def assemble(parts: Path, out: Path) -> None:
    from safetensors.torch import load
    from transformers import BertForQuestionAnswering

    from eftnas_hw.models import load_config, load_tokenizer, save_model

    weights = load(b"".join((parts / f"teacher.part{i}").read_bytes() for i in range(3)))
    config = load_config(None)
    config.architectures = ["BertForQuestionAnswering"]
    model = BertForQuestionAnswering(config)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    save_model(model.eval(), out, load_tokenizer(None), overwrite=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    {"prepare": prepare, "train": train, "assemble": assemble}[command](*map(Path, paths))
