"""What people read: the search's tables and plot, the export summary, the run summary. Every file goes through
the atomic writers of `files.py`; the stages hand over typed records and never format output themselves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy.stats import spearmanr

from .evolution import COST_UNITS
from .files import atomic_file, write_csv_atomic, write_json_atomic
from .subnet import EvaluatedSubnet

if TYPE_CHECKING:
    from .deploy import ExportedModel
    from .search import SearchRun

# The files of a search folder and of an export folder that later stages read back.
SEARCH_SETTINGS = "search.json"
SEARCH_FRONT = "front.json"
EXPORT_SUMMARY = "summary.json"


def _subnet_row(r: EvaluatedSubnet, **extra) -> dict:
    return {"metric": r.metric, "metric_se": r.metric_se, "latency_ms": r.latency_ms, "gmacs": r.gmacs,
            "heads": " ".join(map(str, r.config.heads)), "ffn": " ".join(map(str, r.config.ffn)), **extra}


def write_search_reports(run: "SearchRun") -> None:
    """evaluations.{csv,json}, front.{csv,json}, pareto.png and the summary in search.json."""
    result, out = run.result, run.out_dir
    on_front = {r.config for r in result.front}
    write_csv_atomic(out / "evaluations.csv", [_subnet_row(r, is_base=r.config == result.base.config,
                                                             on_front=r.config in on_front)
                                               for r in result.evaluations])
    write_csv_atomic(out / "front.csv", [_subnet_row(r) for r in result.front])
    write_json_atomic(out / "evaluations.json", [r.to_dict() for r in result.evaluations])
    write_json_atomic(out / SEARCH_FRONT, [r.to_dict() for r in result.front])
    summary = {"evaluated": len(result.evaluations), "fresh": run.fresh, "revisits": result.revisits,
               "replayed_from_cache": run.replayed, "front_size": len(result.front),
               "hypervolume": result.hypervolume, "evals_per_minute": run.evals_per_minute,
               "wall_seconds": run.wall_seconds, "base": result.base.to_dict()}
    write_json_atomic(out / SEARCH_SETTINGS, {**run.settings, "summary": summary})
    plot_front(result.evaluations, result.front, result.base, result.cost_name, out / "pareto.png")


def plot_front(evaluations: Sequence[EvaluatedSubnet], front: Sequence[EvaluatedSubnet], base: EvaluatedSubnet,
               cost_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([r.cost(cost_name) for r in evaluations], [r.metric for r in evaluations], s=8, c="0.7",
               label="evaluated subnets")
    ax.plot([r.cost(cost_name) for r in front], [r.metric for r in front], "o-", c="tab:blue", ms=4,
            drawstyle="steps-post", label="Pareto front")
    ax.scatter([base.cost(cost_name)], [base.metric], marker="*", s=160, c="tab:red", zorder=3,
               label="base model (largest subnet)")
    ax.set_xlabel("predicted latency (ms)" if cost_name == "latency_ms" else COST_UNITS[cost_name])
    ax.set_ylabel("metric on the search split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def prediction_error_pct(model: "ExportedModel") -> float | None:
    predicted = model.subnet.latency_ms
    return 100 * (predicted - model.measured_ms) / model.measured_ms if predicted else None


def write_export_summary(models: Sequence["ExportedModel"], out_dir: Path) -> None:
    """summary.json (full records) and summary.csv (one line per model) with the prediction error."""
    rows = [{"name": m.name, "precision": m.precision, "predicted_ms": m.subnet.latency_ms,
             "reanchored_ms": m.reanchored_ms, "measured_ms": m.measured_ms,
             "prediction_error_pct": prediction_error_pct(m),
             "ir_dev_metric": m.ir_dev_metric, "torch_dev_metric": m.torch_dev_metric,
             "search_metric": m.subnet.metric, "search_metric_se": m.subnet.metric_se,
             "heads": " ".join(map(str, m.subnet.config.heads)),
             "ffn": " ".join(map(str, m.subnet.config.ffn))} for m in models]
    write_json_atomic(out_dir / EXPORT_SUMMARY, [m.to_dict() for m in models])
    write_csv_atomic(out_dir / "summary.csv", rows)


def run_summary(run_dir: Path, groups: dict[str, list["ExportedModel"]], table_source: str,
                stage_seconds: dict, latency: dict, budget_ms: float | None = None) -> dict:
    """Measured latency and IR dev metric of the base model and of every exported subnet, with speed-ups, the
    latency table that predicted them and how well (`latency`: the profile's precision, the table's anchor), and
    whether the subnet a budget chose (`budget_ms`: the last front model, see `pipeline._export_stage`) measured
    within it."""
    base = groups["base"][0]
    rows = [{"group": group, "name": m.name, "heads": list(m.subnet.config.heads), "ffn": list(m.subnet.config.ffn),
             "predicted_ms": m.subnet.latency_ms, "measured_ms": m.measured_ms,
             "reanchored_ms": m.reanchored_ms, "speedup": base.measured_ms / m.measured_ms,
             "ir_dev_metric": m.ir_dev_metric,
             "search_metric": m.subnet.metric, "search_metric_se": m.subnet.metric_se,
             "delta_metric": m.ir_dev_metric - base.ir_dev_metric, "path": str(run_dir / "models" / group / m.name)}
            for group, models in groups.items() for m in models]
    predicted = _prediction_errors(rows, "predicted_ms")
    # The same with the table re-anchored on its anchor subnets timed in the export's own rounds (deploy.py).
    reanchored = _prediction_errors(rows, "reanchored_ms")
    # The same errors with each model's latency taken relative to the base model measured in the same stage: what
    # remains when the machine's speed has moved since the table was anchored (this VM drifts by ~10% in minutes).
    relative = [abs(r["predicted_ms"] / base.subnet.latency_ms / (r["measured_ms"] / base.measured_ms) - 1)
                for r in rows if r["predicted_ms"] is not None and r["group"] == "front"] \
        if base.subnet.latency_ms else []
    # How well the search's objective (the PyTorch super-network on the search split) predicts the IR's dev metric
    # in the deployed precision (bf16, INT8): per group of exported subnets.
    objective = {}
    for group, models in groups.items():
        pairs = [(m.subnet.metric, m.ir_dev_metric) for m in models if m.subnet.metric is not None]
        if len(pairs) >= 3:
            search, ir = np.array(pairs).T
            objective[group] = {"spearman": float(spearmanr(search, ir).statistic),
                                "mean_ir_minus_search": float(np.mean(ir - search)), "n": len(pairs)}
    chosen = next((r for r in reversed(rows) if r["group"] == "front"), None) if budget_ms is not None else None
    budget = {"ms": budget_ms, "model": f"front/{chosen['name']}", "predicted_ms": chosen["predicted_ms"],
              "reanchored_ms": chosen["reanchored_ms"], "measured_ms": chosen["measured_ms"],
              "held": chosen["measured_ms"] <= budget_ms} if chosen else None
    return {"run": str(run_dir), "table": table_source, **latency, "budget": budget,
            "prediction": {**predicted,
                           "base_error_pct": 100 * (base.subnet.latency_ms / base.measured_ms - 1)
                           if base.subnet.latency_ms else None,
                           "relative_mape_pct": 100 * sum(relative) / len(relative) if relative else None,
                           "reanchored": {**reanchored, "anchor": base.export_anchor} if reanchored else None}
            if predicted else None,
            "search_objective_vs_ir": objective,
            "base": {"measured_ms": base.measured_ms, "ir_dev_metric": base.ir_dev_metric},
            "models": rows, "pareto_plot": str(run_dir / "search" / "pareto.png"), "stage_seconds": stage_seconds}


def _prediction_errors(rows: list[dict], key: str) -> dict | None:
    """MAPE, worst error (percent) and share within 5% of the rows' `key` predictions against their measured ms."""
    e = np.array([abs(r[key] / r["measured_ms"] - 1) for r in rows if r[key] is not None])
    return {"mape_pct": 100 * float(e.mean()), "worst_pct": 100 * float(e.max()),
            "within_5pct": float(np.mean(e <= 0.05))} if e.size else None


def format_run_summary(summary: dict) -> str:
    lines = [f"{'model':<22} {'heads':<20} {'FFN':<34} {'pred ms':>8} {'re-anch':>8} {'meas ms':>8} {'speed-up':>8} "
             f"{'dev':>7} {'delta':>7} {'search +- SE':>15}"]
    for r in summary["models"]:
        predicted = r["predicted_ms"] if r["predicted_ms"] is not None else math.nan
        reanchored = r["reanchored_ms"] if r.get("reanchored_ms") is not None else math.nan
        search = (f"{r['search_metric']:.4f}+-{r['search_metric_se']:.4f}" if r.get("search_metric_se") is not None
                  else "")
        lines.append(f"{r['group'] + '/' + r['name']:<22} {','.join(map(str, r['heads'])):<20} "
                     f"{','.join(map(str, r['ffn'])):<34} {predicted:>8.2f} {reanchored:>8.2f} "
                     f"{r['measured_ms']:>8.2f} {r['speedup']:>7.2f}x {r['ir_dev_metric']:>7.4f} "
                     f"{r['delta_metric']:>+7.4f} {search:>15}")
    lines.append(f"latency: {summary['precision']}, {summary['anchor']}")
    if summary["prediction"]:
        p = summary["prediction"]
        lines.append(f"predicted vs measured (IR, this machine): MAPE {p['mape_pct']:.1f}%, "
                     f"worst {p['worst_pct']:.1f}%, {100 * p['within_5pct']:.0f}% within 5%")
        if p.get("relative_mape_pct") is not None:
            lines.append(f"  the base model {p['base_error_pct']:+.1f}% against its prediction; front latencies "
                         f"relative to it: MAPE {p['relative_mape_pct']:.1f}% (the rest is the machine's speed "
                         "since the table was anchored)")
        if p.get("reanchored"):
            r = p["reanchored"]
            lines.append(f"predicted by the table re-anchored in the export's timing rounds: MAPE "
                         f"{r['mape_pct']:.1f}%, worst {r['worst_pct']:.1f}%, {100 * r['within_5pct']:.0f}% within 5% "
                         f"({r['anchor']})")
    b = summary.get("budget")
    if b:
        reanchored = f", {b['reanchored_ms']:.2f} re-anchored in the export's rounds" if b["reanchored_ms"] else ""
        verdict = ("within the budget" if b["held"] else
                   f"OVER the budget by {100 * (b['measured_ms'] / b['ms'] - 1):.1f}%")
        lines.append(f"budget {b['ms']:g} ms: {b['model']} predicted {b['predicted_ms']:.2f} ms{reanchored}, "
                     f"measured {b['measured_ms']:.2f} ms: {verdict}")
    for group, o in summary["search_objective_vs_ir"].items():
        lines.append(f"search objective vs IR dev metric ({group}, {o['n']} models): Spearman {o['spearman']:.2f}, "
                     f"IR minus search {o['mean_ir_minus_search']:+.4f} on average")
    lines.append(f"IR folders under {summary['run']}/models; Pareto plot {summary['pareto_plot']}")
    return "\n".join(lines)
