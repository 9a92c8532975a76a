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
  kernels differ at the seams, caches are warmer inside one model). A calibration on whole random
  subnets measured end to end, spread from the smallest to the full model (`spread_subnets`), absorbs them
  (`table.py`, step 2). Four candidate calibrations are fitted, the block sum times a scale, the scaled block sum
  plus an offset, that plus a cost per attention/FFN block kept, and a quadratic curve in the log of the block sum,
  and the one with the lowest
  leave-one-out error is stored, fitted on all subnets; the leave-one-out predictions are the table's validation
  (each subnet predicted by a calibration that never saw it), beside a MAC count calibrated the same way, so the
  table shows whether it beats MACs. Why leave-one-out rather than a split: on the EPYC's bf16 table a calibration
  fitted on 12 subnets validated at 3.9% MAPE on 30 others, the same model fitted on 41 at 2.4% (leave-one-out):
  the per-subnet noise, not the model, limited the small fit.
- The machine's speed drifts while a table is built (another tenant of the host, frequency): every group of
  subnets also times the full model, and each group is rescaled to the median of those references. The block models'
  group times it too, not to be rescaled (their sums only need the right proportions) but to be measured again when
  it caught the machine's slow state (`slow_state.py`).
- Progress is written atomically to the output file after every measured group, so a killed run resumes.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from ..errors import UserError
from ..files import check_writable, read_json, write_json_atomic
from ..settings import TableBuildSettings
from ..subnet import BertShape, SubnetConfig
from .fingerprint import hardware_fingerprint, warn_if_int8_is_slow
from .measure import BURST, LOWEST_ROUND, PINNING, measure_compiled
from .prepare import PreparedIRs, RandomSubnet
from .profiles import Profile
from .slow_state import STATE_FACTOR, faster, measure_slow_groups_again, state_factor, statistic
from .table import CALIBRATION_FEATURES, FORMAT, VERSION, LatencyTable, log_curve_ms

BLOCK_VOCAB = 512
# How the calibration subnets are chosen (recorded with the build settings: a partial build of another selection is
# not resumed).
SELECTION = "spread over the block-sum range (spread_subnets)"


def random_subnets(shape: BertShape, n: int, seed: int, width_step: int = 64,
                   removal: float = 0.15) -> list[SubnetConfig]:
    """Seeded random subnets spread over sizes: per subnet a density d, per layer widths around d, and each
    attention or FFN block removed with probability `removal` (both: the layer is gone).

    Uniform per-layer sampling would give subnets of nearly the same size; a per-subnet density covers small to
    full models, FFN widths on a 64 grid fall between the table's grid points (testing interpolation), and
    removed blocks are what hardware-aware search spaces contain and what block sums predicted worst.
    """
    rng = random.Random(seed)
    nets = []
    for _ in range(n):
        d = rng.uniform(0.1, 1.0)
        heads, ffn = [], []
        for _ in range(shape.num_layers):
            keep = min(1.0, max(0.0, rng.gauss(d, 0.25)))
            h = 0 if rng.random() < removal else max(1, round(shape.num_heads * keep))
            f = 0 if rng.random() < removal else width_step * max(1, round(shape.intermediate_size / width_step * keep))
            heads.append(h)
            ffn.append(min(f, shape.intermediate_size))
        nets.append(SubnetConfig(tuple(heads), tuple(ffn)))
    return nets


def spread_subnets(shape: BertShape, n: int, seed: int, cost) -> list[SubnetConfig]:
    """The full model and n-1 random subnets at evenly spaced quantiles of `cost` among 16n random ones.

    Why: a fit on subnets that happen to be mid-sized extrapolates badly to the small ones. On this EPYC's bf16
    tables, calibrations fitted on 32 plain random subnets (the smallest 3.3 ms) put an offset into every
    prediction that made a 1.0 ms subnet 1.25-1.42 ms, and the re-anchoring, which times such subnets, then
    refused tables built minutes earlier on the same machine (leave-one-out 9-11%, the same on every repetition:
    the table, not the measurement noise). Calibration and anchor both draw their subnets this way.
    """
    pool = sorted(random_subnets(shape, 16 * n, seed), key=cost)
    return [shape.full_subnet()] + [pool[round(i)] for i in np.linspace(0, len(pool) - 1, n - 1)]


def ffn_grid(shape: BertShape, step: int) -> list[int]:
    """The FFN widths whose blocks a table measures: multiples of `step`, the full width, and half a step.

    Why half a step: an FFN block's cost jumps at removal (its fixed per-operation costs go with it), so the line from
    width 0 to the first multiple halves the cost of narrower widths, which search spaces on a finer step contain. On
    the Xeon with AMX (session 25, INT8 MiniLM-L6) a one-layer FFN block of width 64 cost 0.91x the 128-wide one where
    the line said 0.5x, and whole models with all six FFNs at 64 or at 128 ran equally fast.
    """
    if step < 1:
        raise UserError(f"--ffn-step must be positive, got {step}")
    half = max(1, min(step // 2, shape.intermediate_size))
    return sorted(set(range(0, shape.intermediate_size, step)) | {shape.intermediate_size, half})


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


def _measure_group(progress: _Progress, key: str, models: Sequence[RandomSubnet], irs: PreparedIRs,
                   rounds: int, label: str | None, again: bool = False) -> list[dict]:
    """Measure (or reuse from a previous run, unless `again`) one group of models, exported where `irs` does not
    hold them yet. Measured `again`, the group keeps whichever measurement found its first model (the full model, the
    drift reference) faster: a second timing can fall in the slow state too, and it must not replace a faster one."""
    stats = progress.get(key)
    if stats is None or again:
        new = measure_compiled(irs.paths(models), irs.profile, rounds, desc=label)
        stats = new if stats is None else faster(stats, new)
        progress.put(key, stats)
    return stats


# The candidate calibrations (`table.CALIBRATION_FEATURES` they use); the unused features get coefficient 0.
STRUCTURAL = "cost per kept head, FFN channel and block"
CALIBRATIONS = {"block sum x scale": ("block_sum_ms",),
                "scaled block sum": ("block_sum_ms", "one"),
                "scaled block sum + cost per kept block": ("block_sum_ms", "one", "attention_blocks", "ffn_blocks"),
                STRUCTURAL: ("one", "attention_blocks", "ffn_blocks", "heads", "ffn_channels")}
# The structural candidate (no block sum) competes only at sequence lengths up to this. Why: at length 32 the one-layer
# block models run 0.03-0.3 ms and their sum misleads; on three sets of MiniLM-L6 measurements there (2-vCPU Xeon,
# session 26: bf16 in 100-round measurements; bf16 and INT8 tables built and checked on 24 unseen subnets) it predicted
# the unseen subnets best (within 5% at the best scale: 100/100%, 88%, 100% against the log curve's 88/88%, 79%, 83%);
# with blocks timed in ~160 rounds (`measure.SECONDS_PER_MODEL`) the two came out level (71-96% both,
# `tools/check_calibration_forms.py`), so the leave-one-out error decides per build.
# At length 128 the block sum holds what 32 subnets cannot teach five coefficients: refitting stored Xeon builds
# (sessions 19-25) with it lowered their leave-one-out error by 3-36%, yet their checks moved as often down as up
# (within 5% in the same sitting 100 -> 79%, 96 -> 67%, 67 -> 50% against 50 -> 67%, 67 -> 79%, 71 -> 83%).
STRUCTURAL_MAX_SEQ_LEN = 64


# The curve candidate (`table.py`, step 2): a quadratic in the log of the block sum, fitted to the log of the measured
# latency (least squares of log errors: relative errors, as `relative_fit`).
LOG_CURVE = "log-quadratic in the block sum"


def fit_log_curve(block_sum_ms: np.ndarray, y: np.ndarray) -> dict:
    """{"a", "b", "c"} of ln(y) ~ a + b ln(sum) + c ln(sum)^2."""
    c, b, a = np.polyfit(np.log(block_sum_ms), np.log(y), 2)
    return {"a": float(a), "b": float(b), "c": float(c)}


def relative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients c of `y ~ x @ c` by least squares of the relative errors (each row divided by its measurement,
    so a 1 ms subnet counts as much as the full model): what the calibration, the MAC baseline and the anchor fit."""
    return np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)[0]


def linear_prediction(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray) -> float:
    """`x @ c`, c fitted by `relative_fit` on the other rows."""
    return float(x @ relative_fit(x_fit, y_fit))


def log_curve_prediction(x_fit: np.ndarray, y_fit: np.ndarray, x: float) -> float:
    """The log curve fitted on the other block sums, at block sum `x`."""
    return log_curve_ms(fit_log_curve(x_fit, y_fit), x)


def leave_one_out(x: np.ndarray, y: np.ndarray, prediction=linear_prediction) -> np.ndarray:
    """Each row's prediction by a fit on all the other rows (`prediction(x_others, y_others, x_row)`)."""
    out = np.empty(len(y))
    for i in range(len(y)):
        mask = np.arange(len(y)) != i
        out[i] = prediction(x[mask], y[mask], x[i])
    return out


def _features(table: LatencyTable, subnets: Sequence[SubnetConfig], features: Sequence[str]) -> np.ndarray:
    """The rows of the calibration's design matrix, `features` only."""
    return np.array([table.features(s) for s in subnets])[:, [CALIBRATION_FEATURES.index(f) for f in features]]


def fit_calibration(table: LatencyTable, subnets: Sequence[SubnetConfig], measured_ms: Sequence[float],
                    features: Sequence[str] = CALIBRATION_FEATURES) -> dict:
    """`relative_fit` of measured latency on the table's `features`; the others get coefficient 0."""
    coef = relative_fit(_features(table, subnets, features), np.asarray(measured_ms, dtype=float))
    return {name: float(coef[features.index(name)]) if name in features else 0.0 for name in CALIBRATION_FEATURES}


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = (predicted - measured) / measured
    return {"mape_pct": float(100 * np.mean(np.abs(rel))), "worst_pct": float(100 * np.max(np.abs(rel))),
            "within_5pct": float(np.mean(np.abs(rel) <= 0.05)), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "spearman": float(spearmanr(predicted, measured).statistic)}


def table_header(shape: BertShape, profile: Profile, fingerprint: dict, settings: TableBuildSettings,
                 selection: str = SELECTION, block_reference: bool = True) -> dict:
    """A table document's header: what it is for, where and how it was measured (a partial build resumes only under
    the same header). `block_reference`: the block models' group starts with the full model (`build_table`)."""
    recorded = {**settings.to_dict(), "burst": BURST, "cpus": PINNING, "subnet_selection": selection,
                "granularity_probes": granularity_probes(shape), "block_reference": block_reference}
    return {"format": FORMAT, "version": VERSION, "shape": shape.to_dict(), "profile": profile.to_dict(),
            "fingerprint": fingerprint, "settings": recorded}


def build_table(shape: BertShape, profile: Profile, out: str | os.PathLike,
                settings: TableBuildSettings = TableBuildSettings(), resume: bool = True,
                progress: bool = True) -> LatencyTable:
    """Measure, calibrate and validate a table for `shape` under `profile`; written atomically to `out`."""
    started = time.time()
    out = check_writable(out)
    if profile.precision == "int8":
        warn_if_int8_is_slow()
    grid = ffn_grid(shape, settings.ffn_step)
    state = _Progress(out, table_header(shape, profile, hardware_fingerprint(profile), settings), resume)
    if state.data.get("complete"):
        return LatencyTable(state.data)
    label = (lambda text: text) if progress else (lambda text: None)
    with PreparedIRs(profile) as irs:
        full = RandomSubnet(shape, settings.seed, shape.full_subnet())  # every group's drift reference, exported once
        models = block_models(shape, grid, settings.seed)

        def measure_blocks(key: str, again: bool = False) -> list[dict]:
            stats = _measure_group(state, key, [full] + models, irs, settings.block_rounds, label("blocks"), again)
            irs.forget(models)
            return stats

        # The calibration subnets are chosen by the first block measurement's sums (so a resumed build chooses the
        # same ones); a measurement again (below) replaces the blocks where its full model ran faster.
        first = measure_blocks("blocks")
        raw = uncalibrated(dict(state.data, blocks=blocks_from_latencies(shape, grid, [s["ms"] for s in first[1:]])))
        # The full model is always a calibration point: it anchors the top of the range the search cares about; the
        # others spread over the whole range by their block sums.
        subnets = spread_subnets(shape, settings.subnets, settings.seed, raw.raw_ms)
        starts = range(0, len(subnets), settings.group_size)
        members = {start: [RandomSubnet(shape, settings.seed, s) for s in subnets[start:start + settings.group_size]]
                   for start in starts}

        def measure(start: int, again: bool = False) -> list[dict]:
            group = members[start]
            stats = _measure_group(state, f"subnets/{start}", [full] + group, irs, settings.subnet_rounds,
                                   label(f"subnets {start + 1}-{start + len(group)}/{len(subnets)}"), again)
            irs.forget([m for m in group if m != full])
            return stats

        groups = [measure(start) for start in starts]
        factor = state_factor(groups[0])

        def again(i: int) -> list[dict]:  # group 0: the block models
            if i == 0:
                measure_blocks("blocks/again", again=True)
                return _fastest_block_group(state.data["measurements"])
            return measure(starts[i - 1], again=True)

        # Groups timed in a slow second state of the machine are timed again (see slow_state.STATE_FACTOR).
        everything = [_fastest_block_group(state.data["measurements"]), *groups]
        remeasured = measure_slow_groups_again(everything, again, factor)
        groups = everything[1:]
    data = calibrated_document(state.data, subnets, groups, measured_blocks(state.data))
    data["validation"]["stability"].update(remeasured_groups=remeasured, state_factor=factor)
    data["build_minutes"] = data.get("build_minutes", 0.0) + (time.time() - started) / 60
    data["complete"] = True
    table = LatencyTable(data)
    table.save(out)
    return table


def calibrate_groups(table: LatencyTable, subnets: list[SubnetConfig], groups: list[list[dict]],
                     block_stats: list[dict]) -> dict:
    """`calibrate_and_validate` on groups of measurements that each start with the full model (the drift reference):
    every group rescaled so that its full model takes the median of them (`drift_factors`)."""
    references = [g[0]["ms"] for g in groups]
    measured = [dict(m, ms=m["ms"] * factor, unscaled_ms=m["ms"])
                for factor, g in zip(drift_factors(references), groups) for m in g[1:]]
    result = calibrate_and_validate(table, subnets, measured, block_stats)
    result["validation"]["stability"]["drift_reference_ms"] = references
    return result


def block_models(shape: BertShape, grid: list[int], seed: int) -> list[RandomSubnet]:
    """The block models in the order `blocks_from_latencies` reads them: the fixed part (a 1-layer model with the
    real vocabulary), a 1-layer model with both sub-blocks removed, attention with 1..H heads, FFN at grid[1:], and
    the granularity probes."""
    one = dataclasses.replace(shape, num_layers=1)
    small = dataclasses.replace(one, vocab_size=min(BLOCK_VOCAB, shape.vocab_size))
    nets = [SubnetConfig((0,), (0,))] + [SubnetConfig((h,), (0,)) for h in range(1, shape.num_heads + 1)] \
        + [SubnetConfig((0,), (f,)) for f in grid[1:] + granularity_probes(shape)]
    return [RandomSubnet(one, seed, nets[0])] + [RandomSubnet(small, seed, n) for n in nets]


def blocks_from_latencies(shape: BertShape, grid: list[int], ms: Sequence[float]) -> dict:
    """The table's blocks (`blocks_from_ms`) and its measured width granularity from `block_models`' latencies
    (tables built before session 19 measured no probes: then no granularity)."""
    n = 2 + shape.num_heads + len(grid) - 1
    blocks = blocks_from_ms(shape, grid, ms[:n])
    if len(ms) > n:
        blocks["granularity"] = granularity_from_ms(blocks["ffn_grid"], blocks["ffn_ms"], granularity_probes(shape),
                                                    [v - ms[1] for v in ms[n:]])
    return blocks


# Width granularity (issue 13). On the Intel Xeon with AMX of session 19 (family 6 model 207, OpenVINO 2026.4.1, 1
# thread, [1,128]) one-layer FFN blocks at widths that are not multiples of 32 ran 7-11% slower than the line through
# the multiples of 64 in bf16, and widths that are not multiples of 64 8-14% slower in INT8 (AMX tiles hold 32 bf16 or
# 64 int8 values per row), more than the next aligned width costs; f32 there, and every precision on the EPYCs, stayed
# within +-2-3% of the line. Whole MiniLM-L6 models with all six FFNs at 1016 ran 8% slower than at 1024 in bf16 and
# INT8 (0.4% fewer MACs). So every table times three probe widths just below the largest one (multiples of 8, 16 and
# 32 that are not of the next power of two) with its blocks, and records the smallest alignment whose off-grid widths
# stay on the line, and the penalty of those that do not (`table.py` applies it to every width off the alignment).
# The evidence bound: on the AVX2 EPYC an INT8 build's probes came out +5.6, +4.8 and +3.3% (aligned one-layer widths
# there sit up to ±4% off their own line: the interpolation's error, not granularity), on the Xeon the most misaligned
# probe (a multiple of 8 only) +11 to +20% in bf16 and INT8 in each of 3 repetitions. So granularity is declared only
# where that probe runs more than GRANULARITY_EVIDENCE above the line; then every probe above GRANULARITY_BOUND is slow.
GRANULARITY_OFFSETS = (8, 16, 32)
GRANULARITY_EVIDENCE = 0.08
GRANULARITY_BOUND = 0.05  # a probe more than this above the line (its FFN sub-block) counts as slow


def granularity_probes(shape: BertShape) -> list[int]:
    """The probe widths (largest width minus GRANULARITY_OFFSETS); none for widths that are not a multiple of 64."""
    top = shape.intermediate_size
    return [top - o for o in GRANULARITY_OFFSETS] if top % 64 == 0 and top > 64 else []


def _power_of_two_dividing(width: int) -> int:
    return width & -width


def granularity_from_ms(grid: Sequence[int], ffn_ms: Sequence[float], probes: Sequence[int],
                        probe_ms: Sequence[float]) -> dict:
    """{"alignment", "penalty", "probes"}: the alignment is twice the coarsest alignment among the slow probes (1 when
    none is slow, or the most misaligned probe shows no clear effect); the penalty, their mean excess over the line,
    is what a width off the alignment costs extra."""
    line = np.interp(probes, grid, ffn_ms)
    excess = [float(m / ref - 1) if ref > 0 else 0.0 for m, ref in zip(probe_ms, line)]
    finest = min(range(len(probes)), key=lambda i: _power_of_two_dividing(probes[i]))
    slow = [(w, e) for w, e in zip(probes, excess) if e > GRANULARITY_BOUND] \
        if excess[finest] > GRANULARITY_EVIDENCE else []
    alignment = 2 * max(_power_of_two_dividing(w) for w, _ in slow) if slow else 1
    return {"alignment": alignment, "penalty": float(np.mean([e for _, e in slow])) if slow else 0.0,
            "probes": [{"width": w, "ms": float(m), "line_ms": float(ref), "excess": e}
                       for w, m, ref, e in zip(probes, probe_ms, line, excess)],
            "bound": GRANULARITY_BOUND, "evidence": GRANULARITY_EVIDENCE}


def blocks_from_ms(shape: BertShape, grid: list[int], value: Sequence[float]) -> dict:
    """The table's blocks from the block models' latencies, in `block_models`' order: the fixed part, the 1-layer
    model with both sub-blocks removed (subtracted from the rest), attention with 1..H heads, FFN at grid[1:].
    A sub-block costs at least nothing: where noise puts a tiny model's sub-block below the empty layer (a test's
    2-head, 32-wide model: once in two full test runs on the AVX2 EPYC), it is 0 rather than an invalid table."""
    fixed, base = float(value[0]), float(value[1])
    above = lambda v: max(0.0, float(v) - base)  # noqa: E731
    return {"fixed_ms": fixed, "attention_ms": [0.0] + [above(v) for v in value[2:2 + shape.num_heads]],
            "ffn_grid": grid, "ffn_ms": [0.0] + [above(v) for v in value[2 + shape.num_heads:]],
            "interpolation": "FFN latency is linear in width between grid points"}


def uncalibrated(data: dict) -> LatencyTable:
    """A table document's blocks as a table predicting their plain sum (calibration = the block sum x 1)."""
    identity = dict(dict.fromkeys(CALIBRATION_FEATURES, 0.0), block_sum_ms=1.0)
    return LatencyTable(dict(data, complete=True, calibration={"coef": identity}))


def calibrated_document(data: dict, subnets: list[SubnetConfig], groups: list[list[dict]],
                        block_stats: list[dict]) -> dict:
    """A table document (`data`: header and measurements) completed from its measurements: the blocks from
    `block_stats` (in `block_models`' order), the calibration fitted on the subnets' `groups` (`calibrate_groups`) and
    its validation. Apart from `build_table` so that a build can be refitted from its stored rounds under another
    statistic (`tools/check_statistics.py`)."""
    shape = BertShape.from_dict(data["shape"])
    grid = ffn_grid(shape, data["settings"]["ffn_step"])
    out = dict(data, blocks=blocks_from_latencies(shape, grid, [s["ms"] for s in block_stats]))
    out.update(calibrate_groups(uncalibrated(out), subnets, groups, block_stats))
    return out


def kept_block_group(data: dict) -> list[dict]:
    """Of a table document's block-model measurements (`build_table` measures the group again when it caught a slow
    state) the one the build kept: the one with the faster full model, which leads the group where the settings say
    `block_reference`."""
    stored = data["measurements"]
    if not data["settings"].get("block_reference"):
        return stored.get("blocks/again") or stored["blocks"]
    return _fastest_block_group(stored)


def without_reference(group: list[dict], block_reference: bool) -> list[dict]:
    """A block-model group's measurements in `block_models`' order: without the full model that leads the group where
    it was measured with `block_reference` (builds since session 25, `tools/remote_latency.py measure` since 28)."""
    return group[1:] if block_reference else group


def measured_blocks(data: dict) -> list[dict]:
    """The block models' measurements the build kept (`kept_block_group`), without the full model leading them."""
    return without_reference(kept_block_group(data), data["settings"].get("block_reference", False))


def _fastest_block_group(stored: dict) -> list[dict]:
    """Of the block group's first measurement and the one again (`_measure_group` keeps the faster of those again),
    the one whose leading full model ran faster."""
    return faster(*(stored[k] for k in ("blocks", "blocks/again") if k in stored))


def drift_factors(references: Sequence[float]) -> list[float]:
    """Per group of subnets, the factor its measurements are rescaled by. Drift: the machine's speed changes between
    groups (a whole group 9-10% slower than the next, seen here); every group carries the full model, and each group
    is rescaled so that its full model takes the median of them."""
    level = float(np.median(references))
    return [level / ref for ref in references]


def calibrate_and_validate(table: LatencyTable, subnets: list[SubnetConfig], measured: list[dict],
                           block_stats: list[dict]) -> dict:
    """The calibration with the lower leave-one-out error (see the module docstring), fitted on all subnets; its
    leave-one-out predictions as the validation, beside the other candidate's and a MAC count's (fitted the same
    way), plus the stability of all measurements."""
    shape, profile = table.shape, table.profile
    y = np.array([m["ms"] for m in measured])
    macs = np.array([[s.macs(shape, profile.seq_len, profile.batch) / 1e9, 1.0] for s in subnets])
    candidates = {name: leave_one_out(_features(table, subnets, features), y)
                  for name, features in CALIBRATIONS.items()
                  if name != STRUCTURAL or profile.seq_len <= STRUCTURAL_MAX_SEQ_LEN}
    block_sums = _features(table, subnets, ("block_sum_ms",))[:, 0]
    candidates[LOG_CURVE] = leave_one_out(block_sums, y, log_curve_prediction)
    scores = {name: errors(p, y) for name, p in candidates.items()}
    chosen = min(scores, key=lambda name: scores[name]["mape_pct"])
    mac_fit = leave_one_out(macs, y)
    everything = block_stats + measured
    unstable = [m for m in everything if m["unstable"]]
    if chosen == LOG_CURVE:  # the linear coefficients are kept at 0: the curve replaces them
        calibration = {"coef": dict.fromkeys(CALIBRATION_FEATURES, 0.0), "log_curve": fit_log_curve(block_sums, y)}
    else:
        calibration = {"coef": fit_calibration(table, subnets, y, CALIBRATIONS[chosen])}
    calibration.update(model=chosen, method="least squares of relative (log) error on all measured subnets")
    validation = {
        "n": len(subnets), "method": "leave-one-out: each subnet predicted by the calibration fitted without it",
        **scores[chosen], "candidates": scores,
        "macs_spearman": float(spearmanr(macs[:, 0], y).statistic),
        "calibrated_macs": errors(mac_fit, y),
        "stability": {"unstable_measurements": len(unstable), "of": len(everything),
                      "max_disagreement": max(m["disagreement"] for m in everything),
                      "median_spread": float(np.median([m["spread"] for m in everything])),
                      # median wall time / CPU time of a call: ~1 alone (1 thread), >1 when other jobs preempt
                      "median_wall_over_cpu": float(np.median([m["wall_over_cpu"] for m in everything])),
                      # the CPUs the timing was bound to (`measure.choose_cpus`); none: where OpenVINO pinned it
                      "cpus": sorted({c for m in everything for c in m.get("cpus", [])}),
                      "unstable": bool(unstable)},
        "subnets": [{"subnet": s.to_dict(), "predicted_ms": float(p), "measured": m}
                    for s, p, m in zip(subnets, candidates[chosen], measured)],
    }
    return {"calibration": calibration, "validation": validation}


def summary_lines(table: LatencyTable) -> list[str]:
    """The validation summary `eftnas-hw profile` prints."""
    v = table.validation
    s = v["stability"]
    measured = statistic(table.data.get("measurements", {}).get("subnets/0", [{}]))
    lines = [
        f"table for {table.shape.describe()} under {table.profile.name} "
        f"({table.profile.threads} thread(s), batch {table.profile.batch}, seq {table.profile.seq_len}, "
        f"{table.profile.precision}); calibration ({table.data['calibration']['model']}): "
        + (", ".join(f"{name} {c:+.4f}" for name, c in table.log_curve.items()) if table.log_curve else
           ", ".join(f"{name} {c:+.4g}" for name, c in zip(CALIBRATION_FEATURES, table.coef) if c)),
        f"validated leave-one-out on {v['n']} random subnets (interleaved rounds, "
        + ("each one's lowest round median):" if measured == LOWEST_ROUND else
           "their common slowdowns removed):"),
        f"  table:           MAPE {v['mape_pct']:.2f}%  worst {v['worst_pct']:.2f}%  within 5% "
        f"{100 * v['within_5pct']:.0f}%  within 10% {100 * v['within_10pct']:.0f}%  Spearman {v['spearman']:.4f}",
        *(f"  candidate '{name}': MAPE {e['mape_pct']:.2f}%  worst {e['worst_pct']:.2f}%  within 5% "
          f"{100 * e['within_5pct']:.0f}%" for name, e in v["candidates"].items()),
        f"  calibrated MACs: MAPE {v['calibrated_macs']['mape_pct']:.2f}%  worst "
        f"{v['calibrated_macs']['worst_pct']:.2f}%  Spearman (MACs vs measured) {v['macs_spearman']:.4f}",
        f"  stability: {s['unstable_measurements']}/{s['of']} measurements flagged (round medians differ > 5%), "
        f"median spread (p90-min)/min {100 * s['median_spread']:.1f}%, median wall/CPU time of a call "
        f"{s['median_wall_over_cpu']:.2f}; timed on CPU(s) "
        + (", ".join(map(str, s["cpus"])) + " (the fastest in a short scan)" if s.get("cpus") else
           "where OpenVINO pinned it")
        + (f"; {s['remeasured_groups']} group(s) measured again, their full model over "
           f"{s.get('state_factor', STATE_FACTOR)}x the fastest group's" if s.get("remeasured_groups") else ""),
    ]
    g = table.data["blocks"].get("granularity")
    if g:
        probes = ", ".join(f"{p['width']} {100 * p['excess']:+.1f}%" for p in g["probes"])
        found = (f"widths off multiples of {g['alignment']} run {100 * g['penalty']:.1f}% slower than the line "
                 "(predicted so)") if g["alignment"] > 1 else "none measured"
        lines.append(f"  FFN width granularity: {found}; probes against the line: {probes}")
    if s["unstable"]:
        lines.append("  warning: some repeated measurements disagreed; the machine was noisy during profiling")
    return lines
