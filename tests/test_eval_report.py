"""Intervals, the pool summary, figures and the Markdown report (no models needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from nlhf.eval.intervals import bootstrap_interval, clopper_pearson, t_interval
from nlhf.eval.plots import read_metrics
from nlhf.eval.report import matrix_table, report_extras, write_report
from nlhf.eval.tournament import TournamentResult, pool_summary
from nlhf.tasks.plots import plot_style_distribution


def test_clopper_pearson_matches_scipy_and_the_paper():
    for k, n in [(0, 10), (3, 10), (10, 10), (1000, 2000), (1234, 2000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        np.testing.assert_allclose(clopper_pearson(k, n), (ci.low, ci.high), atol=1e-10)
    lo, hi = clopper_pearson(1000, 2000)
    assert 0.021 < (hi - lo) / 2 < 0.023  # the paper's ±0.023 on 2,000 prompts
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(11, 10)


def test_clopper_pearson_exact_coverage():
    """Coverage = sum of Binomial(n, p) pmf over k whose interval contains p: >= 95% always."""
    n = 40
    intervals = [clopper_pearson(k, n) for k in range(n + 1)]
    for p in np.linspace(0.01, 0.99, 37):
        pmf = stats.binom.pmf(np.arange(n + 1), n, p)
        cover = sum(w for w, (lo, hi) in zip(pmf, intervals) if lo <= p <= hi)
        assert cover >= 0.95 - 1e-12


def test_intervals_mirror_and_contain_the_mean():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 3, size=300)
    lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, df=x.size - 1, loc=x.mean(), scale=stats.sem(x))
    np.testing.assert_allclose((lo, hi), ref, atol=1e-12)
    lo1, hi1 = t_interval(1 - x)
    np.testing.assert_allclose((lo1, hi1), (1 - hi, 1 - lo), atol=1e-12)
    k = 123
    np.testing.assert_allclose(
        clopper_pearson(300 - k, 300), 1 - np.array(clopper_pearson(k, 300))[::-1]
    )
    b_lo, b_hi = bootstrap_interval(x, seed=1)
    assert b_lo <= x.mean() <= b_hi and abs((b_hi - b_lo) - (hi - lo)) < 0.01
    assert t_interval(np.full(5, 0.3)) == pytest.approx((0.3, 0.3))


def transitive_pool() -> np.ndarray:
    """a < b < c: M[row, col] = P(col > row)."""
    return np.array([[0.5, 0.7, 0.8], [0.3, 0.5, 0.6], [0.2, 0.4, 0.5]])


def test_pool_summary_of_a_transitive_pool():
    s = pool_summary(transitive_pool(), ["a", "b", "c"])
    np.testing.assert_allclose(s["meta_nash"], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(s["worst_case"], [0.2, 0.4, 0.6])
    np.testing.assert_allclose(s["mean_win_rate"], [0.25, 0.55, 0.7])
    np.testing.assert_allclose(s["exploitability"], [0.3, 0.1, 0.0], atol=1e-12)
    assert s["worst_opponent"] == ["c", "c", "b"]
    assert s["meta_nash_exploitability"] == pytest.approx(0.0, abs=1e-9)


def make_result(M: np.ndarray, names: list[str]) -> TournamentResult:
    n = 400
    lo, hi = np.full_like(M, 0.5), np.full_like(M, 0.5)
    for r in range(len(names)):
        for c in range(len(names)):
            if r != c:
                lo[r, c], hi[r, c] = clopper_pearson(round(M[r, c] * n), n)
    prompts = [f"<bos> doc {i} <sep>" for i in range(n)]
    samples = {name: [f"{name} says {i}" for i in range(n)] for name in names}
    return TournamentResult(
        names=names, paths=[f"runs/{x}" for x in names], prompts=prompts, samples=samples,
        matrix=M, lower=lo, upper=hi, labels="sampled", interval="t", confidence=0.95,
        settings={"judge": "test", "temperature": 1.0, "max_new_tokens": 8, "seed": 0},
        timings={"sampling_s": 1.0, "judging_s": 0.5}, **pool_summary(M, names),
    )  # fmt: skip


def test_report_has_every_number_and_figure(tmp_path):
    names = ["a", "b", "c|pipe"]
    result = make_result(transitive_pool(), names)
    run = tmp_path / "run_b"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as f:
        for t in range(50):
            f.write(json.dumps({"step": t, "pref/mean": 0.5 + t / 200, "kl/ref": t / 10}) + "\n")
    style_png = plot_style_distribution(
        names, np.array([[1, 0, 0], [0.2, 0.5, 0.3], [0, 0, 1.0]]), ["x", "y", "z"],
        np.array([0.5, 0.2, 0.3]), tmp_path / "elsewhere" / "styles.png",
    )  # fmt: skip
    out = tmp_path / "report"
    path = write_report(
        result, out, training_curves={"b": run, "ghost": tmp_path / "none"},
        sections=[("Reading", "The **reading** goes here.")], figures={"Styles": style_png},
        lead_sections=[("Headline", "First things first.")],
    )  # fmt: skip
    text = path.read_text()
    assert text.index("## Headline") < text.index("## Preference matrix") < text.index("## Reading")
    for expected in [
        "| **a** | — | **0.700 [",  # row a: P(b > a) = 0.7, bold: above 1/2
        "c\\|pipe",  # table cells are escaped
        "## Reading",
        "The **reading** goes here.",
        "![preference matrix](heatmap.png)",
        "![Styles](styles.png)",
        "![training curves](training_curves.png)",
        "Clopper-Pearson",
        "The meta-game's Nash equilibrium is the pure policy c|pipe (1.00)",
        "**c|pipe** beats every other policy",
    ]:
        assert expected in text, expected
    for f in ["heatmap.png", "styles.png", "training_curves.png", "matrix.csv", "policies.csv"]:
        assert (out / f).stat().st_size > 0, f
    back = TournamentResult.from_json(out / "tournament.json")
    np.testing.assert_array_equal(back.matrix, result.matrix)
    np.testing.assert_array_equal(back.lower, result.lower)
    assert back.names == names
    assert len((out / "samples.jsonl").read_text().splitlines()) == result.n_prompts
    policies = (out / "policies.csv").read_text().splitlines()
    assert policies[0].startswith("policy,path,mean_win_rate") and len(policies) == 4
    table = matrix_table(result).splitlines()
    assert len(table) == 2 + len(names)
    assert sum(line.count("**0.") for line in table[2:]) == 3  # three intervals entirely above 1/2


def test_report_extras_hook(tmp_path):
    """A judge (or any object) with report_sections(result, out_dir) contributes sections."""
    result = make_result(transitive_pool(), ["a", "b", "c"])

    class TaskJudge:
        def report_sections(self, res, out_dir):
            assert res is result and out_dir == tmp_path
            return [("Task", f"{len(res.names)} policies")], {"Fig": tmp_path / "f.png"}

    assert report_extras(TaskJudge(), result, tmp_path) == (
        [("Task", "3 policies")],
        {"Fig": tmp_path / "f.png"},
    )
    assert report_extras(object(), result, tmp_path) == ([], {})


def test_report_errors_are_clear(tmp_path):
    result = make_result(transitive_pool(), ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="figure 'Styles'"):
        write_report(result, tmp_path, figures={"Styles": tmp_path / "missing.png"})
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(bad)
    with pytest.raises(ValueError, match="not a tournament result"):
        TournamentResult.from_json(bad)
    with pytest.raises(ValueError, match="dist has shape"):
        plot_style_distribution(["a"], np.ones((2, 3)) / 3, ["x", "y", "z"], np.ones(3) / 3, bad)
