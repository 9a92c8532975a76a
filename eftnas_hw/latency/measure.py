"""The measurement protocol: benchmark_app's, made robust to a shared machine.

`benchmark_app -api sync` (the yardstick users check latency with) sets the input tensors once, calls `infer()`
back to back and reports the median of the runtime's own per-call latency (`InferRequest.latency`, which leaves
out Python's cost of passing inputs and returning outputs: 0.1 ms, +10-25% on a 0.5-1 ms model, measured here).
This protocol does the same, per candidate in bursts of BURST calls, rotating through the candidates in rounds.
A candidate's latency is its round medians with each round's common slowdown removed (`common_mode`), at the fastest
round's level; alone, or where every model runs under LOWEST_ROUND_MAX_MS on one thread, the lowest of its round
medians. Why (measured on 2-core VMs): a noisy period inflates the rounds it falls in, every candidate of such a
round alike, not the candidate that happened to run then; on a quiet machine the result is what benchmark_app
reports (the issue's own yardstick: min of 3 interleaved benchmark_app medians). On a VM whose speed switches
between levels every second or so it is the fastest level, where benchmark_app's median reads the mix (the AVX2 EPYC
of session 22: ours 39.6 ms for MiniLM-L6 f32, benchmark_app 46.1, a Python loop doing what benchmark_app does
45.9-46.7; the median of all our calls, kept as "median", lands near benchmark_app there). Taking each candidate's
lowest round median alone left 4.9-5.3% leave-one-out error in MiniLM-L6 f32 tables built on the noisy AVX2 EPYC
(the same build measurements with the rounds' common factor removed: 2.1-3.8%, `tools/check_common_mode.py`).
With one inference thread each call's latency is also scaled by its CPU/wall time ratio when that is below 1:
another process preempting the inference thread adds wall time but no CPU time, so the corrected value is the
call's undisturbed cost (`tools/check_benchmark_app.py` measures how well this holds under load). With more
threads the process's CPU time sums the threads, so no such correction exists: time those on a quiet machine.
Where the machine offers more CPUs than the profile's threads, the timing runs bound to the CPUs that ran fastest in a
short scan (`choose_cpus`, see SCAN_S), not where OpenVINO's own pinning would put it.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Sequence

import numpy as np
import openvino as ov
from tqdm.auto import tqdm

from ..errors import UserError
from ..export import IR_NAME
from .profiles import Profile

# Back-to-back timed calls per candidate per round, and the default number of rounds (100 timed calls per candidate).
# Short bursts in many rounds: on the AVX2 EPYC (session 17) the machine's speed wanders by ~5% (sd) over seconds,
# so a round must be short for its common slowdown to be common to all its candidates. 12 MiniLM-L6 subnets, each's
# latency relative to the full model, 4 repetitions of 100 calls each: burst 20 x 5 rounds varied by 3.7% (median
# CV, worst 9.8%), burst 5 x 20 rounds by 1.4% (worst 3.3%), burst 2 x 50 rounds by 1.2% (worst 1.6%, 25% longer);
# `tools/check_interleaving.py`. Each burst follows one untimed call (`rewarm`) that re-warms what the previous
# candidate displaced from cache: without it (session 18, 4 repetitions) 8 f32 subnets varied by 0.6% (worst 2.0%)
# against 1.0% (2.2%) with it, but 12 INT8 ones (`--rewarm 0 1`), whose weights fit the cache, by 3.7% (5.3%) against
# 2.0% (2.7%): kept, for its 17-20% of the timing time.
BURST = 5
# A candidate's turn in a round (its burst) lasts at most about TURN_MS: where the slowest candidate's call takes
# longer than TURN_MS / BURST, the burst shrinks to TURN_MS // that call (at least one call), the rounds grow to keep
# the timed calls, and the re-warming call is dropped. Why (session 29, 2-vCPU Xeon with AMX, BERT-base f32 at one
# thread: the full model and 11 random subnets, 20-200 ms a call; 3 repetitions of 40 timed calls each,
# `tools/check_interleaving.py --shape bert-base`): bursts of 5 in 8 rounds varied by 3.98% (median CV of latency
# relative to the full model, worst 7.34%) with the re-warming call and 2.17% (4.41%) without; bursts of 1 in 40
# rounds by 0.88% (1.30%) with it and 0.98% (1.38%) without, in 121 and 69 s. A turn of 5 such calls lasts 0.5-1 s,
# a round of 32 of them (a table check) ~29 s, longer than the VM's states; the re-warming call only lengthens the
# turn of models whose weights do not stay in cache anyway. Session 17's MiniLM-L6 f32 (~37 ms a call, turns of
# ~0.2 s at a burst of 5) varied by 1.4%, so models up to TURN_MS / BURST keep the burst and the re-warming call.
# A lower bound is untried on tables: BERT-base bf16 (full model 37-50 ms, at this bound) varied by 4.1-5.0% at bursts
# of 5 and 1.5-2.7% at bursts of 2 in the same test; a table of it built with this code (bursts of 2-5, as each
# group's last warm-up call read; the fastest of the warm-up calls decides since session 30) checked 88 / 88 / 92% (as
# built / anchored first / in the same sitting), session 23's at bursts of 5 92 / 92 / 83%. A lower bound would also
# change MiniLM-L6 f32 (25-40 ms), not checked with it.
TURN_MS = 200.0
ROUNDS = 20
# A measurement keeps adding rounds (up to MAX_ROUNDS_FACTOR x the rounds asked for) until it has lasted
# SECONDS_PER_MODEL x its number of models: short models (length 32: 0.03-2 ms) get more calls, long ones as many as
# asked. Why (session 26, 2-vCPU Xeon, MiniLM-L6 bf16 at length 32, 56 subnets): 32 of them fitted and 24 predicted
# from the same rounds, in the machine's fast state, reached 83-100% within 5% (median 92%) on 20-round slices of a
# measurement and 96-100% on 50-round slices; 20 rounds of those models last ~0.15 s per model.
SECONDS_PER_MODEL = 0.5
MAX_ROUNDS_FACTOR = 5
# Where every model of a measurement runs under LOWEST_ROUND_MAX_MS (the slowest one's lowest round median), a
# candidate's latency is its lowest round median instead of the common-mode level. Why (sessions 26-27, 2-vCPU Xeon
# with AMX, MiniLM-L6 and BERT-small at length 32 in bf16/INT8, 0.05-2.3 ms): the VM's slow state slows large models
# more than small ones there (the largest fifth of 56 subnets 1.06-1.34x, the smallest 0.99-1.04x), so removing each
# round's common slowdown bends the proportions. Six measurements of those 56 subnets agreed pairwise within 5% on
# 43-98% of them (mean 68%) by the common-mode level, on 88-100% (mean 95%) by the lowest round median; 14 builds of
# such tables, recomputed from their stored rounds, reached leave-one-out errors of 2.0-4.7% (median 2.6%) by the
# lowest round median against 2.2-14.9% (median 3.9%), lower in 12 of 14. With slower models (MiniLM-L6 f32 at length
# 32 and length-128 tables, 4-40 ms; the AVX2 EPYC's length-32 tables, 9-10 ms) the slow state is a common factor:
# there the lowest round median did worse in 14 of 21 stored builds (2 threads: 1.8-3.2% -> 6.5-20%). One inference
# thread only: all the evidence for it is from one thread, and 2-thread MiniLM-L6 bf16 at length 128 (2.5-5 ms) has
# its full model near the bound.
LOWEST_ROUND_MAX_MS = 3.0
# What a measurement's "ms" is (`measure_compiled` records which in each stats dict's "statistic"), for cards.
COMMON_MODE, LOWEST_ROUND = "common-mode", "lowest round median"
STATISTICS = {
    COMMON_MODE: "round medians less each round's common slowdown, at the fastest round's level (benchmark_app's "
                   "median on a quiet machine; interleaved rounds)",
    LOWEST_ROUND: "the lowest of the round medians (benchmark_app's median on a quiet machine, the lowest of "
                           "repeated ones on a busy one; interleaved rounds)"}
# Rounds whose medians differ by more than this (highest vs lowest) flag the measurement as unstable.
DISAGREEMENT_BOUND = 0.05
# The timing's CPUs. OpenVINO's own pinning (ENABLE_CPU_PINNING, on by default on Linux) binds a one-thread inference
# to a core of its choosing, busy or not: on the 2-vCPU AVX2 EPYC, with a busy loop on CPU 0, MiniLM-L6 f32 ran 80 ms
# under it whatever the process's affinity, 34.5 ms with it off and the threads bound to CPU 1 (quiet: 35 ms). On the
# 16-vCPU Xeon VM of session 21 (tools/probe_cpu_noise.py), MiniLM-L6 bf16 ran 5.1-5.7 ms (median) on 7 vCPUs,
# 10-12 ms on 5, and switched between the two for ~1 s at a time on 4 (most likely a neighbour on the same physical
# core, which the VM cannot see: no steal time, no load) - CPU 0 among the switching ones. So where the machine offers
# more CPUs than the profile's threads, OpenVINO's pinning is switched off, each usable CPU (at most SCAN_CPUS,
# spread) runs the first model alone twice for SCAN_S, and every thread of the process is bound to the `threads`
# fastest while timing. The choice is kept for SCAN_MAX_AGE_S.
SCAN_CPUS = 16
SCAN_S = 0.25
SCAN_MAX_AGE_S = 300.0
# A chosen CPU can turn slow later: on that Xeon VM the vCPU fastest in the scan ran an INT8 check's full model at
# 6.5-11.9 ms from one round to the next, a neighbour's 2x. When the first model's burst median stays above
# MOVE_FACTOR x its best on these CPUs for MOVE_AFTER rounds in a row, the CPUs are chosen afresh and the threads moved
# (at most MAX_MOVES times); the rounds' common slowdown (`common_mode`) absorbs the change of level. Why 1.5: on the
# AVX2 EPYC a sub-millisecond model's 5-call medians spread 1.3x between rounds on a quiet CPU.
MOVE_FACTOR = 1.5
MOVE_AFTER = 3
MAX_MOVES = 3
PINNING = "bound to the CPUs that ran fastest in a short scan, where the machine offers more than the threads"
_CHOSEN: dict[int, tuple[float, list[int], dict[int, float]]] = {}

_CORE: ov.Core | None = None


def core() -> ov.Core:
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def ir_path(ir: str | os.PathLike) -> Path:
    """The .xml of an IR folder (HF-style, openvino_model.xml) or file; UserError when there is none."""
    path = Path(ir)
    path = path / IR_NAME if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"OpenVINO IR not found: {ir}")
    return path


def compile_ir(ir: str | os.PathLike | ov.Model, config: dict, device: str = "CPU") -> ov.CompiledModel:
    """Compile an IR (folder, .xml or ov.Model) with OpenVINO properties `config`, on one shared ov.Core."""
    model = ir if isinstance(ir, ov.Model) else core().read_model(str(ir_path(ir)))
    return core().compile_model(model, device, config)


def summarize(latency_ms: Sequence[Sequence[float]], wall_ms: Sequence[Sequence[float]],
              cpu_ms: Sequence[Sequence[float]], threads: int) -> dict:
    """One candidate's samples, a list per round -> {"lowest_round_median", "median"/"min"/"p90" over all calls,
    "round_medians", "spread" (p90-min)/min, "disagreement" of the round medians, "wall_over_cpu" (~1 alone with one
    thread, >1 when other processes preempt it), "unstable"}."""
    lat, wall, cpu = (np.asarray(x, dtype=float) for x in (latency_ms, wall_ms, cpu_ms))
    corrected = lat * np.minimum(1.0, cpu / wall) if threads == 1 else lat
    rounds = np.median(corrected, axis=1)
    flat = corrected.ravel()
    stats = {"lowest_round_median": float(rounds.min()), "median": float(np.median(flat)),
             "min": float(flat.min()), "p90": float(np.percentile(flat, 90)), "n": int(flat.size),
             "round_medians": [float(r) for r in rounds],
             "uncorrected_median": float(np.median(lat)),
             "wall_over_cpu": float(np.median(wall / cpu))}
    stats["spread"] = (stats["p90"] - stats["min"]) / stats["min"]
    stats["disagreement"] = float((rounds.max() - rounds.min()) / rounds.min())
    stats["unstable"] = len(rounds) > 1 and stats["disagreement"] > DISAGREEMENT_BOUND
    return stats


def common_mode(round_medians: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Per candidate (rows of round medians, one column per round) its latency at the fastest round's level.

    log(round median) = candidate + round, fitted by median polish (robust to a single candidate's outlier round);
    a single candidate gets its lowest round median."""
    logs = np.log(np.asarray(round_medians, dtype=float))
    candidate, round_ = np.median(logs, axis=1), np.zeros(logs.shape[1])
    for _ in range(iterations):
        round_ = np.median(logs - candidate[:, None], axis=0)
        candidate = np.median(logs - round_[None, :], axis=1)
    return np.exp(candidate + round_.min())


def check_precision(compiled: ov.CompiledModel, profile: Profile) -> None:
    """A CPU without bf16 support compiles a bf16 request as f32 without complaint: refuse to time that."""
    wanted = profile.ov_config().get("INFERENCE_PRECISION_HINT")
    got = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if wanted is not None and got != wanted:
        raise UserError(f"profile {profile.name} asks for {wanted} but OpenVINO runs {got} on this CPU "
                        f"({', '.join(core().get_property(profile.device, 'OPTIMIZATION_CAPABILITIES'))})")


def _inputs(model: ov.Model | ov.CompiledModel, profile: Profile) -> dict:
    """All-ones token ids / masks of the profile's static shape: latency does not depend on token values."""
    return {inp.get_any_name(): np.ones((profile.batch, profile.seq_len), dtype=np.int64) for inp in model.inputs}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on; [] where the OS cannot bind threads (then nothing is bound)."""
    if not (hasattr(os, "sched_getaffinity") and os.path.isdir("/proc/self/task")):
        return []
    return sorted(os.sched_getaffinity(0))


def cpu_count() -> int:
    """How many CPUs this process may use (all of them where the OS cannot say)."""
    return len(usable_cpus()) or os.cpu_count() or 1


def _bind(cpus: Sequence[int]) -> dict[int, set[int]]:
    """Every thread of this process bound to `cpus`; each one's mask before."""
    before = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with suppress(OSError):  # the thread ended meanwhile
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return before


@contextmanager
def bound(cpus: Sequence[int]):
    """Every thread of this process bound to `cpus` (none: left alone), each back to its own mask afterwards."""
    before = _bind(cpus) if cpus else {}
    try:
        yield
    finally:
        for tid, mask in before.items():
            with suppress(OSError):
                os.sched_setaffinity(tid, mask)


def choose_cpus(request: ov.InferRequest, threads: int, among: Sequence[int],
                fresh: bool = False) -> tuple[list[int], dict[int, float]]:
    """The `threads` CPUs of `among` on which `request` ran fastest and every scanned CPU's ms: the slower of its
    mean times per call in two passes over the CPUs, SCAN_S each (a CPU that switches speed every second or so must
    be fast in both to be chosen). The mean, wall time over calls, not the median: where another process shares the
    CPU, the scheduler gives each a slice of milliseconds, so many sub-millisecond calls run whole inside the
    inference's slices and their median understates the sharing (a 0.7-ms model on the AVX2 EPYC beside a busy loop
    on its CPU: median per call 1.25-1.28 ms, mean 2.50 ms; quiet 0.65-0.80 / 0.72-0.85; the busy CPU was chosen once
    in a test run with medians). The last choice for this thread count while younger than SCAN_MAX_AGE_S, unless
    `fresh`."""
    last = _CHOSEN.get(threads)
    if last and not fresh and time.time() - last[0] < SCAN_MAX_AGE_S:
        return last[1], last[2]
    cpus = list(among)
    scan_ms: dict[int, float] = {}
    for _ in range(2):
        for cpu in cpus[::max(1, len(cpus) // SCAN_CPUS)][:SCAN_CPUS]:
            with bound([cpu]):
                request.infer()  # moves the threads there and re-warms that core's cache
                calls, start = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() < start + SCAN_S:
                    request.infer()
                    calls += 1
                mean_ms = (time.perf_counter() - start) * 1e3 / calls
            scan_ms[cpu] = max(scan_ms.get(cpu, 0.0), mean_ms)
    chosen = sorted(sorted(scan_ms, key=scan_ms.get)[:threads])
    _CHOSEN[threads] = (time.time(), chosen, scan_ms)
    return chosen, scan_ms


def _request(model: ov.Model | str | os.PathLike, profile: Profile, bind: bool) -> ov.InferRequest:
    """Compiled under the profile (static shape, precision checked), all-ones inputs set once; without OpenVINO's
    own pinning where the caller binds the threads itself (`bind`)."""
    model = core().read_model(str(model)) if not isinstance(model, ov.Model) else model
    if model.inputs and model.inputs[0].get_partial_shape().is_dynamic:
        model.reshape({inp.get_any_name(): [profile.batch, profile.seq_len] for inp in model.inputs})
    config = dict(profile.ov_config(), **({"ENABLE_CPU_PINNING": False} if bind else {}))
    compiled = core().compile_model(model, profile.device, config)
    check_precision(compiled, profile)
    request = compiled.create_infer_request()
    for name, value in _inputs(compiled, profile).items():
        request.set_tensor(name, ov.Tensor(value))
    return request


def measure_compiled(models: Sequence[ov.Model | str | os.PathLike], profile: Profile, rounds: int = ROUNDS,
                     burst: int | None = None, warmup: int = 3, desc: str | None = None, rewarm: int | None = None,
                     min_seconds: float | None = None) -> list[dict]:
    """Compile each IR under the profile and time them in interleaved rounds; one stats dict (ms) per model.

    Each round gives every candidate `rewarm` untimed calls and then a burst of `burst` timed ones (see BURST). By
    default the burst is BURST calls, fewer for slow models (TURN_MS: `rounds` then counts rounds of BURST calls,
    and the re-warming call is dropped), and each stats dict records the "burst" and "rewarm" used. Rounds are added
    until the timing has lasted `min_seconds` (default: SECONDS_PER_MODEL per model). Timed on the CPUs of
    `choose_cpus` where the machine offers more than the profile's threads, moved when they turn slow (see
    MOVE_FACTOR): each stats dict's "cpus" lists every CPU used ([] when not bound), "cpu_moves" how often they were
    chosen again.
    """
    if rounds < 1 or (burst is not None and burst < 1):
        raise UserError(f"measurement needs at least one round and one call per round (got {rounds}, {burst})")
    # Compilation is native and mostly serial: compiling on every core at once took 8 MiniLM-L6 subnets from 3.8-4.0
    # to 2.5-2.8 s (INT8) and 1.9-2.4 to 1.5-1.6 s (f32) on the 2-core AVX2 EPYC. Nothing is timed meanwhile.
    among = usable_cpus()  # before any binding of this thread
    choosing = profile.device == "CPU" and len(among) > profile.threads
    with ThreadPoolExecutor(max(1, min(len(models), cpu_count()))) as pool:
        requests = list(pool.map(lambda m: _request(m, profile, choosing), models))
    cpus = choose_cpus(requests[0], profile.threads, among)[0] if choosing else []
    used, moves, best, slow_rounds = set(cpus), 0, float("inf"), 0
    samples = [([], [], []) for _ in requests]
    min_seconds = SECONDS_PER_MODEL * len(models) if min_seconds is None else min_seconds
    with bound(cpus), tqdm(total=rounds, desc=desc, leave=False, disable=desc is None) as bar:
        warm_ms = [float("inf") if warmup else 0.0 for _ in requests]
        for i, request in enumerate(requests):
            for _ in range(warmup):
                request.infer()
                warm_ms[i] = min(warm_ms[i], request.latency)
        if burst is None:
            # each one's fastest warm-up call: one call in the VM's slow state must not shorten every turn
            slowest_ms = max(warm_ms)
            burst = BURST if slowest_ms * BURST <= TURN_MS else max(1, int(TURN_MS // slowest_ms))
            rounds = -(-rounds * BURST // burst)  # the same timed calls in shorter turns
            if rewarm is None and burst < BURST:
                rewarm = 0
            bar.reset(total=rounds)
        rewarm = 1 if rewarm is None else rewarm
        started, done = time.perf_counter(), 0
        while done < rounds or (done < MAX_ROUNDS_FACTOR * rounds and time.perf_counter() - started < min_seconds):
            done += 1
            bar.update()
            for (lat, wall, cpu), request in zip(samples, requests):
                for _ in range(rewarm):
                    request.infer()
                lat.append([]), wall.append([]), cpu.append([])
                for _ in range(burst):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    request.infer()
                    wall[-1].append((time.perf_counter() - start) * 1e3)
                    cpu[-1].append((time.process_time() - start_cpu) * 1e3)
                    lat[-1].append(request.latency)
            if not choosing or moves == MAX_MOVES:
                continue
            reference = float(np.median(samples[0][0][-1]))
            best = min(best, reference)
            slow_rounds = slow_rounds + 1 if reference > MOVE_FACTOR * best else 0
            if slow_rounds >= MOVE_AFTER:
                cpus = choose_cpus(requests[0], profile.threads, among, fresh=True)[0]
                _bind(cpus)  # `bound` still restores the masks from before the measurement
                used, moves, slow_rounds, best = used | set(cpus), moves + 1, 0, float("inf")
    stats = [summarize(*s, threads=profile.threads) for s in samples]
    short = profile.threads == 1 and max(s["lowest_round_median"] for s in stats) <= LOWEST_ROUND_MAX_MS
    levels = [s["lowest_round_median"] for s in stats] if short else common_mode([s["round_medians"] for s in stats])
    for s, level in zip(stats, levels):
        s["ms"] = float(level)  # the protocol's latency (see the module docstring and LOWEST_ROUND_MAX_MS)
        s["statistic"] = LOWEST_ROUND if short else COMMON_MODE
        s["cpus"], s["cpu_moves"], s["burst"], s["rewarm"] = sorted(used), moves, burst, rewarm
    return stats


def measure_ir_ms(ir: str | os.PathLike | ov.Model, profile: Profile, rounds: int = ROUNDS) -> dict:
    """Stats (see `summarize`; "ms" is the latency) of one IR file/folder or ov.Model."""
    return measure_compiled([ir if isinstance(ir, ov.Model) else ir_path(ir)], profile, rounds)[0]
