"""Measured OpenVINO latency: deployment profiles, the measurement protocol, lookup tables and their builder."""
from .fingerprint import hardware_fingerprint
from .measure import measure_ir_ms, measure_models_ms, statistic_for
from .profiler import NAMED_SHAPES, build_table, named_shape, random_subnets, summary_lines
from .profiles import Profile
from .table import LatencyTable

__all__ = ["NAMED_SHAPES", "LatencyTable", "Profile", "build_table", "hardware_fingerprint",
           "measure_ir_ms", "measure_models_ms", "named_shape", "random_subnets", "statistic_for",
           "summary_lines"]
