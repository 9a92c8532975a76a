"""`eftnas-hw profile`: measure a latency table for a BERT shape under a profile, calibrate it, validate it.

Why blocks are measured this way (decided from measurements on this machine):
- Each block is a 1-layer BERT exported like a real subnet with only that sub-block active (attention with h heads
  and FFN removed, or FFN of width f and attention removed), minus a 1-layer BERT with both removed measured in
  the same round-robin. Whole-model export keeps the exact graph patterns (mask, layer norms, fused attention)
  the deployed subnets get; torch-level fragments would be compiled differently.
- Block models use a 512-token vocabulary (memory: dozens of compiled BERT-base embedding tables do not fit
  beside other work); the fixed part (embeddings with the real vocabulary, pooler, classifier) is measured on
  its own, at the real size.
- Summing blocks misses interactions (a removed sub-block leaves residual adds and layer norms behind, fused
  kernels differ at the seams, caches are warmer inside one model). A linear calibration
  `measured = scale * sum + offset_ms`, fitted on a few random subnets measured end-to-end, absorbs them; it is
  stored and validated on *other* random subnets, together with a MAC count calibrated the same way, so the
  table shows whether it beats MACs.
  Measured (MiniLM-L6 shape, 1 thread, [1,128]): the plain block sum was already within 1.75% MAPE of 30 whole
  subnets and the fitted scale came out 0.98 (+0.19 ms), i.e. interactions are small at one thread; the
  calibration is kept because it is cheap and corrects the per-machine bias at more threads.
- Progress is written atomically to the output file after every measured group, so a killed run resumes.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..errors import UserError
from ..files import read_json, write_json_atomic
from ..models import build_subnet, random_bert
from ..subnet import BertShape, SubnetConfig
from .fingerprint import hardware_fingerprint
from .measure import BURST, DISAGREEMENT_BOUND, measure_models_ms, statistic_for
from .profiles import Profile
from .table import FORMAT, VERSION, LatencyTable

BLOCK_VOCAB = 512
# Shapes of the model families the paper compresses, for building tables without weights (`--shape`).
NAMED_SHAPES = {
    "minilm-l6": BertShape(num_layers=6, hidden_size=384, num_heads=12, head_size=32, intermediate_size=1536),
    "bert-base": BertShape(num_layers=12, hidden_size=768, num_heads=12, head_size=64, intermediate_size=3072),
}


def named_shape(name: str) -> BertShape:
    try:
        return NAMED_SHAPES[name]
    except KeyError:
        raise UserError(f"unknown shape {name!r} (known: {', '.join(NAMED_SHAPES)})") from None


def random_subnets(shape: BertShape, n: int, seed: int, width_step: int = 64) -> list[SubnetConfig]:
    """Seeded random subnets spread over sizes: per subnet a density d, per layer widths around d.

    Uniform per-layer sampling would give subnets of nearly the same size; a per-subnet density covers small to
    full models, and FFN widths on a 64 grid fall between the table's grid points (testing interpolation).
    """
    rng = random.Random(seed)
    nets = []
    for _ in range(n):
        d = rng.uniform(0.1, 1.0)
        heads, ffn = [], []
        for _ in range(shape.num_layers):
            h = round(shape.num_heads * min(1.0, max(0.0, rng.gauss(d, 0.25))))
            f = width_step * round(shape.intermediate_size / width_step * min(1.0, max(0.0, rng.gauss(d, 0.25))))
            heads.append(h)
            ffn.append(f)
        nets.append(SubnetConfig(tuple(heads), tuple(ffn)))
    return nets


def ffn_grid(shape: BertShape, step: int) -> list[int]:
    if step < 1:
        raise UserError(f"--ffn-step must be positive, got {step}")
    return sorted(set(range(0, shape.intermediate_size, step)) | {shape.intermediate_size})


class _Progress:
    """The partially built table on disk: measured groups by key, rewritten atomically after each group."""

    def __init__(self, out: Path, header: dict, resume: bool):
        self.out, self.data = out, dict(header, complete=False, measurements={})
        if out.exists():
            old = read_json(out, "latency table")
            same = isinstance(old, dict) and all(old.get(k) == v for k, v in header.items())
            if not resume or not same:
                raise UserError(f"{out} exists and was built with other settings or on another machine "
                                "(choose another --out, or delete it to rebuild)")
            self.data = old

    def get(self, key: str) -> list[dict] | None:
        return self.data["measurements"].get(key)

    def put(self, key: str, stats: list[dict]) -> None:
        self.data["measurements"][key] = stats
        write_json_atomic(self.out, self.data)


def _measure_group(progress: _Progress, key: str, build, profile: Profile, repeats: int,
                   label: str | None) -> list[dict]:
    """Measure (or reuse from a previous run) one group of models built on demand by `build()`."""
    stats = progress.get(key)
    if stats is None:
        stats = measure_models_ms(build(), profile, repeats, desc=label)
        progress.put(key, stats)
    return stats


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    scale, offset = np.polyfit(x, y, 1)
    return float(scale), float(offset)


def _errors(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = (predicted - measured) / measured
    return {"mape_pct": float(100 * np.mean(np.abs(rel))), "worst_pct": float(100 * np.max(np.abs(rel))),
            "within_5pct": float(np.mean(np.abs(rel) <= 0.05)), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "spearman": float(spearmanr(predicted, measured).statistic)}


def build_table(shape: BertShape, profile: Profile, out: str | os.PathLike, ffn_step: int = 128,
                validate_n: int = 30, resume: bool = True, progress: bool = True, *, calibrate_n: int = 8,
                block_repeats: int = 40, subnet_repeats: int = 12, group_size: int = 5,
                seed: int = 0) -> LatencyTable:
    """Measure, calibrate and validate a table for `shape` under `profile`; written atomically to `out`."""
    if validate_n < 1 or calibrate_n < 2:
        raise UserError("need at least 1 validation subnet and 2 calibration subnets")
    started = time.time()
    out = Path(out)
    grid = ffn_grid(shape, ffn_step)
    settings = {"ffn_step": ffn_step, "validate_n": validate_n, "calibrate_n": calibrate_n,
                "block_repeats": block_repeats, "subnet_repeats": subnet_repeats, "seed": seed,
                "statistic": statistic_for(profile), "burst": BURST}
    header = {"format": FORMAT, "version": VERSION, "shape": shape.to_dict(), "profile": profile.to_dict(),
              "fingerprint": hardware_fingerprint(profile), "settings": settings}
    state = _Progress(out, header, resume)
    if state.data.get("complete"):
        return LatencyTable(state.data)
    label = (lambda text: text) if progress else (lambda text: None)
    stat = settings["statistic"]

    def blocks() -> list:
        one = dataclasses.replace(shape, num_layers=1)
        small = random_bert(dataclasses.replace(one, vocab_size=min(BLOCK_VOCAB, shape.vocab_size)), seed)
        nets = [SubnetConfig((0,), (0,))] + [SubnetConfig((h,), (0,)) for h in range(1, shape.num_heads + 1)] \
            + [SubnetConfig((0,), (f,)) for f in grid[1:]]
        return [build_subnet(random_bert(one, seed), nets[0])] + [build_subnet(small, n) for n in nets]

    block_stats = _measure_group(state, "blocks", blocks, profile, block_repeats, label("blocks"))
    value = [s[stat] for s in block_stats]
    fixed, base = value[0], value[1]
    attention = [0.0] + [v - base for v in value[2:2 + shape.num_heads]]
    ffn_ms = [0.0] + [v - base for v in value[2 + shape.num_heads:]]

    full = random_bert(shape, seed)
    subnets = random_subnets(shape, calibrate_n + validate_n, seed)
    # The full model is always a calibration point: it anchors the top of the range the search cares about.
    subnets[0] = shape.full_subnet()
    measured = []
    for start in range(0, len(subnets), group_size):
        group = subnets[start:start + group_size]
        stats = _measure_group(state, f"subnets/{start}", lambda g=group: [build_subnet(full, s) for s in g],
                               profile, subnet_repeats,
                               label(f"subnets {start + 1}-{start + len(group)}/{len(subnets)}"))
        measured += stats

    data = dict(state.data)
    data["blocks"] = {"fixed_ms": fixed, "attention_ms": attention, "ffn_grid": grid, "ffn_ms": ffn_ms,
                      "statistic": stat, "interpolation": "FFN latency is linear in width between grid points"}
    data["calibration"] = {"scale": 1.0, "offset_ms": 0.0}
    table = LatencyTable(dict(data, complete=True))
    y = np.array([m[stat] for m in measured])
    raw = np.array([table.raw_ms(s) for s in subnets])
    macs = np.array([s.macs(shape, profile.seq_len, profile.batch) for s in subnets], dtype=float)
    cal, val = slice(0, calibrate_n), slice(calibrate_n, None)
    scale, offset = _fit_line(raw[cal], y[cal])
    mac_scale, mac_offset = _fit_line(macs[cal], y[cal])
    data["calibration"] = {"scale": scale, "offset_ms": offset, "method": "least squares of measured on block sum",
                           "subnets": [s.to_dict() for s in subnets[cal]], "measured_ms": y[cal].tolist()}
    predicted = scale * raw[val] + offset
    everything = block_stats + measured
    # Halves of one candidate's samples disagreeing on the statistic in use: the machine changed under us.
    disagreement = [m["cpu_disagreement" if stat == "cpu_min" else "disagreement"] for m in everything]
    unstable = [d for d in disagreement if d > DISAGREEMENT_BOUND]
    contention = [m["median"] / m["cpu_median"] for m in everything if m.get("cpu_median")]
    data["validation"] = {
        "n": int(len(y[val])), "statistic": stat,
        **_errors(predicted, y[val]),
        "uncalibrated": _errors(raw[val], y[val]),
        "macs_spearman": float(spearmanr(macs[val], y[val]).statistic),
        "calibrated_macs": _errors(mac_scale * macs[val] + mac_offset, y[val]),
        "stability": {"unstable_measurements": len(unstable), "of": len(everything),
                      "max_disagreement": max(disagreement),
                      "median_spread": float(np.median([m["spread"] for m in everything])),
                      # median wall time / CPU time of a call: ~1 alone (1 thread), >1 when other jobs preempt
                      "median_wall_over_cpu": float(np.median(contention)) if contention else None,
                      "unstable": bool(unstable)},
        "subnets": [{"subnet": s.to_dict(), "predicted_ms": float(p), "measured": m}
                    for s, p, m in zip(subnets[val], predicted, measured[val])],
    }
    data["build_minutes"] = data.get("build_minutes", 0.0) + (time.time() - started) / 60
    data["complete"] = True
    table = LatencyTable(data)
    table.save(out)
    return table


def summary_lines(table: LatencyTable) -> list[str]:
    """The validation summary `eftnas-hw profile` prints."""
    v = table.validation
    s = v["stability"]
    lines = [
        f"table for {table.shape.describe()} under {table.profile.name} "
        f"({table.profile.threads} thread(s), batch {table.profile.batch}, seq {table.profile.seq_len}, "
        f"{table.profile.precision}); calibration: {table.scale:.4f} x block sum + {table.offset_ms:.3f} ms",
        f"validated on {v['n']} random subnets not used for calibration ({v['statistic']} of interleaved runs):",
        f"  table:           MAPE {v['mape_pct']:.2f}%  worst {v['worst_pct']:.2f}%  within 5% "
        f"{100 * v['within_5pct']:.0f}%  within 10% {100 * v['within_10pct']:.0f}%  Spearman {v['spearman']:.4f}",
        f"  calibrated MACs: MAPE {v['calibrated_macs']['mape_pct']:.2f}%  worst "
        f"{v['calibrated_macs']['worst_pct']:.2f}%  Spearman (MACs vs measured) {v['macs_spearman']:.4f}",
        f"  stability: {s['unstable_measurements']}/{s['of']} measurements flagged (halves disagree > 5%), "
        f"median spread (p90-min)/min {100 * s['median_spread']:.1f}%, median wall/CPU time of a call "
        f"{s['median_wall_over_cpu'] or float('nan'):.2f}",
    ]
    if s["unstable"]:
        lines.append("  warning: some repeated measurements disagreed; the machine was noisy during profiling")
    return lines
