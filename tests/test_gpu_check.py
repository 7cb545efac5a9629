"""The prepared GPU check runs end to end on CPU (--cpu-smoke) with the packages the GPU machine
lacks (datasets, gguf) made unimportable, in this process and in its benchmark subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_without_datasets_or_gguf(tmp_path, monkeypatch):
    blockers = tmp_path / "blockers"
    for name in ("datasets", "gguf"):
        (blockers / name).mkdir(parents=True)
        (blockers / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not available on the GPU machine')\n"
        )
        monkeypatch.setitem(sys.modules, name, None)  # this process: import fails
    path = [str(blockers), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))  # subprocesses
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = summary["nash_md_pg"]
    assert steps["master_weights_dtype"] == "torch.float32" and steps["metrics_finite"]
    assert steps["fraction_of_weights_changed"] > 0.5  # bf16 checkpoint, float32 masters move
    assert "error" not in summary["bench_policy"], summary["bench_policy"].get("error")
    assert summary["bench_policy"]["nlhf"]["seconds_per_step_median"] > 0
    assert "error" not in summary["bench_memory"], summary["bench_memory"].get("error")
    row = summary["bench_memory"]["rows"][0]
    assert row["same_loss"] and row["same_entropy"]
    assert {"gpu_check.json", "bench_policy.json", "bench_memory.json"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
