"""Re-anchoring: fit a table's predictions to the machine it is used on, from a few end-to-end measurements.

Why: machines of the same kind run at different speeds (the same Xeon model measured 25-30% apart between
sessions; a shipped table was off by a third), and a machine's speed drifts within an hour. The block costs'
*proportions* carry over far better than their milliseconds, so a table is re-fitted, not rebuilt: the full model
and a few random subnets (with removed blocks, like search spaces have) are exported and timed here, and a line
`measured = scale * predicted + offset_ms` is fitted on them (relative errors weighted alike). The anchor is stored
in a copy of the table (a run folder's `latency_table.json`, or `eftnas-hw anchor --out`), never in the shipped
file, with the machine's fingerprint, so the copy is valid here and only here. When the residual of that fit
stays above `AnchorSettings.bound_pct` the table's proportions do not hold on this machine: it is refused (`run` builds one).
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import UserError
from ..models import build_subnet, random_bert
from ..settings import AnchorSettings
from .fingerprint import hardware_fingerprint
from .measure import measure_models_ms
from .profiler import errors, random_subnets
from .table import LatencyTable


class TableDoesNotFit(UserError):
    """The table's proportions do not hold on this machine, even re-anchored."""


def anchor_table(table: LatencyTable, settings: AnchorSettings = AnchorSettings(),
                 progress: bool = True) -> LatencyTable:
    """A copy of `table` anchored to this machine (see the module docstring); TableDoesNotFit when it stays off."""
    n, rounds, seed = settings.subnets, settings.rounds, settings.seed
    started = time.time()
    shape, profile = table.shape, table.profile
    subnets = [shape.full_subnet()] + random_subnets(shape, n - 1, seed)
    model = random_bert(shape, seed)
    stats = measure_models_ms([build_subnet(model, s) for s in subnets], profile, rounds,
                              desc="re-anchoring" if progress else None)
    measured = np.array([s["ms"] for s in stats])
    before = np.array([table.calibrated_ms(s) for s in subnets])
    weights = 1 / measured  # relative errors weighted alike
    scale, offset = np.linalg.lstsq(np.stack([before, np.ones_like(before)], axis=1) * weights[:, None],
                                    np.ones_like(measured), rcond=None)[0]
    after = scale * before + offset
    anchor = {
        "fingerprint": hardware_fingerprint(profile), "scale": float(scale), "offset_ms": float(offset),
        "source_digest": table.digest, "n": n, "rounds": rounds, "seed": seed,
        "full_model_shift_pct": float(100 * (measured[0] / before[0] - 1)),
        "before": errors(before, measured), "residual": errors(after, measured),
        "subnets": [{"subnet": s.to_dict(), "measured_ms": float(m), "table_ms": float(b)}
                    for s, m, b in zip(subnets, measured, before)],
        "unstable_measurements": sum(s["unstable"] for s in stats),
        "seconds": round(time.time() - started, 1),
    }
    anchored = LatencyTable({**table.data, "anchor": anchor})
    residual = anchor["residual"]["mape_pct"]
    if residual > settings.bound_pct:
        raise TableDoesNotFit(f"latency table does not fit this machine even re-anchored: residual MAPE "
                              f"{residual:.1f}% on {n} subnets (bound {settings.bound_pct}%); build one here with "
                              "`eftnas-hw profile`")
    return anchored


def anchor_line(table: LatencyTable) -> str:
    """e.g. "table re-anchored on this machine: full model -27.1%, scale 0.734 offset +0.12 ms, residual MAPE
    1.9% on 8 subnets (before: 26.3%), 41 s"."""
    a = table.data.get("anchor")
    if not a:
        return "table not re-anchored (built on this machine)"
    return (f"table re-anchored on this machine: full model {a['full_model_shift_pct']:+.1f}% against the table, "
            f"scale {a['scale']:.3f} offset {a['offset_ms']:+.3f} ms, residual MAPE {a['residual']['mape_pct']:.1f}% "
            f"(worst {a['residual']['worst_pct']:.1f}%) on {a['n']} subnets (before: MAPE "
            f"{a['before']['mape_pct']:.1f}%), {a['seconds']:.0f} s")
