"""Extractive question answering (SQuAD v1.1; the paper's Table 2): reading, features, answers, EM/F1.

A QA example is a question, a context and its gold answers (texts and character starts). Contexts are longer than
the model's length, so each example becomes one or more *features*: windows of `max_length` tokens holding the
question and a slice of the context, consecutive windows overlapping by `stride` tokens (HF's `return_overflowing_
tokens`). Training features carry the answer's start and end token (the [CLS] position 0 when the answer is not
inside the window); evaluation features carry each token's character offsets in the context, so the best span
over all of an example's windows (n-best start and end logits, at most `max_answer_length` tokens) maps back to
answer text. EM and F1 are the official SQuAD v1.1 evaluation's (answer normalisation, max over the gold
answers, averaged over questions), as fractions like every metric here.
"""
from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError

QA_COLUMNS = ("question", "context", "answers")  # rows with these columns are QA examples (plus id, title)


def is_squad_file(path: str | Path) -> bool:
    """A SQuAD-format JSON file: {"data": [{"title", "paragraphs": [{"context", "qas"}]}]}."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    with open(p, encoding="utf-8-sig") as f:
        head = f.read(4096)
    return re.match(r'\s*\{\s*"(data|version)"', head) is not None


def read_squad(path: str | Path) -> pd.DataFrame:
    """A SQuAD v1.1 JSON file as rows id, title, context, question, answers ({"text": [...], "answer_start":
    [...]}), the layout of the `squad` hub dataset. Questions without an answer (SQuAD 2.0) are refused: v1.1
    extractive QA always has one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))["data"]
        rows = [{"id": str(qa["id"]), "title": article.get("title", ""), "context": paragraph["context"],
                 "question": qa["question"],
                 "answers": {"text": [a["text"] for a in qa.get("answers", [])],
                             "answer_start": [int(a["answer_start"]) for a in qa.get("answers", [])]}}
                for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a SQuAD-format JSON file ({type(e).__name__}: {str(e)[:120]})") from None
    if not rows:
        raise UserError(f"{path} holds no questions")
    return pd.DataFrame(rows)


def check_examples(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """QA rows as the stages use them (id, title, context, question, answers, idx), checked: every question has
    an answer, and every answer is the context's text at its start."""
    missing = [c for c in QA_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{where} lacks QA column(s) {missing} (it has: {', '.join(map(str, df.columns[:12]))})")
    if df.empty:
        raise UserError(f"{where} holds no examples")
    out = pd.DataFrame({"id": df["id"].astype(str) if "id" in df else [f"q{i}" for i in range(len(df))],
                        "title": df["title"].astype(str) if "title" in df else df["context"].astype(str),
                        "context": df["context"].astype(str), "question": df["question"].astype(str)})
    answers = []
    for i, (context, a) in enumerate(zip(out["context"], df["answers"])):
        texts, starts = list((a or {}).get("text", [])), [int(s) for s in (a or {}).get("answer_start", [])]
        if not texts or len(texts) != len(starts):
            raise UserError(f"{where}: question {out['id'].iloc[i]!r} has no answer (extractive QA needs one per "
                            "question, as SQuAD v1.1)")
        if not any(context[s:s + len(t)] == t for t, s in zip(texts, starts)):
            raise UserError(f"{where}: question {out['id'].iloc[i]!r}: answer {texts[0]!r} is not the context's "
                            f"text at character {starts[0]}")
        answers.append({"text": texts, "answer_start": starts})
    if out["id"].duplicated().any():
        raise UserError(f"{where}: question id {out['id'][out['id'].duplicated()].iloc[0]!r} appears twice")
    out["answers"], out["idx"] = answers, np.arange(len(out))
    return out


def split_by_article(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, share) with whole articles (titles) in the share, about `fraction` of the questions: questions on
    one article share its paragraphs, so a question-level split would leak contexts into the held-out part."""
    titles = df["title"].drop_duplicates().to_numpy()
    if len(titles) < 2:
        raise UserError(f"cannot hold out {fraction:.0%} of the questions by article: the data has one article "
                        "(give an evaluation file)")
    order = np.random.default_rng(seed).permutation(len(titles))
    counts = df["title"].value_counts()
    chosen, total = [], 0
    for i in order:
        if total >= fraction * len(df) or len(chosen) == len(titles) - 1:
            break
        chosen.append(titles[i])
        total += counts[titles[i]]
    share = df["title"].isin(chosen)
    return df[~share].reset_index(drop=True), df[share].reset_index(drop=True)


def _windows(examples: dict, tokenizer, max_length: int, stride: int) -> dict:
    if not tokenizer.padding_side == "right":
        raise UserError("QA features need a tokenizer that pads on the right")
    questions = [q.lstrip() for q in examples["question"]]  # leading spaces only waste window tokens
    # (the tokenizer panics, not raises, when the overlap does not fit beside a question)
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if stride >= room:
        raise UserError(f"QA windows of {max_length} tokens leave {room} context tokens beside the longest question "
                        f"({longest} tokens): the window overlap (doc_stride {stride}) must be smaller, or the "
                        "window longer (window)")
    return tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def train_features(examples: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Training windows with `start_positions`/`end_positions` (token indices; 0 = [CLS] = not in this window)."""
    enc = _windows(examples, tokenizer, max_length, stride)
    starts, ends = [], []
    for i, offsets in enumerate(enc.pop("offset_mapping")):
        answers = examples["answers"][enc["overflow_to_sample_mapping"][i]]
        first_char = answers["answer_start"][0]
        last_char = first_char + len(answers["text"][0])
        context = [j for j, s in enumerate(enc.sequence_ids(i)) if s == 1]
        if offsets[context[0]][0] > first_char or offsets[context[-1]][1] < last_char:
            starts.append(0)
            ends.append(0)
            continue
        start = next(j for j in context if offsets[j][1] > first_char)
        end = next(j for j in reversed(context) if offsets[j][0] < last_char)
        starts.append(start)
        ends.append(end)
    enc.pop("overflow_to_sample_mapping")
    enc["start_positions"], enc["end_positions"] = starts, ends
    return enc


def eval_features(examples: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Evaluation windows with `example` (the example's row in its split) and `offsets` (character spans of the
    context tokens, (-1, -1) elsewhere)."""
    enc = _windows(examples, tokenizer, max_length, stride)
    enc["example"] = list(enc.pop("overflow_to_sample_mapping"))
    enc["offsets"] = [[tuple(o) if s == 1 else (-1, -1) for o, s in zip(offsets, enc.sequence_ids(i))]
                      for i, offsets in enumerate(enc.pop("offset_mapping"))]
    return enc


def best_answers(contexts: list[str], features: list[int], offsets: list, logits: np.ndarray,
                 n_best: int = 20, max_answer_length: int = 30) -> list[str]:
    """The highest-scoring span (start logit + end logit, start <= end, at most `max_answer_length` tokens, inside
    the context) over all windows of each example, as text. `features[i]` is window i's example, `offsets[i]`
    its tokens' character spans, `logits[i]` its [length, 2] start and end logits (padding never chosen: its
    offsets are (-1, -1))."""
    best: dict[int, tuple[float, str]] = {}
    for i, example in enumerate(features):
        spans = offsets[i]
        start_logits, end_logits = logits[i, :len(spans), 0], logits[i, :len(spans), 1]
        starts = np.argsort(start_logits)[::-1][:n_best]
        ends = np.argsort(end_logits)[::-1][:n_best]
        for s in starts:
            if spans[s][0] < 0:
                continue
            for e in ends:
                if spans[e][0] < 0 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[s] + end_logits[e])
                if example not in best or score > best[example][0]:
                    best[example] = (score, contexts[example][spans[s][0]:spans[e][1]])
    return [best.get(i, (0.0, ""))[1] for i in range(len(contexts))]


def normalize_answer(text: str) -> str:
    """The official v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised answers (the official v1.1 definition)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def question_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, np.ndarray]:
    """Per question: EM and F1, each the max over the question's gold answers."""
    pairs = list(zip(predictions, answers))
    return {"exact_match": np.array([max(exact_match(p, t) for t in truths) for p, truths in pairs]),
            "f1": np.array([max(f1_score(p, t) for t in truths) for p, truths in pairs])}


def squad_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """EM and F1 (fractions): the per-question scores averaged over the questions."""
    return {name: float(np.mean(scores)) for name, scores in question_scores(predictions, answers).items()}
