"""Measured OpenVINO latency: deployment profiles, the measurement protocol, lookup tables and their builder."""
from .fingerprint import hardware_fingerprint
from .measure import compile_ir, measure_ir_ms, measure_models_ms, statistic_for
from .profiler import build_table, random_subnets, summary_lines
from .profiles import Profile
from .table import LatencyTable, find_shipped_table

__all__ = ["LatencyTable", "Profile", "build_table", "compile_ir", "find_shipped_table", "hardware_fingerprint",
           "measure_ir_ms", "measure_models_ms", "random_subnets", "statistic_for", "summary_lines"]
