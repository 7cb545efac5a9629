"""`nlhf tabular` end to end: table, --json, plot, matrices from files, contexts."""

import json

import numpy as np
import pytest

from nlhf.cli import main
from nlhf.games.builders import random_game, rock_paper_scissors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_run_prints_table_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["tabular", "--output-dir", str(out), "--iterations", "300"]) == 0
    text = capsys.readouterr().out
    assert "KL(pi*_tau,pi)" in text and "nash-md (eta_t=2/(tau(t+2)))" in text
    assert "Theorem 1 bound" in text and f"plot:    {out / 'convergence.png'}" in text
    assert (out / "convergence.png").read_bytes()[:8] == PNG_MAGIC
    results = json.loads((out / "results.json").read_text())
    names = [r["algorithm"] for r in results["algorithms"]]
    assert "nash-md" in names and "extragradient" in names and "fictitious-play" in names
    nmd = next(r for r in results["algorithms"] if r["algorithm"] == "nash-md")
    # Theorem 1 along the whole recorded history
    steps = np.array(nmd["history"]["steps"])
    assert np.all(np.array(nmd["history"]["kl"]) <= 8 / (0.05**2 * (steps + 1)))


def test_json_output_rps(tmp_path, capsys):
    args = ["tabular", "--game", "rps", "--tau", "0.1", "--iterations", "200", "--json"]
    assert main([*args, "--output-dir", str(tmp_path), "--no-plot"]) == 0
    result = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(result["equilibrium"]["pi_star_tau"], np.full(3, 1 / 3), atol=1e-12)
    np.testing.assert_allclose(result["equilibrium"]["nash_lp"], np.full(3, 1 / 3), atol=1e-9)
    assert result["names"] == ["rock", "paper", "scissors"]
    assert result["plot"] is None and not (tmp_path / "convergence.png").exists()
    nmd = next(r for r in result["algorithms"] if r["algorithm"] == "nash-md")
    assert nmd["exploitability"] < 1e-6 and nmd["matvecs"] == 200


def test_matrix_from_csv_and_algorithm_choice(tmp_path, capsys):
    path = tmp_path / "prefs.csv"
    P = random_game(6, seed=4)
    lines = ["a,b,c,d,e,f"] + [",".join(f"{x:.17g}" for x in row) for row in P]
    path.write_text("\n".join(lines) + "\n")
    args = ["tabular", "--matrix", str(path), "--tau", "0.02", "--iterations", "100"]
    args += ["--algorithms", "nash-md", "extragradient", "--json", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["algorithm"] for r in result["algorithms"]] == ["nash-md", "extragradient"]
    assert result["names"] == list("abcdef") and result["n"] == 6
    assert result["equilibrium"]["pi_star_tau_gap"] <= 1e-12


def test_contexts_from_npy(tmp_path, capsys):
    P = np.stack([random_game(4, seed=s) for s in range(3)])
    path = tmp_path / "ctx.npy"
    np.save(path, P)
    args = ["tabular", "--matrix", str(path), "--rho", "0.5", "0.25", "0.25", "--iterations", "50"]
    assert main([*args, "--output-dir", str(tmp_path), "--json", "--no-plot"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["contexts"] == 3
    assert np.array(result["equilibrium"]["pi_star_tau"]).shape == (3, 4)


def test_unregularized_game_skips_what_needs_tau(tmp_path, capsys):
    args = ["tabular", "--game", "rps", "--tau", "0", "--iterations", "100", "--no-plot"]
    assert main([*args, "--output-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "skipped nash-md" in text and "fictitious-play" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algorithms", "nash-md", "bogus"], "unknown ['bogus']"),
        (["--tau", "-1"], "tau must be a finite number >= 0"),
        (["--game", "rps", "--mu", "0.5", "0.5", "0.5"], "mu sums to 1.5"),
        (["--iterations", "0"], "iterations must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, capsys, args, message):
    assert main(["tabular", *args, "--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_matrix_file(tmp_path, capsys):
    assert main(["tabular", "--matrix", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err


def test_rps_names_in_table(tmp_path, capsys):
    np.save(tmp_path / "rps.npy", rock_paper_scissors())
    args = ["tabular", "--matrix", str(tmp_path / "rps.npy"), "--iterations", "20"]
    assert main([*args, "--output-dir", str(tmp_path), "--no-plot"]) == 0
    assert "y0: 0.333" in capsys.readouterr().out
