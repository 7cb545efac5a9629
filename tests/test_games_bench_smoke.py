"""The tabular benchmark script runs (in its --quick mode) and writes well-formed JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_tabular_quick(tmp_path):
    out = tmp_path / "bench.json"
    script = ROOT / "benchmarks" / "bench_tabular.py"
    args = [
        sys.executable,
        str(script),
        "--quick",
        "--sizes",
        "40",
        "--cap",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| n | tau |" in proc.stdout
    results = json.loads(out.read_text())
    assert len(results["meta"]["loadavg_before"]) == 3
    assert [r["tau"] for r in results["runs"]] == [0.1, 0.01]
    for run in results["runs"]:
        assert run["lp"]["reached"] and run["lp"]["exploitability"] < 1e-9
        newton = run["newton"]
        assert newton["final_gap"] <= 1e-12
        assert newton["targets"]["1e-09"]["reached"]
        assert set(run["per_iteration"]) >= {"nash-md", "extragradient", "fictitious-play"}
        for entry in run["extragradient"]["targets"].values():
            assert entry["reached"] or entry["gap_achieved"] > 0
