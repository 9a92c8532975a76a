"""What a latency table is only valid for: this CPU, its kernel-selecting ISA features, cores, OpenVINO, profile.

The ISA flags matter because OpenVINO picks different kernels (and default precisions) for AVX2, AVX-512,
VNNI and AMX; a table measured with one set predicts nothing about another.
"""
from __future__ import annotations

import functools
import os
import platform

import openvino as ov

from ..errors import warn
from .profiles import Profile

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# The CPU plugin's kernel levels, best first, each named by the flag that enables it (oneDNN's dispatch: AVX-VNNI
# only matters without AVX-512). Two machines with the same level run the same kernels: a table built on one is
# re-anchored on the other, while the full flag lists may differ (two EPYCs seen here, one listing avx_vnni).
ISA_LEVELS = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def isa_level(flags: list[str]) -> str:
    """The best kernel level `flags` enable (see ISA_LEVELS), e.g. "avx512_bf16"."""
    return next((level for level in ISA_LEVELS if level in flags), "none")


# The instructions OpenVINO's INT8 kernels need to beat f32: without them INT8 MiniLM-L6 ran 11-24% *slower* than
# f32 on an AVX2-only EPYC (43.6-47.6 against 38.5-39.4 ms, session 13).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def warn_if_int8_is_slow() -> None:
    """Warn (once per process) where this CPU has none of INT8_FLAGS: an INT8 deployment or table there is a
    user's choice the measurements will not reward."""
    _, flags = _cpuinfo()
    if not flags & set(INT8_FLAGS):
        warn(f"INT8 on a CPU without VNNI or AMX (kernel level {isa_level(sorted(flags))}): OpenVINO's INT8 kernels "
             "are not faster than f32 here (an AVX2-only EPYC ran INT8 MiniLM-L6 11-24% slower than f32)")


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and flags from /proc/cpuinfo (Linux), else py-cpuinfo."""
    try:
        text = open("/proc/cpuinfo").read()
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return fields.get("model name", platform.processor()), set(fields.get("flags", "").split())
    except OSError:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        return info.get("brand_raw", platform.processor()), set(info.get("flags", []))


def _physical_cores() -> int:
    """Distinct (physical id, core id) pairs on Linux; logical CPUs elsewhere."""
    try:
        cores, phys = set(), "0"
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                phys = value.strip()
            elif key.strip() == "core id":
                cores.add((phys, value.strip()))
        return len(cores) or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


def fingerprint(cpu: str, flags, physical_cores: int, openvino: str, profile: Profile) -> dict:
    """A table's machine record from its parts (also for a machine measured elsewhere: tools/remote_latency.py)."""
    return {"cpu": cpu, "isa": sorted(f for f in ISA_FLAGS if f in flags), "physical_cores": physical_cores,
            "openvino": openvino.split("-")[0], "profile": profile.to_dict()}


def hardware_fingerprint(profile: Profile) -> dict:
    model, flags = _cpuinfo()
    return fingerprint(model, flags, _physical_cores(), ov.__version__, profile)


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """Human-readable differences, e.g. "openvino: table 2026.4.1, here 2026.5.0"; empty when they match."""
    diffs = []
    for key in sorted(set(stored) | set(current)):
        if key == "profile":
            continue  # the profile is the table's own; a caller asking for another profile is checked elsewhere
        if key == "physical_cores":
            # A table's milliseconds come from `threads` cores (re-anchoring absorbs the speed of another machine of
            # the kind): a machine with more cores is no other kind. Session 23's 2-vCPU Xeon refused the 16-vCPU
            # Xeon's 1-thread tables for this alone, and built its own.
            threads = (stored.get("profile") or {}).get("threads", 1)
            if stored.get(key) != current.get(key) and min(stored.get(key) or 0, current.get(key) or 0) < threads:
                diffs.append(f"{key}: table {stored.get(key)!r}, this machine {current.get(key)!r} (the profile "
                             f"runs {threads} threads)")
        elif key == "isa":
            if isa_level(stored.get(key) or []) != isa_level(current.get(key) or []):
                diffs.append(f"kernel level: table {isa_level(stored.get(key) or [])}, this machine "
                             f"{isa_level(current.get(key) or [])}")
        elif stored.get(key) != current.get(key):
            diffs.append(f"{key}: table {stored.get(key)!r}, this machine {current.get(key)!r}")
    return diffs
