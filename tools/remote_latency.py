"""Time a table build's models on a machine that has only the OpenVINO runtime, and fit the tables here.

    python tools/remote_latency.py pack PACK.tar.xz [--work DIR]            # here: export + quantize, pack
    python tools/remote_latency.py measure PACK.tar.xz OUT [--conditions 1t-s128-bf16,...] [--only tables,...]
                                       [--precisions bf16,int8] [--repetitions 3] [--bapp-rounds 3]
                                                                            # there: needs openvino, numpy, pyyaml,
                                                                            # tqdm and this repository
    python tools/remote_latency.py fit RESULTS.json [RESULTS.json ...] PACK.tar.xz|MANIFEST.json
                                                                            # here: tables, checks, granularity

How session 19 measured a Xeon with AMX (the README's "A Xeon with AMX"): the GPU machine lent to that session had
no optimum-intel or NNCF. `pack` exports (optimum-intel) and quantizes (NNCF) MiniLM-L6 IRs exactly as a table build
does (`export_ir`): the block models with the granularity probes (`profiler.block_models`), 32 calibration subnets,
24 check subnets (the full model and `check_table_accuracy.py`'s seed-7 subnets), an anchor's 8, one-layer FFN
blocks at widths 896-1152, whole models with all FFNs at one width, and `check_benchmark_app.py`'s five IRs. The
pack holds each IR's XML and its weights without the large constants (latency does not depend on their values):
`measure` refills them with random numbers and times the IRs with the project's `measure_compiled`, imported
without the package's `__init__` (no transformers, optimum or NNCF needed there). `fit` builds each table from
those measurements with the build's own code (`blocks_from_latencies`, `calibrate_groups`) and checks it on the 24
unseen subnets as built, anchored on the anchor's subnets measured first (as `run` does), and anchored on them
measured in the same rounds as the checked ones (`check_table_accuracy.py --same-sitting`). Given repeated timings
of the block models with the granularity probes (a "probes" section: `measure --only probes`; session 19's first
draft took results/xeon-amx-s19/granularity-probes.json) and whole
models with all FFNs at one width of the same precision, it also compares the table's predicted ratios between
those whole models, with and without the measured width penalty, to the measured ones (the penalty comes from
one-layer probes: does it hold on whole models?). Its benchmark_app step times the project's protocol first and then
benchmark_app bound to the CPUs the protocol chose (`measure.choose_cpus`), so both time the same cores.
`measure` times a table's groups as `eftnas-hw profile` does since session 28: each led by the full model, the block
models' too, and a group that caught the machine's slow state measured again (`slow_state.measure_slow_groups_again`);
results measured before have block models without it, and `fit` reads both. One difference from `eftnas-hw profile`:
the calibration and anchor subnets are spread by MACs (`spread_subnets`
with a MAC cost), since the blocks are not measured yet when they are chosen. The INT8 IRs are static at length 128.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import traceback
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FILL_TYPES = {"f32", "i8", "u8", "f16", "bf16"}
FILL_BYTES = 16384  # constants at least this large are weights: dropped from the pack, refilled there
WIDTHS = [896, 928, 960, 992, 1000, 1008, 1016, 1024, 1032, 1040, 1056, 1088, 1120, 1152]
UNIFORM = [1536, 1528, 1520, 1504, 1088, 1024, 1016, 1008, 992, 960]
BAPP = ["one-layer", "quarter", "half", "minilm-l6", "bert-medium"]
GROUP = 7  # calibration subnets timed together (+ the full model), as TableBuildSettings' group_size


def condition_profile(condition: str, profile_class):
    """"2t-s128-int8" -> the profile (threads, sequence length, precision) it names."""
    threads, rest = condition.split("t-", 1)
    seq_len, precision = rest[1:].split("-", 1)
    return profile_class(threads=int(threads), seq_len=int(seq_len), precision=precision)


def ir_kind(precision: str) -> str:
    """Which IR of a pair a precision times: the NNCF INT8 one, or the f32 one (run in f32 or bf16)."""
    return "int8" if precision == "int8" else "f32"


# ---- here: pack -------------------------------------------------------------------------------------------------
def model_sets() -> dict:
    """{set: [(subnet dict or None, model)]} of MiniLM-L6 models (random weights) in measurement order."""
    from eftnas_hw.latency.prepare import RandomSubnet
    from eftnas_hw.latency.profiler import BLOCK_VOCAB, block_models, ffn_grid, random_subnets, spread_subnets
    from eftnas_hw.subnet import BertShape, SubnetConfig

    shape = BertShape.named("minilm-l6")
    small = dataclasses.replace(shape, num_layers=1, vocab_size=BLOCK_VOCAB)
    macs = lambda s: s.macs(shape, 128, 1)  # noqa: E731
    subnets = {"calib": spread_subnets(shape, 32, 0, macs),
               "check": [shape.full_subnet()] + random_subnets(shape, 23, 7),
               "anchor": spread_subnets(shape, 8, 1000, macs),
               "uniform": [SubnetConfig((12,) * 6, (w,) * 6) for w in UNIFORM]}
    sets = {"blocks": [(None, m) for m in block_models(shape, ffn_grid(shape, 128), 0)],
            "widths": [(None, RandomSubnet(small, 0, SubnetConfig((0,), (w,)))) for w in WIDTHS]}
    sets.update({name: [(s.to_dict(), RandomSubnet(shape, 0, s)) for s in nets] for name, nets in subnets.items()})
    return sets


def skeleton(xml: Path) -> bytes:
    """The IR's .bin without its large weight constants: kept bytes, and where to refill (offset, size, type)."""
    blob = xml.with_suffix(".bin").read_bytes()
    keep, fills = [], []
    for layer in ET.parse(xml).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None:
            continue
        off, size, kind = int(data.get("offset")), int(data.get("size")), data.get("element_type")
        (fills if kind in FILL_TYPES and size >= FILL_BYTES else keep).append((off, size, kind))
    buf = io.BytesIO()
    np.savez(buf, bin_size=len(blob), keep_off=np.array([k[0] for k in keep], np.int64),
             keep_size=np.array([k[1] for k in keep], np.int64),
             keep=np.frombuffer(b"".join(blob[o:o + s] for o, s, _ in keep), np.uint8),
             fill_off=np.array([f[0] for f in fills], np.int64), fill_size=np.array([f[1] for f in fills], np.int64),
             fill_type=np.array([f[2] for f in fills]))
    return buf.getvalue()


def pack(out: Path, work: Path) -> None:
    from eftnas_hw.latency.prepare import export_ir
    from eftnas_hw.latency.profiler import ffn_grid
    from eftnas_hw.latency.profiles import Profile
    from eftnas_hw.subnet import BertShape

    sys.path.insert(0, str(REPO / "tools"))
    from check_benchmark_app import build_irs

    manifest = {"block_grid": ffn_grid(BertShape.named("minilm-l6"), 128), "widths": WIDTHS, "uniform": UNIFORM,
                "sets": {}}
    files = {}
    for name, items in model_sets().items():
        manifest["sets"][name] = [s for s, _ in items]
        for i, (_, model) in enumerate(items):
            folder = work / name / str(i)
            if not (folder / "int8.xml").exists():  # resumable: the f32 IR and its INT8 copy, as a build makes them
                export_ir(model, folder, Profile(precision="int8"))
            files[f"irs/{name}/{i}/f32.xml"] = folder / "openvino_model.xml"
            files[f"irs/{name}/{i}/int8.xml"] = folder / "int8.xml"
        print(name, len(items), "models", flush=True)
    for (name, kind), xml in build_irs(work / "bapp", 128).items():
        files[f"irs/bapp/{name}/{kind}.xml"] = xml
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for arcname, xml in [*files.items(), ("manifest.json", None)]:
            members = [(arcname, json.dumps(manifest).encode())] if xml is None else \
                [(arcname, xml.read_bytes()), (arcname[:-4] + ".skel.npz", skeleton(xml))]
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
    print(f"{out}: {len(files)} IRs, {out.stat().st_size / 1e6:.1f} MB")


# ---- there: measure ---------------------------------------------------------------------------------------------
def import_measurement():
    """eftnas_hw.latency.measure, .profiles and .slow_state without the package's __init__ (which imports
    transformers, optimum and NNCF): the target machine needs OpenVINO, numpy, pyyaml and tqdm only."""
    for name, path in (("eftnas_hw", "eftnas_hw"), ("eftnas_hw.latency", "eftnas_hw/latency")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(REPO / path)]
            sys.modules[name] = module
    if "eftnas_hw.export" not in sys.modules:  # measure.py needs only the IR file name from it
        export = types.ModuleType("eftnas_hw.export")
        export.IR_NAME = "openvino_model.xml"
        sys.modules["eftnas_hw.export"] = export
    from eftnas_hw.latency import measure, profiles, slow_state
    return measure, profiles, slow_state


def random_pool() -> dict:
    """Random bytes per element type to refill weights from (N(0, 0.02) floats, small integers)."""
    rng = np.random.default_rng(0)
    pool = {"f32": rng.normal(0, 0.02, 13_000_000).astype(np.float32).view(np.uint8),
            "f16": rng.normal(0, 0.02, 1_000_000).astype(np.float16).view(np.uint8),
            "i8": rng.integers(-64, 64, 16_000_000, dtype=np.int8).view(np.uint8)}
    return dict(pool, u8=pool["i8"], bf16=pool["f16"])


def refill(skeleton_path: Path, pool: dict) -> np.ndarray:
    """The IR's .bin from its skeleton: kept constants as they were, weights from `pool`."""
    sk = np.load(skeleton_path)
    blob, pos = np.zeros(int(sk["bin_size"]), np.uint8), 0
    for off, size in zip(sk["keep_off"], sk["keep_size"]):
        blob[off:off + size] = sk["keep"][pos:pos + size]
        pos += size
    for off, size, kind in zip(sk["fill_off"], sk["fill_size"], sk["fill_type"]):
        source = pool[str(kind)]
        blob[off:off + size] = np.resize(source, size) if size > source.size else source[:size]
    return blob


class Pack:
    """The unpacked IRs; `model(set, i, kind)` an ov.Model with its weights refilled at random."""

    def __init__(self, path: Path, core):
        self.root, self.core = Path("/tmp/eftnas-remote-pack"), core
        self.root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "r:xz") as tar:
            tar.extractall(self.root, filter="data")
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        self.pool = random_pool()

    def weights(self, xml: Path) -> np.ndarray:
        return refill(Path(str(xml)[:-4] + ".skel.npz"), self.pool)

    def xml(self, name: str, i, kind: str) -> Path:
        return self.root / "irs" / name / str(i) / f"{kind}.xml"

    def model(self, name: str, i: int, kind: str):
        """A fresh ov.Model (one object per measured candidate: measurement reshapes and compiles them in threads)."""
        import openvino as ov

        xml = self.xml(name, i, kind)
        return self.core.read_model(xml.read_text(), ov.Tensor(self.weights(xml)))

    def models(self, name: str, kind: str, indices=None) -> list:
        indices = range(len(self.manifest["sets"][name])) if indices is None else indices
        return [self.model(name, i, kind) for i in indices]

    def write(self, name: str, i, kind: str) -> Path:
        """An IR file pair (for benchmark_app)."""
        dest = self.root / "files" / name / str(i) / f"{kind}.xml"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(self.xml(name, i, kind).read_text())
        self.weights(self.xml(name, i, kind)).tofile(dest.with_suffix(".bin"))
        return dest


def measure(pack_path: Path, out: Path, conditions: list[str] | None, only: list[str] | None,
            precisions: list[str] | None = None, bapp_rounds: int = 3, repetitions: int = 3) -> None:
    import openvino as ov

    measure_mod, profiles, slow_state = import_measurement()
    Profile, started = profiles.Profile, time.time()
    pack_ = Pack(pack_path, measure_mod.core())
    precisions = [p for p in ("bf16", "int8", "f32") if p in profiles.supported_precisions()
                  and (not precisions or p in precisions)]
    results = {"errors": {}, "env": {
        "lscpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout, "nproc": os.cpu_count(),
        "openvino": ov.__version__, "device_name": measure_mod.core().get_property("CPU", "FULL_DEVICE_NAME"),
        "caps": list(measure_mod.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "default_precision": profiles.default_precision(), "supported": precisions}}
    out.mkdir(parents=True, exist_ok=True)

    def save():
        results["elapsed_s"] = time.time() - started
        (out / "results.json.tmp").write_text(json.dumps(results))
        (out / "results.json.tmp").rename(out / "results.json")

    def timed(profile, models, rounds, label):
        stats = measure_mod.measure_compiled(models, profile, rounds)
        print(f"[{time.time() - started:6.1f}s] {label} {profile.condition}", flush=True)
        return [{k: s[k] for k in ("ms", "round_medians", "disagreement", "unstable", "wall_over_cpu", "spread",
                                   "statistic")} for s in stats]

    def tables():
        for condition in conditions or [f"1t-s128-{p}" for p in precisions]:
            profile = condition_profile(condition, Profile)
            kind = ir_kind(profile.precision)
            t, r = time.time(), {"block_reference": True}
            n = len(pack_.manifest["sets"]["calib"])
            # As `build_table`: every group led by the full model (calib 0), the block models' too, and the groups
            # that caught the machine's slow state measured again (`slow_state.measure_slow_groups_again`).
            members = [None, *(range(i, min(i + GROUP, n)) for i in range(0, n, GROUP))]  # 0: the block models

            def group(j: int) -> list[dict]:
                models = pack_.models("blocks", kind) if j == 0 else pack_.models("calib", kind, members[j])
                label = "blocks" if j == 0 else f"calibration subnets {members[j][0]}-{members[j][-1]}"
                return timed(profile, [pack_.model("calib", 0, kind)] + models, 32 if j == 0 else 16, label)

            def again(j: int) -> list[dict]:
                return slow_state.faster(groups[j], group(j))

            groups = [group(j) for j in range(len(members))]
            r["remeasured_groups"] = slow_state.measure_slow_groups_again(groups, again,
                                                                          slow_state.state_factor(groups[1]))
            r["blocks"], r["calib_groups"] = groups[0], groups[1:]
            r["anchor_first"] = timed(profile, pack_.models("anchor", kind), 20, "anchor")
            r["check_same_sitting"] = timed(profile, pack_.models("check", kind) + pack_.models("anchor", kind), 20,
                                            "check + anchor")
            r["seconds"] = time.time() - t
            results.setdefault("tables", {})[condition] = r
            save()

    def granularity():
        for p in precisions:
            profile, kind = Profile(threads=1, seq_len=128, precision=p), ir_kind(p)
            results.setdefault("granularity", {})[p] = {
                "widths": timed(profile, pack_.models("widths", kind), 32, "widths"),
                "uniform": timed(profile, pack_.models("uniform", kind), 20, "uniform widths")}
            save()

    def probes():  # the block models with the granularity probes, timed `repetitions` times (what `fit` checks)
        for p in precisions:
            profile, kind = Profile(threads=1, seq_len=128, precision=p), ir_kind(p)
            results.setdefault("probes", {})[p] = [timed(profile, pack_.models("blocks", kind), 32,
                                                         f"blocks + probes {i + 1}/{repetitions}")
                                                   for i in range(repetitions)]
            save()

    def benchmark_app():
        sys.path.insert(0, str(REPO / "tools"))
        from check_benchmark_app import benchmark_app_interleaved

        cases = [(n, p) for p in precisions for n in BAPP]
        files = {(n, p): pack_.write("bapp", n, ir_kind(p)) for n, p in cases}
        profile = {p: Profile(threads=1, seq_len=128, precision=p) for p in precisions}
        ours, cpus = {}, []
        for p in precisions:  # ours first: benchmark_app then runs on the CPUs ours chose
            stats = measure_mod.measure_compiled([files[(n, p)] for n in BAPP], profile[p])
            ours.update({f"{n}/{p}": s["ms"] for n, s in zip(BAPP, stats)})
            cpus = stats[0]["cpus"]
        ref = benchmark_app_interleaved([(files[c], profile[c[1]]) for c in cases], bapp_rounds, cpus)
        results["benchmark_app"] = {"bapp": {f"{n}/{p}": v for (n, p), v in zip(cases, ref)}, "ours": ours,
                                    "cpus": cpus}

    for name, fn in (("tables", tables), ("granularity", granularity), ("probes", probes),
                     ("benchmark_app", benchmark_app)):
        if only and name not in only:
            continue
        try:
            fn()
        except Exception:  # noqa: BLE001 - a probe on a borrowed machine keeps what it measured
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], flush=True)
        save()


# ---- here: fit --------------------------------------------------------------------------------------------------
def fit(results_paths: list[Path], pack_path: Path, write: Path | None = None) -> None:
    """Print the tables, checks and granularity of the measurements; with `write`, also save each condition's table
    (as built, the measurements inside) there as minilm-l6_<condition>.json, the shipped tables' naming."""
    from eftnas_hw.files import write_json_atomic
    from eftnas_hw.latency.anchor import fit_anchor
    from eftnas_hw.latency.fingerprint import fingerprint
    from eftnas_hw.latency.profiler import (SELECTION, blocks_from_latencies, calibrate_groups, errors,
                                            table_header, uncalibrated, without_reference)
    from eftnas_hw.latency.profiles import Profile
    from eftnas_hw.latency.slow_state import state_factor
    from eftnas_hw.latency.table import LatencyTable
    from eftnas_hw.settings import AnchorSettings, TableBuildSettings
    from eftnas_hw.subnet import BertShape, SubnetConfig

    results = [json.loads(path.read_text()) for path in results_paths]
    res = dict(results[0])  # the first file's machine; the sections of all of them
    for section in ("tables", "granularity", "probes"):
        res[section] = {k: v for r in results for k, v in r.get(section, {}).items()}
    res["benchmark_app"] = next((r["benchmark_app"] for r in reversed(results) if "benchmark_app" in r), None)
    if pack_path.suffix == ".json":  # the manifest alone (results/xeon-amx-s19/)
        man = json.loads(pack_path.read_text())
    else:
        with tarfile.open(pack_path, "r:xz") as tar:
            names = tar.getnames()
            man = json.load(tar.extractfile("manifest.json" if "manifest.json" in names else "irs/manifest.json"))
    shape, env = BertShape.named("minilm-l6"), res["env"]
    flags = next((line.split(":", 1)[1].split() for line in env["lscpu"].splitlines() if line.startswith("Flags")), [])
    print(f"{env['device_name']} ({env['nproc']} vCPUs), OpenVINO {env['openvino']}, default "
          f"{env['default_precision']}, AMX: {'amx_bf16' in flags}; errors: {list(res['errors'])}")
    for p, g in res.get("granularity", {}).items():
        w, ms = np.array(man["widths"]), np.array([s["ms"] for s in g["widths"]])
        aligned = w % 64 == 0
        off = ms / np.polyval(np.polyfit(w[aligned], ms[aligned], 1), w) - 1
        print(f"[granularity {p}] one-layer FFN blocks against the line through multiples of 64: "
              + " ".join(f"{a}:{d:+.1%}" for a, d in zip(w, off)))
        uniform = dict(zip(man["uniform"], (s["ms"] for s in g["uniform"])))
        print("  whole model, all FFNs at one width: " + ", ".join(
            f"{b} vs {a} {uniform[b] / uniform[a] - 1:+.1%}" for a, b in ((1024, 1016), (1024, 1008), (1024, 992),
                                                                          (1024, 960), (1536, 1528), (1536, 1504))))
    for p, repetitions in res.get("probes", {}).items():  # block models + probes, as a build times them
        found = [blocks_from_latencies(shape, man["block_grid"], [s["ms"] for s in r])["granularity"]
                 for r in repetitions]
        print(f"[granularity probes {p}] " + "; ".join(
            f"alignment {g['alignment']}, penalty {g['penalty']:.1%} ("
            + ", ".join(f"{q['width']} {q['excess']:+.1%}" for q in g["probes"]) + ")" for g in found))
    def block_group(t: dict) -> list[dict]:
        """The block models' measurements of a condition (since session 28 `measure` leads them with the full
        model)."""
        return without_reference(t["blocks"], t.get("block_reference", False))

    def fitted(condition: str, blocks: dict, t: dict) -> LatencyTable:
        """The table of `blocks` calibrated on the condition's calibration groups, as `build_table` does."""
        profile = condition_profile(condition, Profile)
        profile = dataclasses.replace(profile, name=profile.condition)
        machine = fingerprint(env["device_name"], flags, env["nproc"], env["openvino"], profile)
        header = table_header(shape, profile, machine, TableBuildSettings(),
                              SELECTION + ", by MACs (tools/remote_latency.py)",
                              block_reference=t.get("block_reference", False))
        data = dict(header, blocks=blocks, complete=True,
                    build_minutes=t["seconds"] / 60,  # the timing there; the IRs were prepared by `pack`
                    measurements={"blocks": t["blocks"], **{f"subnets/{GROUP * i}": g
                                                            for i, g in enumerate(t["calib_groups"])}})
        block_stats = [dict(s, lowest_round_median=s["ms"], median=s["ms"], min=s["ms"], p90=s["ms"])
                       for s in block_group(t)]
        data.update(calibrate_groups(uncalibrated(data), [SubnetConfig.from_dict(d) for d in man["sets"]["calib"]],
                                     t["calib_groups"], block_stats))
        if t.get("block_reference"):
            data["validation"]["stability"].update(remeasured_groups=t["remeasured_groups"],
                                                   state_factor=state_factor(t["calib_groups"][0]))
        return LatencyTable(data)

    for condition, t in res.get("tables", {}).items():
        blocks = blocks_from_latencies(shape, man["block_grid"], [s["ms"] for s in block_group(t)])
        table = fitted(condition, blocks, t)
        data = table.data
        if write:
            write_json_atomic(write / f"minilm-l6_{table.profile.condition}.json", data)
        v = data["validation"]
        g = blocks.get("granularity")
        found = f"alignment {g['alignment']}, penalty {g['penalty']:.1%}" if g else "not probed"
        print(f"[{condition}] {t['seconds']:.0f} s there; leave-one-out {v['mape_pct']:.2f}% / within 5% "
              f"{v['within_5pct']:.0%} / Spearman {v['spearman']:.3f} ({data['calibration']['model']}; MACs "
              f"{v['calibrated_macs']['mape_pct']:.2f}%); granularity {found}; unstable "
              f"{v['stability']['unstable_measurements']}/{v['stability']['of']}")
        check = [SubnetConfig.from_dict(d) for d in man["sets"]["check"]]
        anchor = [SubnetConfig.from_dict(d) for d in man["sets"]["anchor"]]
        same = np.array([s["ms"] for s in t["check_same_sitting"]])
        measured, settings = same[:len(check)], AnchorSettings(bound_pct=1e9)
        for name, tb in (("as built", table),
                         ("anchored first", fit_anchor(table, anchor, [s["ms"] for s in t["anchor_first"]], settings)),
                         ("anchored same sitting", fit_anchor(table, anchor, same[len(check):], settings))):
            e = errors(np.array([tb.predict_ms(s) for s in check]), measured)
            scale = tb.data.get("anchor", {}).get("scale", 1.0)
            print(f"  {name:22} MAPE {e['mape_pct']:.2f}% worst {e['worst_pct']:.1f}% within 5% "
                  f"{e['within_5pct']:.0%} Spearman {e['spearman']:.3f} (scale {scale:.3f})")
    uniform = lambda tb, w: tb.predict_ms(SubnetConfig((shape.num_heads,) * shape.num_layers,  # noqa: E731
                                                       (w,) * shape.num_layers))
    pairs = ((1024, 1016), (1024, 1008), (1024, 992), (1024, 960), (1536, 1528), (1536, 1520), (1536, 1504))
    for p, repetitions in res.get("probes", {}).items():  # the probes' penalty on whole models
        t, g = res["tables"].get(f"1t-s128-{p}"), res["granularity"].get(p)
        if not (t and g):
            continue
        measured = dict(zip(man["uniform"], (s["ms"] for s in g["uniform"])))
        print(f"[whole models {p}] all six FFNs at width b against a: measured / table with the probes' penalty / "
              "without it (calibrated on the 1t-s128 table's subnets)")
        for r in repetitions:
            blocks = blocks_from_latencies(shape, man["block_grid"], [s["ms"] for s in r])
            plain = {k: v for k, v in blocks.items() if k != "granularity"}
            tables = fitted(f"1t-s128-{p}", blocks, t), fitted(f"1t-s128-{p}", plain, t)
            rows = [(a, b, measured[b] / measured[a] - 1, *(uniform(tb, b) / uniform(tb, a) - 1 for tb in tables))
                    for a, b in pairs]
            off = [np.mean([abs(row[i] - row[2]) for row in rows]) for i in (3, 4)]
            print(f"  alignment {blocks['granularity']['alignment']}: " + ", ".join(
                f"{b}/{a} {m:+.1%} / {w:+.1%} / {o:+.1%}" for a, b, m, w, o in rows)
                + f"; mean |error| {off[0]:.1%} with, {off[1]:.1%} without")
    b = res.get("benchmark_app")
    if b:
        value = lambda x: x["ms"] if isinstance(x, dict) else min(x) if isinstance(x, list) else x  # noqa: E731
        d = np.array([value(b["ours"][k]) / value(v) - 1 for k, v in b["bapp"].items()])
        print("[benchmark_app] " + (f"CPUs {b['cpus']}: " if b.get("cpus") else "")
              + ", ".join(f"{k} {x:+.1%}" for k, x in zip(b["bapp"], d))
              + f"; median |diff| {np.median(np.abs(d)):.1%}, within 3%: {np.mean(np.abs(d) <= 0.03):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/eftnas-remote-irs"))
    m = sub.add_parser("measure")
    m.add_argument("pack", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--conditions", help="e.g. 1t-s128-bf16,2t-s128-int8,1t-s32-f32 (INT8 at length 128 only)")
    m.add_argument("--only", help="tables,granularity,probes,benchmark_app")
    m.add_argument("--repetitions", type=int, default=3, help="times the probes step times the block models")
    m.add_argument("--precisions", help="of granularity, probes and benchmark_app, e.g. bf16,int8 (default: all "
                                        "supported)")
    m.add_argument("--bapp-rounds", type=int, default=3, help="interleaved benchmark_app rounds")
    f = sub.add_parser("fit")
    f.add_argument("results", type=Path, nargs="+")
    f.add_argument("pack", type=Path)
    f.add_argument("--write", type=Path, help="save each condition's table (as built) in this folder")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out, args.work)
    elif args.command == "measure":
        measure(args.pack, args.out, args.conditions and args.conditions.split(","), args.only and args.only.split(","),
                args.precisions and args.precisions.split(","), args.bapp_rounds, args.repetitions)
    else:
        fit(args.results, args.pack, args.write)


if __name__ == "__main__":
    main()
