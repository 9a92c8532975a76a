"""The cost of a subnet, one interface for Algorithm 1 and NSGA-II: predicted latency (a latency table) or
counted GMACs (the paper's cost). One place, so the CLI, the pipeline, the search and the tools agree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .subnet import BertShape, SubnetConfig

if TYPE_CHECKING:
    from .latency import LatencyTable


@dataclass(frozen=True)
class CostModel:
    """`name` is the EvaluatedSubnet field it fills ("latency_ms" / "gmacs"); `unit` and `label` are for people."""

    name: str
    unit: str
    label: str
    fn: Callable[[SubnetConfig], float]

    def __call__(self, subnet: SubnetConfig) -> float:
        return float(self.fn(subnet))


def latency_cost(table: "LatencyTable") -> CostModel:
    return CostModel("latency_ms", "ms", f"latency ({table.profile.name})", table.predict_ms)


def gmacs_cost(shape: BertShape, seq_len: int) -> CostModel:
    return CostModel("gmacs", "GMACs", f"GMACs@{seq_len}", lambda subnet: subnet.gmacs(shape, seq_len))


def cost_model(metric: str, shape: BertShape, table: "LatencyTable | None", seq_len: int) -> CostModel:
    """The cost a run's `metric` names: "latency" (needs the table) or "gmacs" at `seq_len`."""
    if metric == "latency":
        if table is None:
            raise ValueError("the latency cost needs a latency table")
        return latency_cost(table)
    return gmacs_cost(shape, seq_len)
