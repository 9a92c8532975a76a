"""IRs to time: models exported (and quantized) the way deployment does, prepared by two processes.

Why two: preparing was half of a table's build (INT8 MiniLM-L6 on the AVX2 EPYC, session 20: export 1.0-1.5 s and
NNCF 2.8-3.8 s per subnet, ~150 s of a 5.2-minute build; the timing ~150 s more), and it is mostly single-threaded
Python (NNCF's pattern matching, torch tracing): two threads quantizing at once gained 12-25% (the GIL), and a forked
child of a process that has run OpenVINO hung. So a spawned helper process exports random-weight subnets
(`RandomSubnet`: plain data that crosses processes; the helper builds the weights itself from the seed) beside the
main process: 8 INT8 MiniLM-L6 subnets in 19-22 s against 33-35 s (`tools/benchmark_prepare.py`), the INT8 build
3.9 minutes. Nothing is timed while it works: `PreparedIRs.paths` returns only when the helper is idle (waiting on
its pipe), its start (7-14 s of imports, once per process) included. Models given as torch modules (a user's
trained weights) are exported by the main process.

Scripts that build or re-anchor tables from Python need the usual `if __name__ == "__main__":` guard of any
multiprocessing code (the helper imports the main module); where the helper cannot start or dies, the main process
exports everything, as on a single core.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import shutil
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import openvino as ov
from torch import nn

from ..export import IR_NAME
from ..models import build_subnet, random_bert
from ..subnet import BertShape, SubnetConfig
from .measure import ROUNDS, core, cpu_count, measure_compiled
from .profiles import Profile


@dataclass(frozen=True)
class RandomSubnet:
    """A subnet cut from the random weights of `seed` (`random_bert`): what tables and anchors time. Plain data, so
    the helper process can build it; latency does not depend on the weights' values (`random_bert` keeps every
    constant a trained model has)."""

    shape: BertShape
    seed: int
    subnet: SubnetConfig

    def build(self) -> nn.Module:
        return build_subnet(_weights(self.shape, self.seed), self.subnet)


Model = Union[nn.Module, RandomSubnet]


@functools.lru_cache(maxsize=2)  # a table build's full shape and its one-layer block shape
def _weights(shape: BertShape, seed: int) -> nn.Module:
    return random_bert(shape, seed)


def export_ir(model: Model, out: str | os.PathLike, profile: Profile) -> Path:
    """Export a BERT classifier the way deployment does (optimum-intel); path of the .xml.

    Blocks, calibration and validation subnets all go through this same exporter, so the table measures the
    graphs that `eftnas-hw export` produces. The IR keeps optimum's dynamic shapes: the measurement reshapes it to
    the profile's [batch, seq] in memory (`measure._request`), the same static graph a saved static IR gives, without
    reading and writing every IR a second time (0.3 s of a 1.1 s MiniLM-L6 export on the AVX2 EPYC). An int8 profile
    quantizes the IR with NNCF (see `quantize_for_timing`).
    """
    from ..export import export_openvino

    path = export_openvino(model.build() if isinstance(model, RandomSubnet) else model, out, overwrite=True)
    return quantize_for_timing(path / IR_NAME, profile) if profile.precision == "int8" \
        else path / IR_NAME


def quantize_for_timing(xml: Path, profile: Profile, samples: int = 1) -> Path:
    """NNCF INT8 (transformer preset) calibrated on random token ids; returns the quantized IR's path.

    Random tokens give other quantization scales than real text, but the same quantized ops: so one sample
    (MiniLM-L6 on the AVX2 EPYC: 2.7-3.2 s against 3.7-4.0 s with four, the same ops; the two IRs of 3 subnets timed
    together 3 times: 0.955-1.022x, no direction). Real deployments calibrate on text (`eftnas-hw export --int8`);
    where their quantizers get zero points a random model's may not, which matters on AMX (`give_zero_points`,
    applied here). The IR is made static at the profile's shape first, as the measurement would: NNCF then compiles
    and matches a static graph (5.9-6.3 -> 4.9-5.1 s per MiniLM-L6 before `nncf_int8` reduced statistics outside the
    graph), with the same quantized ops. No bias correction: it changes bias values, not the quantizers' ranges (a
    MiniLM-L6 subnet on the Xeon: identical ranges; 2.4 s of 5.6 s per MiniLM-L6 on the AVX2 EPYC).
    """
    import nncf

    from ..export import nncf_int8, telemetry_only_with_consent

    ir = core().read_model(xml)
    ir.reshape({inp.get_any_name(): [profile.batch, profile.seq_len] for inp in ir.inputs})
    rng = np.random.default_rng(0)
    data = [{inp.get_any_name(): (rng.integers(0, 100, (profile.batch, profile.seq_len)) if "input_ids" in
                                  inp.get_any_name() else np.ones((profile.batch, profile.seq_len))).astype(np.int64)
             for inp in ir.inputs} for _ in range(samples)]
    with telemetry_only_with_consent():
        quantized = nncf_int8(ir, nncf.Dataset(data), samples, bias_correction=False)
    give_zero_points(quantized)
    out = xml.with_name("int8.xml")
    ov.save_model(quantized, out, compress_to_fp16=False)
    return out


# Ops between a constant and a weight MatMul in an NNCF-compressed IR (int8 weights, decompressed in the graph).
_WEIGHT_PATH_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


def give_zero_points(model: ov.Model) -> int:
    """Give each per-tensor activation quantizer in front of weight MatMuls that came out symmetric a zero point
    (its range moved up one step: zero point 127), as a trained model's quantizers have; returns how many.

    Why: NNCF quantizes these activations asymmetrically, with the range it observed. A trained model's activations
    are skewed, so they get zero points; a random model's are symmetric within a 256th, the zero point lands on 128,
    and OpenVINO's CPU plugin runs them as plain s8, which is faster on AMX. So a random model's INT8 graph ran
    faster than the deployed one, and by a lottery per model: a random MiniLM-L6 one-layer attention block got zero
    points with 8-12 heads and none with 2-7, and INT8 tables on the 2-vCPU Xeon with AMX (session 24) predicted
    every full-depth model with 0-9 heads per layer 8-17% too fast (10-12 heads: within 3.4%), against a free choice
    of heads in the search. Deployed INT8 subnets against their random twins, four subnets timed together four times:
    twins 2.8-5.8% faster, twins given zero points here within 1.4% (0.986-1.001). Of 26 such quantizers the
    deployed IRs had 2-3 without a zero point. Quantizers feeding anything else (query and key, symmetric in
    deployed IRs too) are left alone."""
    from openvino import opset13 as ops

    def constant(node) -> bool:
        kind = node.get_type_name()
        return kind == "Constant" or (kind in _WEIGHT_PATH_OPS and all(constant(v.get_node())
                                                                       for v in node.input_values()))

    def weight_matmul(target) -> bool:
        node = target.get_node()
        return node.get_type_name() == "MatMul" and constant(node.input_value(1 - target.get_index()).get_node())

    moved = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or fq.get_attributes()["levels"] != 256:
            continue
        limits = [fq.input_value(k).get_node() for k in (1, 2, 3, 4)]
        if any(n.get_type_name() != "Constant" or n.get_data().size != 1 for n in limits):
            continue
        low, high = float(limits[0].get_data().ravel()[0]), float(limits[1].get_data().ravel()[0])
        if not (low < 0 < high and abs(low + high * 128 / 127) <= 1e-3 * high):
            continue  # already a zero point (or unsigned)
        if not all(weight_matmul(t) for t in fq.output(0).get_target_inputs()):
            continue
        step = (high - low) / 255
        for k, node in zip((1, 2, 3, 4), limits):
            fq.input(k).replace_source_output(ops.constant(node.get_data() + step).output(0))  # same shape and type
        moved += 1
    return moved


def _serve(conn: Connection) -> None:
    """The helper process: the export and quantization imports (most of its ~14 s start), one torch thread (the main
    process exports beside it), then `export_ir` jobs from the pipe until it closes."""
    import torch
    import nncf  # noqa: F401
    from optimum.exporters.openvino import export_from_model  # noqa: F401

    torch.set_num_threads(1)
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", export_ir(*job)))
        except Exception as e:  # noqa: BLE001 (raised again in the main process)
            conn.send(("error", e))


class HelperFailed(RuntimeError):
    """The helper process died or could not start."""


class _Helper:
    """The helper process (daemonic: it never delays the main process's exit), started at first use and kept for the
    life of this process (idle, it waits on its pipe and costs nothing). One job at a time."""

    _instance: "_Helper | None" = None
    _failed = False

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True, name="eftnas-hw IR helper")
        self.process.start()
        child.close()
        self.started, self.busy = False, False

    @classmethod
    def get(cls) -> "_Helper | None":
        """The helper, started if need be; None where there is one usable CPU or it failed before."""
        if cls._instance is None and not cls._failed and cpu_count() > 1:
            try:
                cls._instance = cls()
            except (OSError, RuntimeError) as e:  # RuntimeError: started while a spawned child imports __main__
                cls.disable(e)
        return cls._instance

    @classmethod
    def disable(cls, error: BaseException) -> None:
        warnings.warn(f"IRs are exported by this process alone from now on (the helper process failed: {error})",
                      stacklevel=3)
        if cls._instance is not None:
            cls._instance.process.kill()
        cls._instance, cls._failed = None, True

    def _receive(self, block: bool) -> tuple[str, object] | None:
        """The next job's outcome from the helper (None if there is none yet and not `block`), noting its start on the
        way; HelperFailed if it died."""
        while True:
            if block:
                connection_wait([self.conn, self.process.sentinel])
            if self.conn.poll():
                try:
                    kind, value = self.conn.recv()
                except EOFError:
                    raise HelperFailed("it closed its pipe") from None
                if kind == "ready":
                    self.started = True
                    continue
                return kind, value
            if not self.process.is_alive():
                raise HelperFailed(f"exit code {self.process.exitcode}")
            if not block:
                return None

    def idle(self) -> bool:
        """Started and without a job (before its start has finished, the main process exports alone)."""
        if not self.started:
            self._receive(block=False)
        return self.started and not self.busy

    def submit(self, model: RandomSubnet, out: Path, profile: Profile) -> None:
        try:
            self.conn.send((model, out, profile))
        except OSError as e:  # its end of the pipe is gone
            raise HelperFailed(str(e)) from e
        self.busy = True

    def done(self) -> bool:
        return self.conn.poll() or not self.process.is_alive()

    def result(self) -> Path:
        """The submitted job's IR (waits for it)."""
        kind, value = self._receive(block=True)
        self.busy = False
        if kind == "error":
            raise value
        return value

    @classmethod
    def wait_quiet(cls) -> None:
        """Returns once the helper uses no CPU (its start finished), so that timing can begin."""
        helper = cls._instance
        try:
            while helper is not None and not helper.started:
                connection_wait([helper.conn, helper.process.sentinel])
                helper._receive(block=False)
        except HelperFailed as e:
            cls.disable(e)


def start_helper() -> None:
    """Start the helper process now: commands that will time random subnets call this first, so that its imports
    overlap theirs."""
    _Helper.get()


class PreparedIRs:
    """IRs of models for timing in one temporary folder, prepared by this process and the helper.

    `paths(models)` exports what the folder does not hold yet: a `RandomSubnet` asked for again (a table build's
    full model, timed in every group as the drift reference) is exported once; `forget(models)` frees disk space.
    """

    def __init__(self, profile: Profile):
        self.profile = profile
        self._tmp = tempfile.TemporaryDirectory(prefix="eftnas-measure-")
        self._held: dict[RandomSubnet, Path] = {}
        self._count = 0

    def __enter__(self) -> "PreparedIRs":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def paths(self, models: Sequence[Model]) -> list[Path]:
        """The .xml of each model (exported where not held), once no process is busy preparing."""
        new = list(dict.fromkeys(m for m in models if isinstance(m, RandomSubnet) and m not in self._held))
        modules = [m for m in models if not isinstance(m, RandomSubnet)]
        exported = self._export(new + modules)
        self._held.update(zip(new, exported))
        module_paths = iter(exported[len(new):])
        return [self._held[m] if isinstance(m, RandomSubnet) else next(module_paths) for m in models]

    def forget(self, models: Sequence[Model]) -> None:
        """Delete the IRs of `models` (those held)."""
        for m in models:
            if isinstance(m, RandomSubnet) and m in self._held:
                shutil.rmtree(self._held.pop(m).parent)

    def _folder(self) -> Path:
        self._count += 1
        return Path(self._tmp.name) / str(self._count)

    def _export(self, models: list[Model]) -> list[Path]:
        """Export `models`: this process from the front of the list, the helper (once started) random subnets from
        the back, one at a time."""
        folders = [self._folder() for _ in models]
        out: dict[int, Path] = {}
        todo = deque(range(len(models)))
        helper = _Helper.get() if sum(isinstance(m, RandomSubnet) for m in models) > 1 else None
        job: int | None = None  # the index the helper exports
        try:
            while todo or job is not None:
                try:
                    if job is None and helper is not None and len(todo) > 1 and helper.idle():
                        offload = [i for i in todo if isinstance(models[i], RandomSubnet)]
                        if offload:
                            job = offload[-1]
                            todo.remove(job)
                            helper.submit(models[job], folders[job], self.profile)
                    if todo:
                        i = todo.popleft()
                        out[i] = export_ir(models[i], folders[i], self.profile)
                    if job is not None and (not todo or helper.done()):
                        out[job], job = helper.result(), None
                except HelperFailed as e:  # this process exports the rest
                    _Helper.disable(e)
                    helper = None
                    if job is not None:
                        todo.append(job)
                        job = None
        finally:
            if helper is not None and helper.busy:  # an error here: the helper's job ends before anything else
                with contextlib.suppress(Exception):
                    helper.result()
        _Helper.wait_quiet()
        return [out[i] for i in range(len(models))]


@contextlib.contextmanager
def exported_irs(models: Sequence[Model], profile: Profile) -> Iterator[list[Path]]:
    """Models exported for timing (`export_ir`) into a temporary folder, removed afterwards."""
    with PreparedIRs(profile) as irs:
        yield irs.paths(models)


def measure_models_ms(models: Sequence[Model], profile: Profile, rounds: int = ROUNDS,
                      desc: str | None = None) -> list[dict]:
    """Export BERT classifiers to IR and measure them together in interleaved rounds (`measure_compiled`)."""
    with exported_irs(models, profile) as paths:
        return measure_compiled(paths, profile, rounds, desc=desc)
