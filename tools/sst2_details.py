"""Details behind the SST-2 results (run after tools/reproduce_results.py): (a) measured latency of the N Algorithm-1 configurations (latency space),
(b) dev accuracy of largest/smallest/10 fixed random subnets per reordering strategy."""
import json, os, warnings; warnings.filterwarnings("ignore")
from datasets import DatasetDict
from eftnas_hw.latency import LatencyTable, measure_models_ms, statistic_for
from eftnas_hw.models import load_model, build_subnet, load_tokenizer
from eftnas_hw.subnet import SubnetConfig
from eftnas_hw.supernet import load_supernet, evaluate_subnets, fixed_subnets
from eftnas_hw.data import load_task, tokenize_task
root = "runs/results/sst2"
t = LatencyTable.load(json.load(open(f"{root}/latency/summary.json"))["table"])
sp = json.load(open(f"{root}/latency/search_space.json"))
cfgs = [SubnetConfig(c["heads"], c["ffn"]) for c in sp["configurations"]]
teacher = load_model(f"{root}/latency/teacher")
stats = measure_models_ms([build_subnet(teacher, c) for c in cfgs], t.profile)
out = {"space_configs": [{"subnet": c.to_dict(), "target_ms": sc["target"], "predicted_ms": t.predict_ms(c),
                          "measured_ms": s[statistic_for(t.profile)]} for c, sc, s in zip(cfgs, sp["configurations"], stats)]}
for r in out["space_configs"]: print(r)
tok = load_tokenizer(f"{root}/latency/teacher")
dev = tokenize_task(DatasetDict(validation=load_task("sst2", os.environ.get("EFTNAS_GLUE_DIR"))["validation"]), tok, "sst2", 64)["validation"]
out["reordering"] = {}
for strat in ("latency", "l1", "none"):
    net, space = load_supernet(f"{root}/{strat}/supernet")
    named = fixed_subnets(space, 10, seed=0)
    res = evaluate_subnets(net, list(named.values()), dev, "sst2", 64)
    out["reordering"][strat] = {n: r["metric"] for n, r in zip(named, res)}
    print(strat, {n: round(r["metric"], 4) for n, r in zip(named, res)})
json.dump(out, open("results/sst2/details.json", "w"), indent=1)
