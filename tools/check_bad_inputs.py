"""A battery of bad inputs against every `eftnas-hw` command: each must give one `eftnas-hw: error:` line on
stderr and exit code 2, with no traceback, no silent acceptance and nothing left behind.

    python tools/check_bad_inputs.py [--work DIR] [--only SUBSTRING] [--jobs 2]

Each case runs the real command line (`python -m eftnas_hw.cli ...`) in a fresh process on small fixtures it
builds first (a 2-layer random BERT, SST-2/CoLA-shaped TSVs, a latency table, a teacher, a super-network and a
search trained for a few steps, ~1-2 minutes). It prints one line per case and how many were clean.
`tests/test_bad_inputs.py` runs the same cases in-process.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (with {fixture} placeholders) and the kind of mistake. A case's own
    output, `{out}`, must not exist afterwards: a rejected command leaves no folder and no empty checkpoints."""

    name: str
    kind: str
    argv: tuple[str, ...]

    def out(self, work: Path) -> Path:
        """`{out}`: a fresh name in a folder of its own, which must still be empty after the case."""
        return work / "outs" / "".join(c if c.isalnum() else "-" for c in self.name) / "out"

    def prepare(self, work: Path) -> None:
        folder = self.out(work).parent
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def resolved(self, fx: dict[str, str], work: Path) -> list[str]:
        return [a.format(**fx, out=self.out(work)) for a in self.argv]


def _c(name: str, kind: str, line: str) -> Case:
    return Case(name, kind, tuple(line.split()))


# Placeholders: {work} the work folder, {model} a tiny BERT, {glue} GLUE-shaped TSVs, {table} a valid table for
# {model}, {teacher} a fine-tuned teacher (SST-2), {space} its search space, {supernet}, {search}, {file} a plain
# file, {ro} a folder nobody can write in (under /proc), {bad} a folder of broken inputs, {exists} an existing file.
TINY = "--model {model} --data-dir {glue}"
FT = f"finetune --task sst2 {TINY} --max-train 32 --epochs 1"
SN = "train-supernet --teacher {teacher} --space {space} --task sst2 --data-dir {glue} --max-steps 1 --max-train 32"
SE = "search --supernet {supernet} --task sst2 --data-dir {glue} --gmacs --pop-size 4 --n-evals 8 --max-search 16"
SP = "space --scores {teacher} --gmacs --n 2"
RUN = f"run {TINY} --out {{out}}"
OWN = "finetune --model {model} --train-file {bad}/own.csv --text-columns review --label-column sentiment"

CASES: tuple[Case, ...] = (
    # -- output locations: not a folder, not writable, already there
    _c("finetune out under a file", "output", f"{FT} --out {{file}}/teacher"),
    _c("finetune out not writable", "output", f"{FT} --out {{ro}}/teacher"),
    _c("train-supernet out under a file", "output", f"{SN} --out {{file}}/supernet"),
    _c("space out under a file", "output", f"{SP} --out {{file}}/space.json"),
    _c("space out not writable", "output", f"{SP} --out {{ro}}/space.json"),
    _c("space out exists", "output", f"{SP} --out {{exists}}"),
    _c("select out under a file", "output", "select --search {search} --budget-gmacs 100 --out {file}/s.json"),
    _c("select out exists", "output", "select --search {search} --budget-gmacs 100 --out {exists}"),
    _c("export out under a file", "output", "export --model {model} --out {file}/ir"),
    _c("export out not writable", "output", "export --model {model} --out {ro}/ir"),
    _c("export out exists", "output", "export --model {model} --out {work}"),
    _c("export --front out under a file", "output", "export --front {search} --profile cpu-1t-b1-s128 "
                                                    "--out {file}/front"),
    _c("search out under a file", "output", f"{SE} --out {{file}}/search"),
    _c("profile out under a file", "output", "profile --model {model} --profile cpu-1t-b1-s128 --out {file}/t.json"),
    _c("anchor out under a file", "output", "anchor {table} --out {file}/t.json"),
    _c("anchor out exists", "output", "anchor {table} --out {exists}"),
    _c("run out under a file", "output", f"run {TINY} --out {{file}}/run"),
    _c("run out not writable", "output", f"run {TINY} --out {{ro}}/run"),
    # -- data files
    _c("data folder missing", "data", f"{FT} --data-dir {{work}}/nowhere --out {{out}}"),
    _c("empty train TSV", "data", f"{FT} --data-dir {{bad}}/empty --out {{out}}"),
    _c("header-only train TSV", "data", f"{FT} --data-dir {{bad}}/header --out {{out}}"),
    _c("label outside the task's classes", "data", f"{FT} --data-dir {{bad}}/label7 --out {{out}}"),
    _c("train TSV without its sentence column", "data", f"{FT} --data-dir {{bad}}/columns --out {{out}}"),
    _c("one class only in train", "data", f"{FT} --data-dir {{bad}}/oneclass --out {{out}}"),
    _c("dev file missing", "data", f"{FT} --data-dir {{bad}}/nodev --out {{out}}"),
    _c("unknown task", "data", f"finetune --task sst5 {TINY} --out {{out}}"),
    _c("own data: missing text column", "data", f"{OWN} --text-columns text --out {{out}}"),
    _c("own data: three text columns", "data", f"{OWN} --text-columns review,review,review --out {{out}}"),
    _c("own data: one class only", "data", f"{OWN} --train-file {{bad}}/own_oneclass.csv --out {{out}}"),
    _c("own data: evaluation labels unseen in training", "data",
       f"{OWN} --eval-file {{bad}}/own_unseen.csv --out {{out}}"),
    _c("own data: mixed label types", "data", f"{OWN} --train-file {{bad}}/own_mixed.jsonl --out {{out}}"),
    _c("own data: an empty label", "data", f"{OWN} --train-file {{bad}}/own_nolabel.csv --out {{out}}"),
    _c("own data: unknown file format", "data", f"{OWN} --train-file {{file}} --out {{out}}"),
    _c("own data: metric does not fit the label", "data", f"{OWN} --eval-metric pearson --out {{out}}"),
    _c("own data: files and a hub dataset", "data", f"{OWN} --dataset imdb --out {{out}}"),
    _c("own data: --eval-file alone", "data", f"{FT} --eval-file {{bad}}/own.csv --out {{out}}"),
    _c("teacher: classes differ from the data's", "consistency",
       "finetune --teacher {teacher} --train-file {bad}/own.csv --text-columns review "
       "--label-column sentiment --out {out}"),
    _c("teacher and model both", "consistency", f"{OWN.replace('--model', '--teacher {teacher} --model')} "
                                                "--out {out}"),
    _c("teacher without a classification head", "consistency",
       "run --teacher minilm-l6 --train-file {bad}/own.csv --text-columns review --label-column sentiment "
       "--out {out}"),
    _c("QA: a question without an answer (SQuAD 2.0)", "data",
       "finetune --model {model} --train-file {bad}/squad_unanswered.json --out {out}"),
    _c("QA: an answer not at its start", "data",
       "finetune --model {model} --train-file {bad}/squad_misplaced.json --out {out}"),
    _c("QA: a JSON file that is no SQuAD file", "data",
       "finetune --model {model} --train-file {bad}/squad_nodata.json --out {out}"),
    _c("QA: a classifier teacher", "consistency",
       "finetune --teacher {teacher} --train-file {bad}/squad.json --out {out}"),
    _c("QA: a classification metric", "data",
       "finetune --model {model} --train-file {bad}/squad.json --eval-metric accuracy --out {out}"),
    _c("QA: window overlap larger than the window", "number",
       "finetune --model {model} --train-file {bad}/squad.json --window 32 --doc-stride 30 --out {out}"),
    _c("QA: one article only, no evaluation file", "data",
       "finetune --model {model} --train-file {bad}/squad_onearticle.json --out {out}"),
    # -- numbers out of range or of the wrong kind
    _c("--max-train 0", "number", f"{FT} --max-train 0 --out {{out}}"),
    _c("--batch-size 0", "number", f"{FT} --batch-size 0 --out {{out}}"),
    _c("--lr -1", "number", f"{FT} --lr -1 --out {{out}}"),
    _c("--epochs 0", "number", f"{FT} --epochs 0 --out {{out}}"),
    _c("--max-length 0", "number", f"{FT} --max-length 0 --out {{out}}"),
    _c("--seed -1", "number", f"{FT} --seed -1 --out {{out}}"),
    _c("--seed abc", "number", f"{FT} --seed abc --out {{out}}"),
    _c("--lr nan", "number", f"{FT} --lr nan --out {{out}}"),
    _c("--save-minutes 0", "number", f"{FT} --save-minutes 0 --out {{out}}"),
    _c("--max-steps 0", "number", f"{SN} --max-steps 0 --out {{out}}"),
    _c("--temperature 0", "number", f"{SN} --temperature 0 --out {{out}}"),
    _c("--num-random -3", "number", f"{SN} --num-random -3 --out {{out}}"),
    _c("--kd-alpha -1", "number", f"{SN} --kd-alpha -1 --out {{out}}"),
    _c("search --max-search 0", "number", f"{SE} --max-search 0 --out {{out}}"),
    _c("search --pop-size 1", "number", f"{SE} --pop-size 1 --out {{out}}"),
    _c("search --n-evals below the population", "number", f"{SE} --pop-size 8 --n-evals 4 --out {{out}}"),
    _c("latency --rounds 0", "number", "latency --table {table} --measure --rounds 0"),
    _c("info --seq-len -5", "number", "info --model {model} --seq-len -5"),
    _c("export --num-labels 0", "number", "export --model {model} --num-labels 0 --out {out}"),
    _c("export --calibration-size 0", "number", f"export {TINY} --task sst2 --int8 --calibration-size 0 "
                                                "--out {out}"),
    _c("space --tol -0.5", "number", f"{SP} --tol -0.5 --out {{out}}"),
    _c("space --low 0", "number", f"{SP} --low 0 --out {{out}}"),
    _c("space --low above --high", "number", f"{SP} --low 0.9 --high 0.5 --out {{out}}"),
    _c("space --n 0", "number", f"{SP} --n 0 --out {{out}}"),
    _c("space --ffn-step 0", "number", f"{SP} --ffn-step 0 --out {{out}}"),
    _c("space --seq-len 0", "number", f"{SP} --seq-len 0 --out {{out}}"),
    _c("space target under the table's reach", "number",
       "space --scores {teacher} --table {table} --low 0.001 --high 0.002 --n 2 --out {out}"),
    _c("profile --subnets 3", "number", "profile --model {model} --profile cpu-1t-b1-s128 --subnets 3 "
                                        "--out {out}"),
    _c("anchor --rounds 0", "number", "anchor {table} --rounds 0 --out {out}"),
    _c("anchor --bound-pct 0", "number", "anchor {table} --bound-pct 0 --out {out}"),
    _c("select --budget-ms -1", "number", "select --search {search} --budget-ms -1"),
    _c("select budget no subnet meets", "number", "select --search {search} --budget-gmacs 0.0000001"),
    _c("export --static-shape 1x", "number", "export --model {model} --static-shape 1x --out {out}"),
    _c("export --static-shape 0x128", "number", "export --model {model} --static-shape 0x128 --out {out}"),
    _c("export --static-shape above the model's positions", "number",
       "export --model {model} --static-shape 1x4096 --out {out}"),
    _c("unknown flag", "number", f"{FT} --epocs 1 --out {{out}}"),
    _c("abbreviated flag", "number", f"{FT} --epoch 1 --out {{out}}"),
    # -- files: tables, subnets, models, profiles
    _c("table missing", "file", "latency --table {work}/none.json"),
    _c("table not JSON", "file", "latency --table {bad}/table_broken.json"),
    _c("table with NaN", "file", "latency --table {bad}/table_nan.json"),
    _c("table with negative ms", "file", "latency --table {bad}/table_negative.json"),
    _c("table with a missing field", "file", "latency --table {bad}/table_nofield.json"),
    _c("table that is a list", "file", "latency --table {bad}/table_list.json"),
    _c("subnet with fractional heads", "file", "latency --table {table} --subnet {bad}/subnet_fraction.json"),
    _c("subnet with boolean heads", "file", "latency --table {table} --subnet {bad}/subnet_bool.json"),
    _c("subnet with too many heads", "file", "latency --table {table} --subnet {bad}/subnet_wide.json"),
    _c("subnet with negative FFN", "file", "info --model {model} --subnet {bad}/subnet_negative.json"),
    _c("subnet with the wrong layer count", "file", "info --model {model} --subnet {bad}/subnet_layers.json"),
    _c("subnet not a mapping", "file", "info --model {model} --subnet {bad}/table_list.json"),
    _c("model folder missing", "file", "info --model {work}/nomodel"),
    _c("model folder with config, no weights", "file", "export --model {bad}/noweights --out {out}"),
    _c("model config corrupt", "file", "info --model {bad}/corrupt"),
    _c("model not a BERT", "file", "info --model {bad}/gpt2"),
    _c("scores missing", "file", "space --scores {work}/noscores --gmacs --out {out}"),
    _c("scores file corrupt", "file", "space --scores {bad}/scores_corrupt.safetensors --model {model} --gmacs "
                                      "--out {out}"),
    _c("profile unknown", "file", "profile --model {model} --profile cpu-9t --out {out}"),
    _c("profile YAML broken", "file", "profile --model {model} --profile {bad}/profile_broken.yaml "
                                      "--out {out}"),
    _c("profile precision unknown", "file", "profile --model {model} --profile {bad}/profile_fp8.yaml "
                                            "--out {out}"),
    _c("search folder missing", "file", "select --search {work}/nosearch --budget-ms 1"),
    _c("search space file missing", "file", f"{SN} --space {{work}}/nospace.json --out {{out}}"),
    _c("search space of another shape", "file", f"{SN} --space {{bad}}/space_other.json --out {{out}}"),
    # -- consistency of teacher / super-network / task / table
    _c("super-network trained on another task", "consistency", f"{SN.replace('sst2', 'cola')} --out {{out}}"),
    _c("search on another task than the super-network", "consistency",
       f"{SE.replace('sst2', 'cola')} --out {{out}}"),
    _c("search with a table of another shape", "consistency",
       "search --supernet {supernet} --task sst2 --data-dir {glue} --table {bad}/table_other.json "
       "--out {out}"),
    _c("space with a table of another shape", "consistency",
       "space --scores {teacher} --table {bad}/table_other.json --out {out}"),
    _c("train-supernet teacher is not a finetune output", "consistency",
       f"{SN.replace('{teacher}', '{model}')} --out {{out}}"),
    _c("export --front with another task", "consistency",
       "export --front {search} --task cola --out {out}"),
    # -- run configs (all must fail before any work and leave no run folder)
    _c("run config section is a scalar", "config", f"{RUN} --config {{bad}}/run_scalar.yaml"),
    _c("run config number is a word", "config", f"{RUN} --config {{bad}}/run_word.yaml"),
    _c("run config unknown nested key", "config", f"{RUN} --config {{bad}}/run_typo.yaml"),
    _c("run config YAML broken", "config", f"{RUN} --config {{bad}}/profile_broken.yaml"),
    _c("run config missing", "config", f"{RUN} --config {{work}}/none.yaml"),
    _c("run --set without =", "config", f"{RUN} --set supernet.lr"),
    _c("run --set unknown key", "config", f"{RUN} --set supernet.lrr=1"),
    _c("run --set negative low", "config", f"{RUN} --set space.low=-1"),
    _c("run --table missing", "config", f"{RUN} --table {{work}}/none.json"),
    _c("run --table of another shape", "config", f"{RUN} --table {{bad}}/table_other.json"),
    _c("run --profile unknown", "config", f"{RUN} --profile cpu-9t"),
    _c("run --budget-ms -1", "config", f"{RUN} --budget-ms -1"),
    _c("run task unknown", "config", f"{RUN} --task sst5"),
    _c("run data folder missing", "config", "run --model {model} --data-dir {work}/nowhere "
                                            "--out {out}"),
)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures

def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _sst2_rows(n: int, labels=(0, 1)) -> str:
    words = ["good", "bad", "fine", "dull", "great", "awful", "warm", "cold"]
    rows = [f"a {words[i % len(words)]} film number {i}\t{labels[i % len(labels)]}" for i in range(n)]
    return "sentence\tlabel\n" + "\n".join(rows) + "\n"


def _cola_rows(n: int) -> str:
    return "".join(f"src\t{i % 2}\t\tsentence number {i} is here\n" for i in range(n))


def build_fixtures(work: Path, quiet: bool = True) -> dict[str, str]:
    """The inputs the cases point at, built under `work` (re-used when already there)."""
    import dataclasses

    from eftnas_hw.latency import Profile
    from eftnas_hw.models import load_tokenizer, random_bert, save_model
    sys.path.insert(0, str(REPO))
    from tests.conftest import TINY_SHAPE, table_document

    work.mkdir(parents=True, exist_ok=True)
    bad = work / "bad"
    fx = {"work": str(work), "model": str(work / "model"), "glue": str(work / "glue"), "bad": str(bad),
          "table": str(work / "table.json"), "teacher": str(work / "teacher"), "space": str(work / "space.json"),
          "supernet": str(work / "supernet"), "search": str(work / "search"), "file": _write(work / "afile", "x"),
          "exists": _write(work / "exists.json", "{}\n"), "ro": "/proc/eftnas-hw-not-writable"}
    if not (work / "model").exists():
        save_model(random_bert(TINY_SHAPE, seed=0), work / "model", load_tokenizer(None))
    _write(work / "glue/SST-2/train.tsv", _sst2_rows(96))
    _write(work / "glue/SST-2/dev.tsv", _sst2_rows(24))
    _write(work / "glue/CoLA/train.tsv", _cola_rows(96))
    _write(work / "glue/CoLA/dev.tsv", _cola_rows(24))
    for name, train in (("empty", ""), ("header", "sentence\tlabel\n"), ("label7", _sst2_rows(40, (0, 1, 7))),
                        ("columns", "text\tlabel\nfoo\t1\nbar\t0\n"), ("oneclass", _sst2_rows(40, (1,))),
                        ("nodev", _sst2_rows(40))):
        _write(bad / name / "SST-2/train.tsv", train)
        if name != "nodev":
            _write(bad / name / "SST-2/dev.tsv", _sst2_rows(10))

    profile = Profile.load("cpu-1t-b1-s128")
    doc = table_document(TINY_SHAPE, profile, 0.2, [0.01, 0.05, 0.08, 0.11, 0.14], [0, 64, 128],
                         [0.01, 0.1, 0.2])
    _write(work / "table.json", json.dumps(doc))
    other = dataclasses.replace(TINY_SHAPE, num_layers=3)
    _write(bad / "table_other.json", json.dumps({**doc, "shape": other.to_dict()}))
    _write(bad / "table_broken.json", json.dumps(doc)[:-40])
    _write(bad / "table_nan.json", json.dumps(doc).replace("0.05", "NaN"))
    _write(bad / "table_negative.json", json.dumps(doc).replace("0.05", "-0.05"))
    _write(bad / "table_nofield.json", json.dumps({k: v for k, v in doc.items() if k != "blocks"}))
    _write(bad / "table_list.json", "[1, 2]\n")
    for name, subnet in (("fraction", {"heads": [1.5, 2], "ffn": [64, 64]}),
                         ("bool", {"heads": [True, 2], "ffn": [64, 64]}),
                         ("wide", {"heads": [9, 2], "ffn": [64, 64]}),
                         ("negative", {"heads": [2, 2], "ffn": [-64, 64]}),
                         ("layers", {"heads": [2, 2, 2], "ffn": [64, 64, 64]})):
        _write(bad / f"subnet_{name}.json", json.dumps(subnet))
    _write(bad / "space_other.json", json.dumps({"heads": [[1, 4]] * 3, "ffn": [[64, 128]] * 3}))
    config = json.loads((work / "model/config.json").read_text())
    _write(bad / "noweights/config.json", json.dumps(config))
    _write(bad / "scores_corrupt.safetensors", "not a tensor file")
    _write(bad / "corrupt/config.json", "{\"model_type\": \"bert\", ")
    _write(bad / "gpt2/config.json", json.dumps({"model_type": "gpt2", "n_layer": 2}))
    _write(bad / "profile_broken.yaml", "batch: [1\nseq_len: 128\n")
    _write(bad / "profile_fp8.yaml", "device: CPU\nthreads: 1\nstreams: 1\nbatch: 1\nseq_len: 128\n"
                                     "precision: fp8\n")
    own = "review,sentiment\n" + "".join(f"film {i} was {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n"
                                         for i in range(40))
    _write(bad / "own.csv", own)
    _write(bad / "own_oneclass.csv", own.replace(",neg", ",pos"))
    _write(bad / "own_unseen.csv", own.replace("film 3 was good,pos", "film 3 was good,meh"))
    _write(bad / "own_nolabel.csv", own.replace("film 3 was good,pos", "film 3 was good,"))
    _write(bad / "own_mixed.jsonl", "".join(json.dumps({"review": f"film {i}", "sentiment": "pos" if i % 2 else 0})
                                            + "\n" for i in range(40)))
    def article(a: int) -> dict:
        qas = [{"id": f"q{a}", "question": "What colour is the sky?",
                "answers": [{"text": "blue", "answer_start": 15 + len(str(a))}]}]
        return {"title": f"T{a}", "paragraphs": [{"context": f"The sky of {a} is blue.", "qas": qas}]}

    squad = {"version": "1.1", "data": [article(a) for a in range(12)]}
    _write(bad / "squad.json", json.dumps(squad))
    unanswered = json.loads(json.dumps(squad))
    unanswered["data"][3]["paragraphs"][0]["qas"][0].update(answers=[], is_impossible=True)
    _write(bad / "squad_unanswered.json", json.dumps(unanswered))
    misplaced = json.loads(json.dumps(squad))
    misplaced["data"][3]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 2
    _write(bad / "squad_misplaced.json", json.dumps(misplaced))
    _write(bad / "squad_nodata.json", json.dumps({"version": "1.1", "articles": squad["data"]}))
    _write(bad / "squad_onearticle.json", json.dumps({**squad, "data": squad["data"][:1]}))
    _write(bad / "run_scalar.yaml", "finetune: 3\n")
    _write(bad / "run_word.yaml", "finetune:\n  epochs: three\n")
    _write(bad / "run_typo.yaml", "latency:\n  build:\n    ffn_stpe: 64\n")
    _train_fixtures(fx, quiet)
    return fx


def _train_fixtures(fx: dict[str, str], quiet: bool) -> None:
    """A teacher, its search space, a super-network and a search, each a few steps (the real commands)."""
    steps = [("teacher", f"{FT} --out {{teacher}}"),
             ("space", f"{SP} --out {{space}}"),
             ("supernet", f"{SN} --out {{supernet}}"),
             ("search", f"{SE} --out {{search}}")]
    for name, line in steps:
        if Path(fx[name]).exists():
            continue
        argv = [a.format(**fx) for a in line.split()]
        rc, _, err = run_in_process(argv) if quiet else (_main(argv), "", "")
        if rc != 0:
            raise RuntimeError(f"building the {name} fixture failed ({rc}): {err[-2000:]}")


# ---------------------------------------------------------------------------------------------------------------
# Running and judging

def _main(argv: list[str]) -> int:
    from eftnas_hw.cli import main

    return main(argv)


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `eftnas-hw argv` in this process; an escaping exception is a traceback."""
    import traceback

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = _main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - exactly what the battery looks for
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue(), err.getvalue()


def run_in_subprocess(argv: list[str], timeout: float = 600) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("EFTNAS_GLUE_DIR", None)
    try:
        p = subprocess.run([sys.executable, "-m", "eftnas_hw.cli", *argv], capture_output=True, text=True,
                           env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return -1, "", f"still running after {timeout:.0f} s (accepted)"
    return p.returncode, p.stdout, p.stderr


@dataclass
class Verdict:
    case: Case
    rc: int
    stderr: str
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def line(self) -> str:
        shown = self.stderr.strip().splitlines()[-1][:150] if self.stderr.strip() else "(no message)"
        state = "clean" if self.clean else "FAIL: " + "; ".join(self.problems)
        return f"[{self.case.kind:>11}] {self.case.name:<50} {state}\n{'':14}{shown}"


def judge(case: Case, rc: int, stderr: str, work: Path) -> Verdict:
    """Clean = exit 2, exactly one stderr line and it is the tool's error, nothing left behind."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    problems = []
    if "Traceback" in stderr:
        problems.append("traceback")
    if rc == 0:
        problems.append("accepted")
    elif rc != 2:
        problems.append(f"exit {rc}")
    if len(lines) != 1 or not lines[0].startswith("eftnas-hw: error: "):
        problems.append(f"{len(lines)} stderr lines" if lines else "no message")
    problems += [f"left {p.name}" for p in case.out(work).parent.iterdir()]
    return Verdict(case, rc, stderr, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/eftnas-bad-inputs", help="fixture folder (re-used)")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="cases run side by side")
    args = parser.parse_args()
    work = Path(args.work)
    started = time.time()
    fx = build_fixtures(work)
    print(f"fixtures ready in {work} ({time.time() - started:.0f} s); {len(CASES)} cases")
    cases = [c for c in CASES if not args.only or args.only in c.name]

    def one(case: Case) -> Verdict:
        case.prepare(work)
        rc, _, err = run_in_subprocess(case.resolved(fx, work))
        return judge(case, rc, err, work)

    with ThreadPoolExecutor(args.jobs) as pool:
        verdicts = list(pool.map(one, cases))
    for v in verdicts:
        print(v.line())
    clean = sum(v.clean for v in verdicts)
    kinds = sorted({c.kind for c in cases})
    per_kind = ", ".join(f"{k} {sum(v.clean for v in verdicts if v.case.kind == k)}/"
                         f"{sum(c.kind == k for c in cases)}" for k in kinds)
    print(f"\n{clean} of {len(cases)} bad inputs clean (one line, exit 2, nothing left behind): {per_kind}; "
          f"{time.time() - started:.0f} s")
    return 0 if clean == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
