"""Bad input and faults in `nlhf tabular`, each through the real command line.

Every case ends either in a clear error (exit code 2 and one line that names the argument, file,
line, column or entry) or in the correct result, checked against an exact answer; never in a
traceback, a hang, lost work or bare NaN in JSON.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nlhf.cli import main
from nlhf.games import PreferenceGame, duality_gap, exploitability, solve_nash_lp
from nlhf.games.builders import random_game, rock_paper_scissors

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iterations", "30", "--no-plot", "--no-progress"]


def tabular(tmp_path, *args, out="out"):
    """Run `nlhf tabular` in-process; return (exit code, stdout, stderr)."""
    return main(["tabular", *FAST, "--output-dir", str(tmp_path / out), *map(str, args)])


def error_of(capsys) -> str:
    """The one-line error the command printed (and check that it is one line)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nlhf tabular: error: "), err
    return lines[0]


def no_bare_nan(text: str):
    """Parse JSON refusing NaN / Infinity."""

    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def write(tmp_path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


# ---------------------------------------------------------------------------------------------
# The output directory is checked before any compute.


def test_output_dir_that_is_a_file_fails_before_computing(tmp_path, capsys):
    taken = write(tmp_path, "taken", "keep me")
    start = time.perf_counter()
    # a run that would take minutes (n = 1500, 10^6 iterations) if it computed first
    code = main(["tabular", "--n", "1500", "--iterations", "1000000", "--output-dir", str(taken)])
    assert code == 2 and time.perf_counter() - start < 10
    assert f"--output-dir {taken} exists and is not a directory" in error_of(capsys)
    assert taken.read_text() == "keep me"


def test_output_dir_below_a_file(tmp_path, capsys):
    taken = write(tmp_path, "taken", "x")
    assert main(["tabular", *FAST, "--output-dir", str(taken / "run")]) == 2
    assert f"{taken} is a file, not a directory" in error_of(capsys)


def test_results_json_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    assert tabular(tmp_path, "--game", "rps") == 2
    assert "results.json exists and is not a file" in error_of(capsys)


def test_bad_input_is_reported_before_the_output_dir_is_created(tmp_path, capsys):
    assert tabular(tmp_path, "--game", "rps", "--mu", "0.5", "0.5") == 2
    assert "mu must have shape (3,)" in error_of(capsys)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# tau: the supported range, and correct answers at its ends.


@pytest.mark.parametrize("tau", ["1e200", "1e13", "inf"])
def test_tau_too_large(tmp_path, capsys, tau):
    assert tabular(tmp_path, "--tau", tau) == 2
    message = error_of(capsys)
    assert "tau" in message and ("[1e-06, 1e+12]" in message or "finite" in message)


@pytest.mark.parametrize("tau", ["1e-300", "1e-7", "5e-324"])
def test_tau_too_small_points_to_tau_zero(tmp_path, capsys, tau):
    assert tabular(tmp_path, "--tau", tau) == 2
    message = error_of(capsys)
    assert "below the supported range [1e-06, 1e+12] (or 0)" in message
    assert "use tau = 0" in message


@pytest.mark.parametrize("tau", [1e10, 1e12])
def test_large_tau_equilibrium_is_mu_and_gaps_are_exact(tmp_path, capsys, tau):
    """pi*_tau against the fixed-point iteration pi <- BR(pi) from mu (a contraction with
    factor ~1/tau: five steps are exact in float64), and every reported gap against 0."""
    mu = np.random.default_rng(0).dirichlet(np.ones(20))
    np.save(tmp_path / "p.npy", random_game(20, seed=1))
    args = ["--matrix", tmp_path / "p.npy", "--tau", tau, "--mu", *mu, "--json"]
    assert tabular(tmp_path, *args) == 0
    result = no_bare_nan(capsys.readouterr().out)
    game = PreferenceGame(random_game(20, seed=1), mu=mu, tau=tau)
    exact = mu.copy()
    for _ in range(5):
        logits = np.log(mu) + game.P @ exact / tau
        exact = np.exp(logits - logits.max())
        exact /= exact.sum()
    star = np.array(result["equilibrium"]["pi_star_tau"])
    np.testing.assert_allclose(star, exact, rtol=1e-14, atol=0)
    assert np.abs(star / mu - 1).max() < 1e-9  # pi*_tau = mu (1 + O(1 / tau))
    assert abs(result["equilibrium"]["pi_star_tau_gap"]) <= 1e-15
    for row in result["algorithms"]:  # all converge to mu; gap_tau of pi = mu is var/(2 tau)
        assert -1e-15 <= row["duality_gap"] <= 1e-9, row["label"]
        assert 0 <= row["kl"] <= 1e-18, row["label"]


def test_small_tau_equilibrium_is_near_the_lp_nash(tmp_path, capsys):
    """At tau = 1e-6 pi*_tau is within O(tau) of the (unique) Nash equilibrium of a random
    game; the unregularised gap of pi*_tau is O(tau log n)."""
    args = ["--n", "40", "--seed", "3", "--tau", "1e-6", "--json"]
    assert tabular(tmp_path, *args) == 0
    result = no_bare_nan(capsys.readouterr().out)
    star = np.array(result["equilibrium"]["pi_star_tau"])
    nash = np.array(result["equilibrium"]["nash_lp"])
    P = random_game(40, seed=3)
    assert result["equilibrium"]["pi_star_tau_gap"] <= 1e-12
    assert np.abs(star - nash).max() < 1e-4
    assert exploitability(P, star) < 1e-5
    # Nash-MD's last iterate at tau = 1e-6 puts probability 0 (underflow) where pi*_tau has
    # mass: KL = inf, written as null, never as a bare Infinity
    nmd = next(r for r in result["algorithms"] if r["algorithm"] == "nash-md")
    assert nmd["kl"] is None or nmd["kl"] > 0
    assert 0 <= nmd["exploitability"] <= 0.5


# ---------------------------------------------------------------------------------------------
# The LP: a time limit, skipped (with the reason) instead of hanging.


def test_lp_skipped_up_front_when_its_setup_alone_is_too_slow(tmp_path, capsys):
    args = ["--n", "1500", "--iterations", "2", "--lp-time-limit", "1", "--algorithms", "nash-md"]
    start = time.perf_counter()
    assert tabular(tmp_path, *args) == 0
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    assert "Nash (LP): skipped: setting up the dense LP for n = 1500" in out
    result = no_bare_nan((tmp_path / "out" / "results.json").read_text())
    assert "--lp-time-limit 1 s" in result["equilibrium"]["nash_lp_skipped"]
    assert result["equilibrium"]["nash_lp"] is None
    assert result["equilibrium"]["pi_star_tau_gap"] <= 1e-12  # the rest of the run is there
    assert len(result["algorithms"]) == 1


def test_lp_time_limit_hit(tmp_path, capsys):
    args = ["--n", "700", "--iterations", "2", "--lp-time-limit", "0.6", "--algorithms", "nash-md"]
    start = time.perf_counter()
    assert tabular(tmp_path, *args) == 0
    assert time.perf_counter() - start < 30
    result = no_bare_nan((tmp_path / "out" / "results.json").read_text())
    skipped = result["equilibrium"]["nash_lp_skipped"]
    assert "HiGHS did not finish within --lp-time-limit 0.6 s" in skipped
    assert result["equilibrium"]["nash_lp_seconds"] < 3
    assert "Nash (LP): skipped: HiGHS did not finish" in capsys.readouterr().out


def test_lp_time_limit_zero_skips_it(tmp_path, capsys):
    assert tabular(tmp_path, "--game", "rps", "--lp-time-limit", "0", "--json") == 0
    result = no_bare_nan(capsys.readouterr().out)
    assert result["equilibrium"]["nash_lp_skipped"] == "skipped: --lp-time-limit 0"


def test_lp_time_limit_is_shared_by_contexts():
    P = np.stack([random_game(400, seed=s) for s in range(3)])
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        solve_nash_lp(P, time_limit=0.3)
    assert time.perf_counter() - start < 5  # not 3 x the limit plus set-up


def test_progress_bars_on_stderr(tmp_path, capsys):
    code = main(
        ["tabular", "--game", "rps", "--iterations", "50", "--no-plot", "--output-dir",
         str(tmp_path), "--algorithms", "nash-md", "extragradient"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "nash-md (1/2)" in err and "extragradient (2/2)" in err


# ---------------------------------------------------------------------------------------------
# Matrix files: CSV.

RPS_ROWS = "0.5,0,1\n1,0.5,0\n0,1,0.5\n"


@pytest.mark.parametrize(
    "text",
    [
        "a,b,c\n" + RPS_ROWS,  # a header
        ",a,b,c\n" + "a,0.5,0,1\nb,1,0.5,0\nc,0,1,0.5\n",  # header with a corner, name column
        "a,b,c\n" + "a,0.5,0,1\nb,1,0.5,0\nc,0,1,0.5\n",  # header without the corner
        "a,0.5,0,1\nb,1,0.5,0\n\nc,0,1,0.5\n",  # names in the first column only, a blank line
        "\ufeffa,b,c\n" + RPS_ROWS,  # UTF-8 with a byte-order mark
    ],
)
def test_csv_layouts_that_are_accepted(tmp_path, capsys, text):
    path = write(tmp_path, "p.csv", text.encode("utf-8"))
    assert tabular(tmp_path, "--matrix", path, "--json") == 0
    result = no_bare_nan(capsys.readouterr().out)
    assert result["names"] == ["a", "b", "c"]
    np.testing.assert_allclose(result["equilibrium"]["nash_lp"], np.full(3, 1 / 3), atol=1e-9)


def test_tsv(tmp_path, capsys):
    path = write(tmp_path, "p.tsv", RPS_ROWS.replace(",", "\t"))
    assert tabular(tmp_path, "--matrix", path, "--json") == 0
    assert no_bare_nan(capsys.readouterr().out)["n"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        # a first row with a typo is data, not a header: the error names the cell
        ("0.5,oops,1\n1,0.5,0\n0,1,0.5\n", "line 1, column 2: 'oops' is not a number"),
        ("a,b\n" + RPS_ROWS, "line 1: the header has 2 names, but the rows have 3 numbers"),
        ("a,b,c,d\n" + RPS_ROWS, "line 1: the header has 4 names, but the rows have 3 numbers"),
        ("a,b,a\n" + RPS_ROWS, "line 1: duplicate response names: 'a' (columns 1, 3)"),
        ("a,,c\n" + RPS_ROWS, "line 1: empty response name (column 2)"),
        ("a,0.5,0,1\nb,1,0.5,0\na,0,1,0.5\n", "duplicate response names: 'a' (lines 1, 3)"),
        (
            ",a,b,c\nb,0.5,0,1\na,1,0.5,0\nc,0,1,0.5\n",
            "line 2: the row is named 'b' but the matching column is 'a'",
        ),
        ("0.5,0,1\n1,0.5,0\n\n0,x,0.5\n", "line 4, column 2: 'x' is not a number"),
        ("0.5,0,1\n1,0.5\n0,1,0.5\n", "line 2: 2 cells, but line 1 has 3"),
        ("0.5,0,1\n1,0.5,nan\n0,1,0.5\n", "line 2, column 3: 'nan' is not a finite number"),
        ("0.5,0,1\n1,0.5,1e999\n0,1,0.5\n", "line 2, column 3: '1e999' is not a finite number"),
        ("0.5;0\n1;0.5\n", "column 1: '1;0.5' is not a number (the file is read as comma-"),
        ("a,b\n", "no rows of numbers after the header on line 1"),
        ("", "the file is empty"),
        ("\n \n", "the file is empty"),
        ("0.5,0\n1,0.5\n0,1\n", "P must be square, got 3 rows and 2 columns"),
        ("1,2\n0.5,0\n1,0.5\n", "(a first row of names that are all numbers is read as data"),
        ("0.5,0.7\n0.4,0.5\n", "P[0, 1] + P[1, 0] = 1.1, should be 1"),
        ("0.5,1.5\n-0.5,0.5\n", "is outside [0, 1] by 0.5"),
    ],
)
def test_bad_csv(tmp_path, capsys, text, message):
    path = write(tmp_path, "bad.csv", text)
    assert tabular(tmp_path, "--matrix", path) == 2
    line = error_of(capsys)
    assert "bad.csv" in line and message in line, line
    assert not (tmp_path / "out").exists()


def test_csv_not_utf8_names_the_line(tmp_path, capsys):
    path = write(tmp_path, "latin1.csv", b"a,b\n0.5,0.5\n" + "é,0.5\n".encode("latin-1"))
    assert tabular(tmp_path, "--matrix", path) == 2
    assert "latin1.csv, line 3: not UTF-8 text (byte 0xe9 at byte 1 of the line)" in error_of(
        capsys
    )


def test_npy_renamed_to_csv(tmp_path, capsys):
    np.save(tmp_path / "p.npy", rock_paper_scissors())
    path = write(tmp_path, "p.csv", (tmp_path / "p.npy").read_bytes())
    assert tabular(tmp_path, "--matrix", path) == 2
    assert "p.csv, line 1: not UTF-8 text" in error_of(capsys)


def test_rounding_within_tolerance_is_accepted_and_made_exact(tmp_path, capsys):
    """A pair off by 1e-10 (rounding) is accepted and projected onto P + P^T = 1, so the
    regularised equilibrium's gap is exact; off by 1e-4 (a real error) is refused, unless
    --matrix-tolerance allows it."""
    path = write(tmp_path, "r.csv", "0.5,0.3,0.8\n0.7000000001,0.5,0.4\n0.2,0.6,0.5\n")
    assert tabular(tmp_path, "--matrix", path, "--json") == 0
    result = no_bare_nan(capsys.readouterr().out)
    assert abs(result["equilibrium"]["pi_star_tau_gap"]) <= 1e-15
    assert all(r["duality_gap"] >= -1e-15 for r in result["algorithms"])
    path = write(tmp_path, "r.csv", "0.5,0.3,0.8\n0.7001,0.5,0.4\n0.2,0.6,0.5\n")
    assert tabular(tmp_path, "--matrix", path) == 2
    message = error_of(capsys)
    assert "off by 0.0001 (tolerance 1e-09)" in message and "--matrix-tolerance" in message
    assert tabular(tmp_path, "--matrix", path, "--matrix-tolerance", "1e-3") == 0
    assert tabular(tmp_path, "--matrix", path, "--matrix-tolerance", "0.5") == 2
    assert "matrix_tolerance must be in (0, 0.01]" in error_of(capsys)


def test_entries_outside_unit_interval_by_rounding(tmp_path, capsys):
    P = rock_paper_scissors()
    P[0, 2], P[2, 0] = 1 + 1e-12, -1e-12  # a pair that sums to 1, each off by rounding
    np.save(tmp_path / "edge.npy", P)
    assert tabular(tmp_path, "--matrix", tmp_path / "edge.npy", "--json") == 0
    result = no_bare_nan(capsys.readouterr().out)
    np.testing.assert_allclose(result["equilibrium"]["nash_lp"], np.full(3, 1 / 3), atol=1e-9)
    game = PreferenceGame(P)
    assert game.P.min() == 0 and game.P.max() == 1
    np.testing.assert_array_equal(game.P + game.P.T, np.ones((3, 3)))
    P[0, 2] = 1 + 1e-6
    np.save(tmp_path / "edge.npy", P)
    assert tabular(tmp_path, "--matrix", tmp_path / "edge.npy") == 2
    assert "P[0, 2] = 1 is outside [0, 1] by 1e-06" in error_of(capsys)


def test_matrix_path_is_a_directory(tmp_path, capsys):
    assert tabular(tmp_path, "--matrix", tmp_path) == 2
    assert "is a directory" in error_of(capsys)


# ---------------------------------------------------------------------------------------------
# Matrix files: .npy.


NAN_DIAGONAL = np.where(np.eye(3, dtype=bool), np.nan, rock_paper_scissors())


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full(3, 0.5), "expected an (n, n) matrix or a (C, n, n) batch with n >= 1, got"),
        (np.full((2, 3), 0.5), "got shape (2, 3)"),
        (np.zeros((0, 0)), "got shape (0, 0)"),
        (np.zeros((1, 1, 2, 2)), "got shape (1, 1, 2, 2)"),
        (rock_paper_scissors().astype(complex), "expected an array of real numbers, got dtype"),
        (rock_paper_scissors() > 0.5, "got dtype bool"),
        (np.array([["a", "b"], ["c", "d"]]), "got dtype <U1"),
        (NAN_DIAGONAL, "P[0, 0] = nan is not finite (3 such entries)"),
        (np.eye(2, dtype=np.int64), "P[0, 0] + P[0, 0] = 2, should be 1"),
        (random_game(3) + 1e-7 * np.triu(np.ones((3, 3)), 1), "off by 1e-07 (tolerance 1e-09)"),
        (rock_paper_scissors() + 1e-7 * np.triu(np.ones((3, 3)), 1), "outside [0, 1] by 1e-07"),
    ],
)
def test_bad_npy(tmp_path, capsys, array, message):
    np.save(tmp_path / "bad.npy", array)
    assert tabular(tmp_path, "--matrix", tmp_path / "bad.npy") == 2
    line = error_of(capsys)
    assert "bad.npy" in line and message in line, line


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable .npy array"),
        (b"not numpy", "not a readable .npy array"),
        ("truncated", "not a readable .npy array"),
        ("npz", "a .npz archive, not a .npy array"),
        ("pickle", "not a readable .npy array"),
    ],
)
def test_unreadable_npy(tmp_path, capsys, content, message):
    path = tmp_path / "bad.npy"
    if content == "truncated":
        np.save(path, random_game(50))
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "npz":
        np.savez(tmp_path / "x.npz", P=rock_paper_scissors())
        path.write_bytes((tmp_path / "x.npz").read_bytes())
    elif content == "pickle":
        np.save(path, np.array([[0.5, {}], [0.5, 0.5]], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    assert tabular(tmp_path, "--matrix", path) == 2
    line = error_of(capsys)
    assert "bad.npy" in line and message in line, line


def test_float32_matrix_is_accepted_at_its_own_rounding(tmp_path, capsys):
    P = random_game(6, seed=2)
    np.save(tmp_path / "p32.npy", P.astype(np.float32))
    assert tabular(tmp_path, "--matrix", tmp_path / "p32.npy", "--json") == 0
    result = no_bare_nan(capsys.readouterr().out)
    assert abs(result["equilibrium"]["pi_star_tau_gap"]) <= 1e-15
    bad = P.astype(np.float32)
    bad[0, 1] += 1e-3  # far beyond float32 rounding
    np.save(tmp_path / "bad32.npy", bad)
    assert tabular(tmp_path, "--matrix", tmp_path / "bad32.npy") == 2
    assert "tolerance 4.76837e-07" in error_of(capsys)


def test_contexts_with_bad_rho(tmp_path, capsys):
    np.save(tmp_path / "ctx.npy", np.stack([random_game(3, 0), random_game(3, 1)]))
    assert tabular(tmp_path, "--matrix", tmp_path / "ctx.npy", "--rho", "0.5", "0.6") == 2
    assert "rho sums to 1.1, not 1" in error_of(capsys)
    assert tabular(tmp_path, "--matrix", tmp_path / "ctx.npy", "--rho", "1") == 2
    assert "rho must have shape (2,), got (1,)" in error_of(capsys)


# ---------------------------------------------------------------------------------------------
# Other arguments.


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iterations", "0"], "iterations must be >= 1, got 0"),
        (["--seed", "-1"], "seed must be >= 0, got -1"),
        (["--algorithms", "nash-md", "nash-md"], "algorithms: ['nash-md'] given more than once"),
        (["--lp-time-limit", "-1"], "lp_time_limit must be >= 0 seconds"),
        (["--tau", "nan"], "must be a finite number"),
        (["--n", "1000000"], "--n 1000000: 1 x 1000000 x 1000000 needs about"),
        (["--game", "three-raters", "--epsilon", "0.5"], "epsilon must be in (-1/6, 1/6)"),
    ],
)
def test_bad_arguments(tmp_path, capsys, args, message):
    assert tabular(tmp_path, *args) == 2
    assert message in error_of(capsys)


def test_huge_steps_stay_distributions(tmp_path, capsys):
    """Steps of 1e300 used to lose the normaliser (log-softmax of logits ~1e300): on
    rock-paper-scissors from uniform, policies summing to 3 and exploitability 1 (at most 1/2
    is possible); the uniform policy is the exact answer (every response has value 1/2)."""
    args = ["--game", "rps", "--tau", "0", "--eta", "1e300", "--json"]
    assert tabular(tmp_path, *args) == 0
    result = no_bare_nan(capsys.readouterr().out)
    for row in result["algorithms"]:
        assert abs(sum(row["policy"]) - 1) < 1e-12 and 0 <= row["exploitability"] <= 0.5
        if row["algorithm"] in ("self-play", "nash-md-constant", "ema-opponent"):
            np.testing.assert_allclose(row["policy"], np.full(3, 1 / 3), rtol=1e-15)
    args = ["--game", "rps", "--eta-fast", "1e300", "--eta-mmd", "1e300", "--tau", "1e12"]
    assert tabular(tmp_path, *args, "--json") == 0  # eta * tau = 1e312 overflows
    result = no_bare_nan(capsys.readouterr().out)
    assert not result["skipped"]
    assert all(r["duality_gap"] <= 1e-12 for r in result["algorithms"])


def test_json_outputs_never_hold_bare_nan(tmp_path, capsys):
    """KL = inf (an iterate with probability 0 where pi*_tau has mass) is null in both the
    printed JSON and results.json."""
    args = ["--n", "30", "--tau", "1e-6", "--algorithms", "best-response-to-mu", "--json"]
    assert tabular(tmp_path, *args) == 0
    printed = no_bare_nan(capsys.readouterr().out)
    saved = no_bare_nan((tmp_path / "out" / "results.json").read_text())
    assert printed["algorithms"][0]["kl"] is None and saved["algorithms"][0]["kl"] is None


def test_closed_stdout_pipe(tmp_path):
    """`nlhf tabular --json | head -c 100`: no traceback; results.json is complete."""
    args = [sys.executable, "-m", "nlhf.cli", "tabular", *FAST, "--n", "200", "--json"]
    args += ["--output-dir", str(tmp_path / "out")]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(100)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    assert no_bare_nan((tmp_path / "out" / "results.json").read_text())["n"] == 200


def test_library_gap_matches_high_precision_reference():
    """duality_gap against a 60-digit evaluation of its definition
    tau log sum mu exp(P pi / tau) + tau KL(pi, mu) - 1/2 over the whole tau range."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    P = random_game(6, seed=5)
    mu = np.random.default_rng(5).dirichlet(np.ones(6))
    pis = [mu, np.random.default_rng(6).dirichlet(np.ones(6)), np.full(6, 1 / 6)]
    for tau in [1e-6, 1e-3, 0.1, 10.0, 1e6, 1e12]:
        game = PreferenceGame(P, mu=mu, tau=tau)
        for pi in pis:
            Pd = [[Decimal(float(x)) for x in row] for row in game.P]
            pd_ = [Decimal(float(x)) for x in pi]
            total = sum(pd_)
            pd_ = [x / total for x in pd_]
            md = [Decimal(float(x)) for x in mu]
            t = Decimal(repr(tau))
            v = [sum(a * b for a, b in zip(row, pd_)) for row in Pd]
            best = t * sum(m * (x / t).exp() for m, x in zip(md, v)).ln()
            reg = t * sum(p * (p / m).ln() for p, m in zip(pd_, md))
            exact = float(best + reg - Decimal("0.5"))
            assert duality_gap(game, pi) == pytest.approx(exact, rel=1e-12, abs=3e-16), tau
