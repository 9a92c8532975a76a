"""The README's own-data example: SST-2 rows re-saved as a CSV a user might have, with columns `review` and
`sentiment` and string labels `neg`/`pos` (train.csv from GLUE train, dev.csv from GLUE dev).

    python tools/sst2_as_csv.py ../shared/data/glue/SST-2 work/reviews
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pandas as pd


def main(source: str, out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, target in (("train.tsv", "train.csv"), ("dev.tsv", "dev.csv")):
        rows = pd.read_csv(Path(source) / name, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        rows = pd.DataFrame({"review": rows["sentence"], "sentiment": rows["label"].map({"0": "neg", "1": "pos"})})
        rows.to_csv(Path(out) / target, index=False)
        print(f"wrote {len(rows)} rows to {Path(out) / target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
