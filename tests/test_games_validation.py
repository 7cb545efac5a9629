"""Every bad input to a preference game gets a ValueError that names the entry and the error."""

import numpy as np
import pytest

from nlhf.cli import main
from nlhf.games import PreferenceGame
from nlhf.games.builders import random_game, rock_paper_scissors
from nlhf.games.command import load_matrix


def test_valid_game_and_defaults():
    game = PreferenceGame(random_game(5), tau=0.1)
    assert game.n == 5 and game.n_contexts == 1 and game.policy_shape == (5,)
    np.testing.assert_allclose(game.mu, np.full(5, 0.2))
    batch = PreferenceGame(np.stack([random_game(4, s) for s in range(3)]), rho=[0.5, 0.3, 0.2])
    assert batch.policy_shape == (3, 4) and batch.mu.shape == (3, 4)


def test_non_square():
    with pytest.raises(ValueError, match="square, got 2 rows and 3 columns"):
        PreferenceGame(np.full((2, 3), 0.5))


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"\(n, n\) matrix or a \(C, n, n\) batch"):
        PreferenceGame(np.full(3, 0.5))


def test_non_finite():
    P = rock_paper_scissors()
    P[0, 2] = np.nan
    with pytest.raises(ValueError, match=r"P\[0, 2\] = nan is not finite"):
        PreferenceGame(P)
    P = rock_paper_scissors()
    P[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"P\[1, 0\] = inf is not finite"):
        PreferenceGame(P)


def test_entry_outside_unit_interval():
    P = rock_paper_scissors()
    P[0, 2], P[2, 0] = 1.25, -0.25
    with pytest.raises(
        ValueError, match=r"P\[(0, 2\] = 1.25|2, 0\] = -0.25) is outside \[0, 1\] by 0.25"
    ):
        PreferenceGame(P)


def test_not_antisymmetric():
    P = rock_paper_scissors()
    P[0, 1] = 0.1  # P[1, 0] = 1, so the pair sums to 1.1
    with pytest.raises(
        ValueError, match=r"P\[(0, 1|1, 0)\] \+ P\[(1, 0|0, 1)\] = 1.1, should be 1.*off by 0.1"
    ):
        PreferenceGame(P)


def test_diagonal_not_half():
    P = rock_paper_scissors()
    P[2, 2] = 0.6
    with pytest.raises(ValueError, match=r"P\[2, 2\] \+ P\[2, 2\] = 1.2.*off by 0.2"):
        PreferenceGame(P)


def test_batch_error_names_context():
    P = np.stack([random_game(3, 0), random_game(3, 1)])
    P[1, 0, 1] += 0.01
    with pytest.raises(ValueError, match=r"P\[1, (0, 1|1, 0)\].*off by 0.01"):
        PreferenceGame(P)


def test_mu_off_simplex():
    P = rock_paper_scissors()
    with pytest.raises(ValueError, match=r"mu sums to 0.9, not 1 \(off by -0.1\)"):
        PreferenceGame(P, mu=[0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match=r"mu\[1\] = -0.1 must be > 0"):
        PreferenceGame(P, mu=[0.6, -0.1, 0.5])
    with pytest.raises(ValueError, match=r"mu\[2\] = 0 must be > 0"):
        PreferenceGame(P, mu=[0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"mu must have shape \(3,\), got \(2,\)"):
        PreferenceGame(P, mu=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"mu\[0\] = nan is not finite"):
        PreferenceGame(P, mu=[np.nan, 0.5, 0.5])


def test_mu_per_context_off_simplex():
    P = np.stack([random_game(3, 0), random_game(3, 1)])
    with pytest.raises(ValueError, match=r"mu\[1\] sums to 1.2"):
        PreferenceGame(P, mu=[[0.2, 0.3, 0.5], [0.4, 0.4, 0.4]])


def test_bad_rho():
    P = np.stack([random_game(3, 0), random_game(3, 1)])
    with pytest.raises(ValueError, match=r"rho sums to 0.8, not 1"):
        PreferenceGame(P, rho=[0.5, 0.3])
    with pytest.raises(ValueError, match=r"rho\[0\] = -0.5 is negative"):
        PreferenceGame(P, rho=[-0.5, 1.5])
    with pytest.raises(ValueError, match=r"rho must have shape \(2,\), got \(3,\)"):
        PreferenceGame(P, rho=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="rho .* needs a \\(C, n, n\\) batch"):
        PreferenceGame(random_game(3), rho=[1.0])


def test_bad_tau():
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        PreferenceGame(rock_paper_scissors(), tau=-0.1)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_names_reads(tmp_path):
    path = _write(tmp_path, "p.csv", "a,b,c\n0.5,0,1\n1,0.5,0\n0,1,0.5\n")
    P, names = load_matrix(path)
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(P, rock_paper_scissors())


def test_bad_csv_files(tmp_path):
    bad_cell = _write(tmp_path, "cell.csv", "0.5,0.4\n0.6,oops\n")
    with pytest.raises(ValueError, match=r"cell.csv, line 2, column 2: 'oops' is not a number"):
        load_matrix(bad_cell)
    ragged = _write(tmp_path, "ragged.csv", "0.5,0.4,0.3\n0.6,0.5\n0.7,0.5,0.5\n")
    with pytest.raises(ValueError, match=r"ragged.csv, line 2: 2 cells, but line 1 has 3"):
        load_matrix(ragged)
    wide = _write(tmp_path, "wide.csv", "0.5,0.4,0.3\n0.6,0.5,0.2\n")
    with pytest.raises(ValueError, match=r"wide.csv: P must be square, got 2 rows and 3 columns"):
        load_matrix(wide)
    empty = _write(tmp_path, "empty.csv", "\n")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        load_matrix(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_matrix(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown matrix format '.xlsx'"):
        load_matrix(_write(tmp_path, "p.xlsx", "x"))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="garbage.npy: not a readable .npy array"):
        load_matrix(garbage)


def test_cli_reports_bad_matrix_with_file_and_entry(tmp_path, capsys):
    path = _write(tmp_path, "asym.csv", "0.5,0.7\n0.4,0.5\n")
    code = main(["tabular", "--matrix", str(path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "asym.csv" in err and "P[0, 1] + P[1, 0] = 1.1" in err and "off by 0.1" in err
