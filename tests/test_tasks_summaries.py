"""The simulated summary-raters task: judge antisymmetry, label sampling, the style game."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from nlhf.models.judge import Judge, sample_labels
from nlhf.tasks.summaries import STYLES, SummaryTask, SummaryTaskConfig, parse_summary

WEIRD = ["", "   ", "<eos>", "zzz ??? !!", "story story story", "brief " + "rain " * 40, "é ü 漢字"]


@pytest.fixture(scope="module")
def task() -> SummaryTask:
    return SummaryTask(seed=0)


def test_prompts_are_deterministic_documents(task):
    a, b = task.prompts(50, seed=3), task.prompts(50, seed=3)
    assert a == b and a != task.prompts(50, seed=4)
    vocab = set(task.vocabulary)
    for p in a:
        assert p.startswith("<bos> ") and p.endswith(" <sep>")
        words = p.split()[1:-1]
        assert 5 <= len(words) <= 13 and set(words) <= vocab
        assert 1 <= len(task.salient_words(p)) <= 3


def test_tokenizer_round_trips_every_word(task, tmp_path):
    tok = task.tokenizer()
    prompt = task.prompts(1, seed=0)[0]
    demo = task.demonstrations([prompt], seed=0)[0]
    ids = tok(prompt + " " + demo + " <eos>")["input_ids"]
    assert tok.unk_token_id not in ids
    assert len(ids) == len(prompt.split()) + len(demo.split()) + 1
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[ids.index(tok.sep_token_id) + 1 :], skip_special_tokens=True) == demo
    for word in task.vocabulary:
        assert len(tok(word)["input_ids"]) == 1
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)(prompt)["input_ids"] == tok(prompt)["input_ids"]


def test_quality_orders_summaries(task):
    prompt = "<bos> rain storm rain wind snow snow fog <sep>"
    assert task.salient_words(prompt) == ["rain", "snow"]
    good = task.quality(prompt, "brief rain snow")
    assert good == 2.0
    assert task.quality(prompt, "brief rain") == 1.0
    assert task.quality(prompt, "brief rain snow bank") == 1.0  # hallucination
    assert task.quality(prompt, "brief rain snow rain") == 1.5  # repeat
    assert task.quality(prompt, "brief rain snow wind fog storm") == 1.5  # one word too many
    assert task.quality(prompt, "rain snow") == 1.0  # no style word
    assert parse_summary("list rain snow").style == "list"
    assert task.style_of("rain snow") == "none" and task.style_of("story rain") == "story"


def test_exact_judge_is_antisymmetric_and_robust(task):
    judge = task.judge()
    assert isinstance(judge, Judge)
    prompts = task.prompts(40, seed=1)
    a = task.demonstrations(prompts, seed=1)
    b = task.demonstrations(prompts, seed=2)
    b[: len(WEIRD)] = WEIRD
    p_ab, p_ba = judge.prob(prompts, a, b), judge.prob(prompts, b, a)
    assert p_ab.shape == (40,) and p_ab.dtype == torch.float32
    torch.testing.assert_close(p_ab + p_ba, torch.ones(40))
    torch.testing.assert_close(judge.prob(prompts, a, a), torch.full((40,), 0.5))
    assert torch.all((p_ab > 0) & (p_ab < 1))
    # garbage loses to a reasonable summary, and never crashes
    assert torch.all(p_ab[: len(WEIRD) - 1] > 0.5)
    with pytest.raises(ValueError, match="equal batch sizes"):
        judge.prob(prompts, a, b[:3])


def test_sampled_labels_match_prob(task):
    judge = task.judge()
    prompts = task.prompts(4, seed=5)
    a = task.demonstrations(prompts, seed=5)
    b = ["story " + " ".join(task.salient_words(p)) for p in prompts]
    n = 6000
    P, A, B = prompts * n, a * n, b * n
    gen = torch.Generator().manual_seed(0)
    labels, groups = judge.sample_labels_with_groups(P, A, B, generator=gen)
    freq = labels.reshape(n, 4).mean(0)
    exact = judge.prob(prompts, a, b)
    assert torch.all((freq - exact).abs() < 4 * torch.sqrt(exact * (1 - exact) / n) + 1e-3)
    share = torch.bincount(groups, minlength=3).double() / len(groups)
    assert np.allclose(share.numpy(), task.config.group_weights, atol=0.01)
    # the generic helper uses the judge's own sampler
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sample_labels(judge, P, A, B, generator=gen), labels)


def test_style_game_is_a_condorcet_cycle(task):
    G = task.style_game()
    np.testing.assert_allclose(G + G.T, np.ones((3, 3)))
    brief, list_, story = (STYLES.index(s) for s in ("brief", "list", "story"))
    assert G[brief, list_] > 0.5 and G[list_, story] > 0.5 and G[story, brief] > 0.5


def test_nash_style_mixture_is_the_exact_nash(task):
    pi = task.nash_style_mixture()
    G = task.style_game()
    assert pi.shape == (3,) and np.isclose(pi.sum(), 1) and np.all(pi > 0.05)
    assert (pi @ G).min() >= 0.5 - 1e-7  # no style beats the mixture
    assert np.abs(pi - np.asarray(task.config.demo_style_prior)).max() > 0.1
    sharp = SummaryTask(temperature=1e-3, lapse=0.0)  # docs/task.md: sharp tastes
    np.testing.assert_allclose(sharp.nash_style_mixture(), [0.5, 0.2, 0.3], atol=1e-6)


def test_demonstrations_are_imperfect_with_the_style_prior(task):
    prompts = task.prompts(3000, seed=7)
    demos = task.demonstrations(prompts, seed=7)
    assert demos == task.demonstrations(prompts, seed=7)
    counts = Counter(task.style_of(d) for d in demos)
    freq = np.array([counts[s] for s in STYLES]) / len(demos)
    np.testing.assert_allclose(freq, task.config.demo_style_prior, atol=0.03)
    quality = np.array([task.quality(p, d) for p, d in zip(prompts, demos)])
    ideal = np.array([task.quality(p, "brief " + " ".join(task.salient_words(p))) for p in prompts])
    assert quality.mean() < ideal.mean() - 0.5  # room to improve
    assert (quality < ideal).mean() > 0.5


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="group_weights"):
        SummaryTaskConfig(group_weights=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="temperature"):
        SummaryTask(temperature=0.0)
    with pytest.raises(ValueError, match="demo_style_prior"):
        SummaryTask(demo_style_prior=[1.0, 0.0])


def test_builtin_judge_scheme(tmp_path):
    from nlhf.models.judges import resolve_judge
    from nlhf.tasks.builtin import BUILTIN_EVAL_PROMPT_SEED, register
    from nlhf.tasks.summaries import SimulatedRaters

    register()
    judge = resolve_judge("builtin")
    assert isinstance(judge, SimulatedRaters) and judge.task.config == SummaryTaskConfig()
    demo = tmp_path / "demo.yaml"  # a demo config: the task's settings are its task: section
    demo.write_text("output_dir: runs/x\ntask:\n  kappa: 1.5\n  lapse: 0.0\n")
    judge = resolve_judge(f"builtin:{demo}")
    assert judge.task.config.kappa == 1.5 and judge.task.config.lapse == 0.0
    assert judge.eval_prompts(5, seed=1) == judge.task.prompts(5, BUILTIN_EVAL_PROMPT_SEED + 1)
    demo.write_text("task:\n  kapa: 1.5\n")
    with pytest.raises(ValueError, match="kapa"):
        resolve_judge(f"builtin:{demo}")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        resolve_judge(f"builtin:{tmp_path / 'missing.yaml'}")


def test_eval_and_models_never_import_tasks():
    """The import graph runs one way: tasks may use eval and models, never the reverse."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "nlhf"
    for package in ("eval", "models", "games", "data", "train"):
        for file in (src / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                bad = [n for n in names if n == "nlhf.tasks" or n.startswith("nlhf.tasks.")]
                assert not bad, f"{file.relative_to(src)} imports {bad}"
