"""Architecture records as plain data: the shape of a BERT, a subnet of it, and a search space.

A subnet is one attention head count and one FFN width per layer; 0 removes that sub-block (the layer then
keeps only its residual path). Costs are counted, not estimated, in multiply-accumulates (MACs): the paper's
"11.2 GFLOPs" for BERT-base at sequence length 128 is this count (11.17 G MACs).
"""
from __future__ import annotations

import math
import numbers
import os
import random
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Iterator, Sequence

from .errors import UserError
from .files import read_json, write_json_atomic


@dataclass(frozen=True)
class BertShape:
    """The dimensions that decide a BERT's cost; read from a transformers config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int = 30522
    max_position: int = 512
    type_vocab_size: int = 2
    num_labels: int = 2

    @classmethod
    def from_config(cls, config: Any) -> "BertShape":
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            head_size=config.hidden_size // config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            max_position=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            num_labels=config.num_labels,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertShape":
        return cls(**d)

    def full_subnet(self) -> "SubnetConfig":
        return SubnetConfig((self.num_heads,) * self.num_layers, (self.intermediate_size,) * self.num_layers)

    def describe(self) -> str:
        return (f"{self.num_layers} layers x hidden {self.hidden_size}, {self.num_heads} heads of "
                f"{self.head_size}, FFN {self.intermediate_size}")

    @classmethod
    def named(cls, name: str) -> "BertShape":
        """A shape preset (NAMED_SHAPES), e.g. for building a latency table without weights."""
        try:
            return NAMED_SHAPES[name]
        except KeyError:
            raise UserError(f"unknown shape {name!r} (known: {', '.join(NAMED_SHAPES)})") from None


# Shapes of the model families the paper compresses.
NAMED_SHAPES = {
    "minilm-l6": BertShape(num_layers=6, hidden_size=384, num_heads=12, head_size=32, intermediate_size=1536),
    "bert-base": BertShape(num_layers=12, hidden_size=768, num_heads=12, head_size=64, intermediate_size=3072),
}


def layer_macs(shape: BertShape, heads: int, ffn: int, seq_len: int) -> int:
    """MACs of one encoder layer for one sequence: Q/K/V/O projections, the two attention matmuls, the FFN."""
    inner = heads * shape.head_size
    projections = 4 * seq_len * shape.hidden_size * inner
    attention = 2 * seq_len * seq_len * inner
    feed_forward = 2 * seq_len * shape.hidden_size * ffn
    return projections + attention + feed_forward


def _count(value, what: str) -> int:
    """A whole, non-negative number (numpy integers and 2.0 pass); 1.5, True or -1 is a user's mistake that
    int() would silently truncate or accept."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value) or value < 0:
        raise UserError(f"a subnet's {what} must be a whole number >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SubnetConfig:
    """Per-layer attention head counts and FFN widths; a layer's 0 means that sub-block is removed."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(_count(h, "head count") for h in self.heads))
        object.__setattr__(self, "ffn", tuple(_count(f, "FFN width") for f in self.ffn))

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def validate(self, shape: BertShape) -> "SubnetConfig":
        """Raise UserError unless this subnet fits `shape`; returns self for chaining."""
        if len(self.heads) != len(self.ffn):
            raise UserError(f"subnet has {len(self.heads)} head counts but {len(self.ffn)} FFN widths")
        if len(self.heads) != shape.num_layers:
            raise UserError(f"subnet has {len(self.heads)} layers, the model has {shape.num_layers}")
        for i, (h, f) in enumerate(zip(self.heads, self.ffn)):
            if not 0 <= h <= shape.num_heads:
                raise UserError(f"layer {i}: {h} heads, the model allows 0..{shape.num_heads}")
            if not 0 <= f <= shape.intermediate_size:
                raise UserError(f"layer {i}: FFN width {f}, the model allows 0..{shape.intermediate_size}")
        return self

    def macs(self, shape: BertShape, seq_len: int = 128, batch: int = 1) -> int:
        """Counted MACs of the whole classifier (encoder + pooler + classifier head) for `batch` sequences."""
        encoder = sum(layer_macs(shape, h, f, seq_len) for h, f in zip(self.heads, self.ffn))
        head = shape.hidden_size * shape.hidden_size + shape.hidden_size * shape.num_labels
        return batch * (encoder + head)

    def gmacs(self, shape: BertShape, seq_len: int = 128, batch: int = 1) -> float:
        """Giga-MACs: the unit the paper calls "GFLOPs"."""
        return self.macs(shape, seq_len, batch) / 1e9

    def params(self, shape: BertShape) -> int:
        """Parameter count of the standalone subnet model (embeddings, encoder, pooler, classifier)."""
        hd = shape.hidden_size
        emb = (shape.vocab_size + shape.max_position + shape.type_vocab_size) * hd + 2 * hd
        total = emb + hd * hd + hd + hd * shape.num_labels + shape.num_labels
        for h, f in zip(self.heads, self.ffn):
            inner = h * shape.head_size
            if h:
                total += 3 * (hd * inner + inner) + inner * hd + hd + 2 * hd
            if f:
                total += hd * f + f + f * hd + hd + 2 * hd
        return total

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "ffn": list(self.ffn)}

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetConfig":
        try:
            return cls(tuple(d["heads"]), tuple(d["ffn"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a subnet config (needs integer lists 'heads' and 'ffn'): {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SubnetConfig":
        return cls.from_dict(read_json(path, "subnet config"))

    def __str__(self) -> str:
        return f"heads={','.join(map(str, self.heads))} ffn={','.join(map(str, self.ffn))}"


@dataclass(frozen=True)
class EvaluatedSubnet:
    """A subnet with what the search knows of it: its metric on the search split (higher is better) and its costs.

    The one record that flows search -> select -> export -> summary. `latency_ms` is the latency table's
    prediction (None when the search ran without a table); `gmacs` is counted at the profile's sequence length
    (None when the search recorded no GMACs); `metric_se` is the bootstrap standard error of `metric` over the
    search split's examples (front subnets only: None elsewhere).
    """

    config: SubnetConfig
    metric: float | None
    gmacs: float | None = None
    latency_ms: float | None = None
    metric_se: float | None = None

    def cost(self, name: str) -> float | None:
        """The cost named `name` ("latency_ms" or "gmacs")."""
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "metric": self.metric, "gmacs": self.gmacs,
                "latency_ms": self.latency_ms, "metric_se": self.metric_se}

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatedSubnet":
        try:
            return cls(SubnetConfig.from_dict(d["config"]), d["metric"], d.get("gmacs"), d.get("latency_ms"),
                       d.get("metric_se"))
        except (KeyError, TypeError) as e:
            raise UserError(f"not an evaluated-subnet record ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class SearchSpace:
    """Per-layer candidate sets: the choices NSGA-II and the sandwich rule pick from."""

    heads: tuple[tuple[int, ...], ...]
    ffn: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(tuple(sorted(set(map(int, c)))) for c in self.heads))
        object.__setattr__(self, "ffn", tuple(tuple(sorted(set(map(int, c)))) for c in self.ffn))
        if len(self.heads) != len(self.ffn) or any(not c for c in self.heads + self.ffn):
            raise UserError("search space needs one non-empty head and FFN candidate set per layer")

    @classmethod
    def from_subnets(cls, subnets: Sequence[SubnetConfig]) -> "SearchSpace":
        """Combine subnets layer by layer: each layer may take any value one of them has there."""
        n = subnets[0].num_layers
        return cls(tuple({s.heads[i] for s in subnets} for i in range(n)),
                   tuple({s.ffn[i] for s in subnets} for i in range(n)))

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def largest(self) -> SubnetConfig:
        return SubnetConfig(tuple(c[-1] for c in self.heads), tuple(c[-1] for c in self.ffn))

    def smallest(self) -> SubnetConfig:
        return SubnetConfig(tuple(c[0] for c in self.heads), tuple(c[0] for c in self.ffn))

    def sample(self, rng: random.Random) -> SubnetConfig:
        return SubnetConfig(tuple(rng.choice(c) for c in self.heads), tuple(rng.choice(c) for c in self.ffn))

    def contains(self, cfg: SubnetConfig) -> bool:
        return (cfg.num_layers == self.num_layers
                and all(h in c for h, c in zip(cfg.heads, self.heads))
                and all(f in c for f, c in zip(cfg.ffn, self.ffn)))

    @property
    def size(self) -> int:
        n = 1
        for c in self.heads + self.ffn:
            n *= len(c)
        return n

    def choices(self) -> list[tuple[int, ...]]:
        """Candidate lists in genome order (heads of every layer, then FFN of every layer)."""
        return list(self.heads) + list(self.ffn)

    def decode(self, genome: Sequence[int]) -> SubnetConfig:
        """Genome of per-variable candidate indices -> subnet (the integer encoding NSGA-II searches)."""
        n = self.num_layers
        return SubnetConfig(tuple(self.heads[i][int(genome[i])] for i in range(n)),
                            tuple(self.ffn[i][int(genome[n + i])] for i in range(n)))

    def encode(self, cfg: SubnetConfig) -> list[int]:
        return [c.index(h) for c, h in zip(self.heads, cfg.heads)] + [c.index(f) for c, f in zip(self.ffn, cfg.ffn)]

    def validate(self, shape: BertShape) -> "SearchSpace":
        self.largest().validate(shape)
        self.smallest().validate(shape)
        return self

    def __iter__(self) -> Iterator[SubnetConfig]:
        for genome in product(*(range(len(c)) for c in self.choices())):
            yield self.decode(genome)

    def to_dict(self) -> dict:
        return {"heads": [list(c) for c in self.heads], "ffn": [list(c) for c in self.ffn]}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        try:
            return cls(tuple(d["heads"]), tuple(d["ffn"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a search space (needs per-layer lists 'heads' and 'ffn'): {e}") from None
