"""Every case of the bad-input battery (`tools/check_bad_inputs.py`): one `eftnas-hw: error:` line, exit 2, no
traceback, nothing left behind. Run in-process here (the tool runs each in its own process)."""
from __future__ import annotations

import pytest

from conftest import load_tool

battery = load_tool("check_bad_inputs")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad-inputs")
    return work, battery.build_fixtures(work)


def test_the_battery_is_large_and_covers_every_kind():
    kinds = {c.kind for c in battery.CASES}
    assert len(battery.CASES) >= 60 and len({c.name for c in battery.CASES}) == len(battery.CASES)
    assert kinds == {"output", "data", "number", "file", "consistency", "config"}


@pytest.mark.parametrize("case", battery.CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_exit_2(case, fixtures, monkeypatch):
    work, fx = fixtures
    monkeypatch.delenv("EFTNAS_GLUE_DIR", raising=False)
    case.prepare(work)
    rc, _, err = battery.run_in_process(case.resolved(fx, work))
    verdict = battery.judge(case, rc, err, work)
    assert verdict.clean, verdict.line() + "\n" + err[-3000:]
