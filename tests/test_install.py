"""D5: a plain (non-editable) `pip install .` finds every profile and shipped table from any directory."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_profiles_and_tables_and_works_from_another_directory(tmp_path):
    source = tmp_path / "src"  # a copy: building leaves build/ and egg-info folders beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "eftnas_hw", "profiles", "latency_tables"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                   check=True, cwd=tmp_path, capture_output=True)
    # The dependencies come from this environment; the package itself only from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", next(wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import eftnas_hw, json\n"
             "from eftnas_hw.latency import Profile\n"
             "from eftnas_hw.resources import profiles_dir, tables_dir\n"
             "print(json.dumps({'package': eftnas_hw.__file__, 'profile': Profile.load('cpu-1t-b1-s128').seq_len,\n"
             "                  'profiles': sorted(p.name for p in profiles_dir().glob('*.yaml')),\n"
             "                  'tables': sorted(p.name for p in tables_dir().rglob('*.json'))}))\n")
    out = subprocess.run([str(python), "-c", probe], cwd=elsewhere, check=True, capture_output=True, text=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(venv))  # the installed copy, not the source tree
    assert found["profile"] == 128
    assert found["profiles"] == sorted(p.name for p in (REPO / "profiles").glob("*.yaml"))
    assert found["tables"] == sorted(p.name for p in (REPO / "latency_tables").rglob("*.json"))
    for command in ("profile", "run"):
        help_text = subprocess.run([str(venv / "bin" / "eftnas-hw"), command, "--help"], cwd=elsewhere, check=True,
                                   capture_output=True, text=True).stdout
        assert "--profile" in help_text
