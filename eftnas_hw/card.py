"""The model card (README.md) of an exported IR folder: what it is, how good and how fast it measured, how it
was made, and the loading code with the settings it was measured under."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .latency import Profile
from .subnet import BertShape

if TYPE_CHECKING:
    from .deploy import ExportedModel


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


# Filled by `model_card`; {braces} are its fields.
CARD = """# {name}: EFTNAS-HW subnet for {task} ({precision}, OpenVINO IR)

A BERT subnet extracted from a weight-sharing super-network (base model: {describe}) and exported
unchanged (no fine-tuning after extraction, as in EFTNAS) to an OpenVINO IR through optimum-intel.

| | |
|---|---|
| task | {task} |
| dev {metric_name} of this IR (OpenVINO runtime) | {ir_dev} |
| dev {metric_name} of the same subnet in PyTorch (super-network) | {torch_dev} |
| search-split {metric_name} (the NSGA-II objective) +- bootstrap standard error | {search_metric} |
| {predicted} | {predicted_ms} ms |
| predicted latency, the table re-anchored in this export's timing rounds | {reanchored_ms} |
| measured latency (at the machine's fastest level: see Latency) | {measured} |
| GMACs at sequence length {seq} | {gmacs:.4g} |
| parameters | {params:,} |
| precision | {int8} |

Dev metrics: every example of the task's evaluation split (GLUE dev, or the user's evaluation data), batched (length-sorted, padded per batch) with dynamic shapes{qa_note}.

## Per-layer widths (0 = sub-block removed, residual path only)
| layer | attention heads (of {num_heads}) | FFN width (of {intermediate_size}) |
|---|---|---|
{widths}

## Latency
Measured with the project's protocol (`eftnas_hw.latency.measure_compiled`), which is `benchmark_app`'s: compiled
with the profile's OpenVINO settings, input tensors set once, `infer()` back to back, the runtime's own per-call
latency; {n} timed calls in rounds interleaved with the other models of its export, reported: {statistic}. On a
quiet machine that is benchmark_app's median; on a shared VM whose speed switches between levels every second or
so, benchmark_app's median reads the mix and lands near the median of all calls given beside it. To
check it yourself (static shape, the profile's threads and precision):
`{bapp_bind}benchmark_app -m openvino_model.xml -d CPU -hint none -nthreads {threads} -nstreams 1 -nireq 1 -api sync -shape [{batch},{seq}] {bapp_precision}`

- CPUs: {cpus}
- precision: {precision_note}
- profile: `{profile}`
- machine fingerprint: `{machine}`
- {table_fp}
- {table_anchor}
- {export_anchor}

## Input shapes
The IR has **dynamic** `[batch, sequence]` inputs, so it runs each request at its real length (much cheaper than
padding to {seq}). Its latency above was measured after reshaping it to the profile's static
`[{batch}, {seq}]`, which is exactly the graph a static export produces. To serve fixed shapes, reshape once
after loading (`model.reshape({batch}, {seq})` in optimum-intel, `ov.Model.reshape` in OpenVINO).

## How it was made
{source}
- extraction: `ElasticBert.set_active_subnet(cfg).get_active_subnet()` (physically smaller layers)
- export: `optimum.exporters.openvino.export_from_model` ({head}), {int8}

## Use
The settings below are the ones measured above. Without them OpenVINO picks its own threads and, on CPUs with
AMX or AVX512-BF16, runs an f32 IR in bf16 (faster, slightly different logits).

```python
from optimum.intel import {ov_class}
from transformers import AutoTokenizer
model = {ov_class}.from_pretrained("{name}", ov_config={ov_config})
tokenizer = AutoTokenizer.from_pretrained("{name}")
{predict}
```
"""


def model_card(model: "ExportedModel", shape: BertShape) -> str:
    """README.md of one exported folder: what it is, how good and fast it measured, how it was made."""
    p, cfg, m, fp = model.profile, model.subnet.config, model.measured, model.fingerprint
    machine = {k: v for k, v in fp.items() if k != "profile"}
    table_fp = model.table_fingerprint
    same_machine = table_fp is None or {k: v for k, v in table_fp.items() if k != "profile"} == machine
    int8 = (f"NNCF post-training INT8 quantization (transformer preset) calibrated on {model.calibration_size} "
            f"training inputs of {model.task}" if model.precision == "int8" else
            f"f32 weights, no quantization, run in {model.precision}")
    return CARD.format(
        name=model.name, task=model.task, precision=model.precision, metric_name=model.metric_name,
        ir_dev=_fmt(model.ir_dev_metric), torch_dev=_fmt(model.torch_dev_metric),
        search_metric=_fmt(model.subnet.metric) + (f" +- {model.subnet.metric_se:.4f}"
                                                    if model.subnet.metric_se is not None else ""),
        predicted_ms=_fmt(model.subnet.latency_ms, ".2f"),
        predicted="predicted latency (latency table" + (
            f", for the {model.table_precision} model)"
            if model.table_precision not in (None, model.precision) else ")"),
        statistic=model.measured_statistic, gmacs=model.subnet.gmacs, params=model.params, int8=int8,
        measured=(f"{model.measured_ms:.2f} ms (all calls: median {m['median']:.2f}, min {m['min']:.2f}, p90 "
                  f"{m['p90']:.2f})" + (" UNSTABLE (noisy machine)" if m["unstable"] else "")),
        reanchored_ms=f"{model.reanchored_ms:.2f} ms" if model.reanchored_ms is not None else "-",
        export_anchor=model.export_anchor or "not re-anchored in the export's rounds (no table for this precision)",
        threads=p["threads"], precision_note=Profile.from_dict(p).describe_precision(),
        bapp_precision="" if model.precision == "int8" else f"-infer_precision {model.precision}",
        bapp_bind=f"taskset -c {','.join(map(str, m['cpus']))} " if m.get("cpus") else "",
        cpus=(f"timed bound to {', '.join(map(str, m['cpus']))}, the fastest in a short scan of this machine's CPUs "
              "(on a shared VM, a neighbour on the same physical core can halve one CPU's speed)" if m.get("cpus")
              else "where OpenVINO pinned the inference"),
        table_anchor=model.table_anchor or "no latency table",
        describe=shape.describe(), num_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        widths="\n".join(f"| {i} | {h} | {f} |" for i, (h, f) in enumerate(zip(cfg.heads, cfg.ffn))),
        n=m["n"], profile=p, machine=machine, seq=p["seq_len"], batch=p["batch"],
        table_fp=("the latency table was measured on the same CPU/OpenVINO" if same_machine else
                  f"the latency table was measured elsewhere: `{table_fp}`"),
        source="\n".join(f"- {k}: `{v}`" for k, v in model.source.items()) or "- (not recorded)",
        ov_config={k: str(v) for k, v in Profile.from_dict(p).ov_config().items()},
        head=model.head, ov_class=OV_CLASSES[model.head], predict=_predict_code(model, shape),
        qa_note=("; QA: each context in windows, the best span over them (n-best start/end logits), SQuAD v1.1 "
                 "EM/F1" if model.head == "question-answering" else ""))


OV_CLASSES = {"text-classification": "OVModelForSequenceClassification",
              "question-answering": "OVModelForQuestionAnswering"}
CLASSIFY = ('inputs = tokenizer("a gripping, beautifully acted film", return_tensors="pt")'
            '  # a pair: tokenizer(a, b, ...)')
ANSWER = """question, context = "Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare."
inputs = tokenizer(question, context, truncation="only_second", max_length={seq}, return_tensors="pt")
out = model(**inputs)
start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())  # (long contexts: windows, see eftnas_hw.qa)
print(tokenizer.decode(inputs["input_ids"][0, start:end + 1]))  # the answer span"""


def _predict_code(model: "ExportedModel", shape: BertShape) -> str:
    """The card's lines that run the IR once and print what it predicts, as the user's labels."""
    if model.head == "question-answering":
        return ANSWER.format(seq=model.profile["seq_len"])
    if shape.num_labels == 1:
        return CLASSIFY + "\nprint(float(model(**inputs).logits[0, 0]))  # the predicted score"
    return (CLASSIFY + "\nprint(model.config.id2label[int(model(**inputs).logits.argmax(-1))])  # one of: "
            + ", ".join(model.label_names))
