"""Print the shipped latency tables with their own validation, as the README's table of shipped tables.

    python tools/shipped_tables.py

One row per file under latency_tables/<cpu>/: the machine it was built on, the condition (shape, threads,
length, precision), the full model's predicted latency there, the build time, and the leave-one-out validation on
the table's own calibration subnets (MAPE, worst error, share within ±5%, Spearman; MACs alone for comparison).
Nothing is measured: this reads what `eftnas-hw profile` stored. How a table does on another machine of the same
kind, re-anchored, is `tools/check_table_accuracy.py TABLE --anchor`.
"""
from __future__ import annotations

from eftnas_hw.latency.table import LatencyTable
from eftnas_hw.resources import tables_dir


def row(table: LatencyTable) -> str:
    """One markdown row of a table's identity and its stored validation."""
    data, v, p, s = table.data, table.validation, table.profile, table.shape
    shape = f"{s.num_layers}x{s.hidden_size}"
    build = f"{data['build_minutes']:.1f} min" if data.get("build_minutes") else "converted"
    if "remote_latency" in data["settings"].get("subnet_selection", ""):
        build += " timing there (IRs prepared elsewhere: tools/remote_latency.py)"
    if "mape_pct" in v:
        fit = (f"{v['mape_pct']:.2f}% / {v['worst_pct']:.1f}% / {100 * v['within_5pct']:.0f}% / "
               f"{v['spearman']:.3f}")
        macs = f"{v['macs_spearman']:.3f}" if "macs_spearman" in v else "-"
    else:
        fit, macs = "-", "-"
    return (f"| {table.path.parent.name}/{table.path.name} | {table.fingerprint.get('cpu', '?')} | {shape} | "
            f"{p.threads} | {p.seq_len} | {p.precision} | {table.calibrated_ms(s.full_subnet()):.2f} ms | {build} | "
            f"{fit} | {macs} |")


def main() -> None:
    print("| file | CPU | shape | threads | length | precision | full model | build | leave-one-out MAPE / worst / "
          "within ±5% / Spearman | MACs Spearman |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(tables_dir().rglob("*.json")):
        print(row(LatencyTable.read(path)))


if __name__ == "__main__":
    main()
