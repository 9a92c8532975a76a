"""Measured OpenVINO latency: deployment profiles, the measurement protocol, lookup tables, their builder and
their re-anchoring to the machine they are used on."""
from .anchor import TableDoesNotFit, anchor_line, anchor_table
from .fingerprint import hardware_fingerprint
from .measure import compile_ir, measure_ir_ms
from .prepare import RandomSubnet, measure_models_ms, start_helper
from .profiler import build_table, random_subnets, summary_lines
from .profiles import Profile, default_precision, supported_precisions
from .table import LatencyTable, find_shipped_table

__all__ = ["LatencyTable", "Profile", "RandomSubnet", "TableDoesNotFit", "anchor_line", "anchor_table",
           "build_table", "compile_ir", "default_precision", "find_shipped_table", "hardware_fingerprint",
           "measure_ir_ms", "measure_models_ms", "random_subnets", "start_helper", "summary_lines",
           "supported_precisions"]
