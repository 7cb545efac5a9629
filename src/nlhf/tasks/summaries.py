"""Simulated summary raters: the built-in task where the truth is known (docs/task.md).

The stand-in for the paper's TL;DR experiment (Munos et al. 2024, §7): documents, summaries, a
population of human raters whose pairwise preferences are *non-transitive*, and a judge equal to
the exact population preference (the stand-in for the paper's PaLM 2 judge).

- A **document** is 5-12 content words from one topic of a small lexicon (sometimes one
  off-topic word); 1-3 of its words are repeated, and repeated words are *salient*.
- A **summary** is a style word (``brief``, ``list`` or ``story``), then content words, then EOS.
- **Quality**, shared by all raters: salient words covered, minus hallucinated words (not in the
  document), repeats, excess length, and a penalty when the summary has no style word.
- Three **rater groups** with weights (default 0.40, 0.35, 0.25) whose style rankings form a
  Condorcet cycle (brief > list > story; list > story > brief; story > brief > list).
  Group utility ``u_g(y) = quality(y) + kappa * rank_g(style(y))``; a group prefers ``y`` to
  ``y'`` with probability ``sigmoid((u_g(y) - u_g(y')) / T)``; raters also lapse (answer at
  random) with a small probability. The population preference is the weight-average (paper §3:
  a preference that no reward model can represent, because it is not transitive).
- **Demonstrations** for SFT are imperfect: salient words are missed, words are hallucinated or
  repeated, and the style follows a prior that is *not* the Nash mixture of the style game.

``SimulatedRaters`` implements the ``Judge`` protocol (``prob`` is the exact population
preference; ``sample_labels`` draws a rater group, then a 0/1 label). It accepts any text a
policy emits: unknown words count as hallucinations and a missing style word is penalised, it
never raises on content.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

STYLES: tuple[str, ...] = ("brief", "list", "story")

# Topics of the closed lexicon. Words are unique across topics; every word is one token.
TOPICS: dict[str, tuple[str, ...]] = {
    "weather": (
        "rain", "storm", "wind", "cloud", "snow", "sun", "fog", "thunder", "frost", "heat",
    ),
    "market": (
        "price", "stock", "bank", "trade", "profit", "loss", "share", "bond", "tax", "rate",
    ),
    "sport": (
        "goal", "team", "coach", "match", "score", "league", "player", "win", "cup", "field",
    ),
    "health": (
        "doctor", "virus", "vaccine", "clinic", "fever", "patient", "nurse", "drug", "test",
        "care",
    ),
    "science": (
        "atom", "cell", "gene", "laser", "orbit", "planet", "energy", "lab", "data", "theory",
    ),
    "travel": (
        "train", "flight", "hotel", "ticket", "road", "port", "map", "tour", "beach", "visa",
    ),
}  # fmt: skip

# Condorcet cycle of style tastes: each group's ranking, best first.
DEFAULT_RANKINGS: tuple[tuple[str, ...], ...] = (
    ("brief", "list", "story"),
    ("list", "story", "brief"),
    ("story", "brief", "list"),
)

_SPECIAL = re.compile(r"<[^<>\s]*>")


@dataclass
class SummaryTaskConfig:
    """The knobs of the simulated summary-raters task (all have realistic defaults)."""

    seed: int = 0
    """seed of the task itself (documents and demonstrations are drawn from seeded generators)"""
    group_weights: list[float] = field(default_factory=lambda: [0.40, 0.35, 0.25])
    """share of each rater group (brief>list>story; list>story>brief; story>brief>list)"""
    kappa: float = 3.0
    """utility of one step up a group's style ranking (a salient word covered is worth 1.0)"""
    temperature: float = 0.5
    """rater noise: a group prefers y with probability sigmoid((u(y) - u(y')) / temperature)"""
    lapse: float = 0.05
    """probability that a rater answers at random (included in the exact preference)"""
    salient_weight: float = 1.0
    """quality per salient (repeated) document word covered by the summary"""
    hallucination_penalty: float = 1.0
    """quality lost per content word that is not in the document"""
    repeat_penalty: float = 0.5
    """quality lost per repeated content word"""
    max_content_words: int = 4
    """content words beyond this many cost length_penalty each"""
    length_penalty: float = 0.5
    """quality lost per content word beyond max_content_words"""
    no_style_penalty: float = 1.0
    """quality lost when the summary does not start with a style word"""
    demo_style_prior: list[float] = field(default_factory=lambda: [0.20, 0.50, 0.30])
    """style frequencies of the human demonstrations (brief, list, story); not the Nash mixture"""
    demo_cover_prob: float = 0.6
    """probability that a demonstration mentions each salient word"""
    demo_other_prob: float = 0.25
    """probability that a demonstration mentions each non-salient document word"""
    demo_hallucination_prob: float = 0.3
    """probability that a demonstration adds a plausible word that is not in the document"""
    demo_repeat_prob: float = 0.15
    """probability that a demonstration repeats one of its words"""

    def __post_init__(self) -> None:
        _check_distribution(self.group_weights, "group_weights", len(DEFAULT_RANKINGS))
        _check_distribution(self.demo_style_prior, "demo_style_prior", len(STYLES))
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.lapse < 1:
            raise ValueError(f"lapse must be in [0, 1), got {self.lapse}")
        if self.kappa < 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.max_content_words < 1:
            raise ValueError(f"max_content_words must be >= 1, got {self.max_content_words}")
        for name in ("demo_cover_prob", "demo_other_prob", "demo_hallucination_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0 <= self.demo_repeat_prob <= 1:
            raise ValueError(f"demo_repeat_prob must be in [0, 1], got {self.demo_repeat_prob}")


def _check_distribution(values: Sequence[float], name: str, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values, got {len(values)}")
    if any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must be non-negative and sum to 1, got {list(values)}")


@dataclass(frozen=True)
class ParsedSummary:
    """A response split into its style word (or None) and its content words."""

    style: str | None
    content: tuple[str, ...]


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text`` with special tokens (``<sep>``, ``<eos>``, ...) removed."""
    return _SPECIAL.sub(" ", str(text)).lower().split()


def parse_summary(text: str) -> ParsedSummary:
    """Split a response into style word and content words; never raises."""
    words = words_of(text)
    if words and words[0] in STYLES:
        return ParsedSummary(words[0], tuple(words[1:]))
    return ParsedSummary(None, tuple(words))


def document_of(prompt: str) -> list[str]:
    """The document words of a prompt (the text before ``<sep>``, special tokens removed)."""
    return words_of(str(prompt).split("<sep>")[0])


class SummaryTask:
    """The simulated summary-raters task (see the module docstring).

    ``SummaryTask(seed=0, kappa=1.2, ...)`` takes the fields of ``SummaryTaskConfig`` as keyword
    arguments; ``SummaryTask.from_config(cfg)`` takes the dataclass.
    """

    styles: list[str] = list(STYLES)

    def __init__(self, seed: int = 0, **kwargs) -> None:
        self.config = SummaryTaskConfig(seed=seed, **kwargs)
        self.topics = TOPICS
        self.rankings = DEFAULT_RANKINGS
        self.vocabulary: list[str] = list(STYLES) + [w for ws in TOPICS.values() for w in ws]
        self._word_topic = {w: t for t, ws in TOPICS.items() for w in ws}

    @classmethod
    def from_config(cls, cfg: SummaryTaskConfig) -> SummaryTask:
        return cls(**dataclasses.asdict(cfg))

    # ------------------------------------------------------------------ text
    def tokenizer(self):
        """Word-level tokenizer over the closed vocabulary (``nlhf.models.tokenizer``)."""
        from nlhf.models.tokenizer import build_tokenizer

        return build_tokenizer([" ".join(self.vocabulary)], kind="word")

    def _rng(self, seed: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, stream, seed])

    def prompts(self, n: int, seed: int = 0) -> list[str]:
        """``n`` documents as prompts: ``"<bos> w1 w2 ... <sep>"`` (deterministic in ``seed``)."""
        if n < 0:
            raise ValueError(f"number of prompts must be >= 0, got {n}")
        rng = self._rng(seed, 1)
        return [self._document(rng) for _ in range(n)]

    def _document(self, rng: np.random.Generator) -> str:
        topic = list(self.topics)[rng.integers(len(self.topics))]
        pool = list(self.topics[topic])
        n_distinct = int(rng.integers(4, 8))  # 4..7 distinct words
        chosen = [pool[i] for i in rng.choice(len(pool), size=n_distinct, replace=False)]
        if rng.random() < 0.3:  # one off-topic word
            others = [w for t, ws in self.topics.items() if t != topic for w in ws]
            chosen[-1] = others[rng.integers(len(others))]
        n_salient = int(rng.integers(1, 4))  # 1..3 repeated words
        words = list(chosen)
        for w in chosen[:n_salient]:
            words += [w] * int(rng.integers(1, 3))  # 2 or 3 occurrences in total
        words = [words[i] for i in rng.permutation(len(words))]
        return "<bos> " + " ".join(words) + " <sep>"

    def salient_words(self, prompt: str) -> list[str]:
        """Document words that occur at least twice (the words a good summary covers)."""
        counts = Counter(document_of(prompt))
        return sorted(w for w, c in counts.items() if c >= 2)

    # --------------------------------------------------------------- scoring
    def style_of(self, response: str) -> str:
        """The style word a response starts with, or ``"none"``."""
        return parse_summary(response).style or "none"

    def quality(self, prompt: str, response: str) -> float:
        """Quality shared by all raters (higher is better); defined for any text."""
        cfg = self.config
        doc = Counter(document_of(prompt))
        salient = {w for w, c in doc.items() if c >= 2}
        parsed = parse_summary(response)
        content = parsed.content
        covered = len(salient & set(content))
        hallucinated = sum(1 for w in content if w not in doc)
        repeats = len(content) - len(set(content))
        excess = max(0, len(content) - cfg.max_content_words)
        q = (
            cfg.salient_weight * covered
            - cfg.hallucination_penalty * hallucinated
            - cfg.repeat_penalty * repeats
            - cfg.length_penalty * excess
        )
        if parsed.style is None:
            q -= cfg.no_style_penalty
        return float(q)

    def style_scores(self) -> np.ndarray:
        """(G, S+1) style utility ``kappa * rank`` per group; the last column is "no style" (0)."""
        n_styles = len(STYLES)
        out = np.zeros((len(self.rankings), n_styles + 1))
        for g, ranking in enumerate(self.rankings):
            for pos, style in enumerate(ranking):
                out[g, STYLES.index(style)] = self.config.kappa * (n_styles - 1 - pos)
        return out

    def utilities(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(B, G) group utilities ``quality + kappa * rank_g(style)``."""
        scores = self.style_scores()
        out = np.empty((len(responses), scores.shape[0]))
        for i, (p, r) in enumerate(zip(prompts, responses)):
            style = parse_summary(r).style
            col = STYLES.index(style) if style is not None else len(STYLES)
            out[i] = self.quality(p, r) + scores[:, col]
        return out

    def group_probs(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """(B, G) probability that a rater of each group prefers ``a`` (lapses included)."""
        ua = self.utilities(prompts, responses_a)
        ub = self.utilities(prompts, responses_b)
        p = 1.0 / (1.0 + np.exp(-(ua - ub) / self.config.temperature))
        return (1 - self.config.lapse) * p + self.config.lapse * 0.5

    # ------------------------------------------------------------ style game
    def style_game(self) -> np.ndarray:
        """(S, S) ``P(style i > style j)`` for two summaries of equal quality."""
        scores = self.style_scores()[:, : len(STYLES)]  # (G, S)
        diff = (scores[:, :, None] - scores[:, None, :]) / self.config.temperature  # (G, S, S)
        p = 1.0 / (1.0 + np.exp(-diff))
        p = (1 - self.config.lapse) * p + self.config.lapse * 0.5
        return np.einsum("g,gij->ij", np.asarray(self.config.group_weights), p)

    def nash_style_mixture(self) -> np.ndarray:
        """Exact Nash mixture (S,) of the style game, solved by ``nlhf.games.solve_nash_lp``."""
        from nlhf.games import solve_nash_lp

        pi, _ = solve_nash_lp(self.style_game())
        return np.asarray(pi, dtype=float)

    # ---------------------------------------------------------- demonstrations
    def demonstrations(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
        """Imperfect human-like summaries (one per prompt) for SFT, without EOS."""
        cfg = self.config
        rng = self._rng(seed, 2)
        out = []
        for prompt in prompts:
            doc = document_of(prompt)
            counts = Counter(doc)
            salient = [w for w in dict.fromkeys(doc) if counts[w] >= 2]
            others = [w for w in dict.fromkeys(doc) if counts[w] < 2]
            style = STYLES[rng.choice(len(STYLES), p=cfg.demo_style_prior)]
            content = [w for w in salient if rng.random() < cfg.demo_cover_prob]
            content += [w for w in others if rng.random() < cfg.demo_other_prob]
            if rng.random() < cfg.demo_hallucination_prob:
                topics = Counter(self._word_topic[w] for w in doc if w in self._word_topic)
                topic = topics.most_common(1)[0][0] if topics else None
                pool = [w for w in self.topics.get(topic, ()) if w not in counts]
                pool = pool or [w for w in self.vocabulary[len(STYLES) :] if w not in counts]
                content.append(pool[rng.integers(len(pool))])
            if not content:
                content = [doc[rng.integers(len(doc))]] if doc else []
            # people summarise in document order; a hallucinated word lands anywhere
            order = {w: i for i, w in reversed(list(enumerate(doc)))}
            content.sort(key=lambda w: order.get(w, rng.integers(len(doc) + 1) - 0.5))
            if content and rng.random() < cfg.demo_repeat_prob:
                content.append(content[rng.integers(len(content))])
            out.append(" ".join([style, *content]))
        return out

    def judge(self) -> SimulatedRaters:
        """The exact population preference (the evaluation judge)."""
        return SimulatedRaters(self)


class SimulatedRaters:
    """The population of raters as a ``Judge``.

    ``prob`` is the exact population preference ``sum_g w_g P_g(a > b)``; ``sample_labels`` draws
    a rater group by weight, then a 0/1 label from that group (a labelled human comparison).
    """

    def __init__(self, task: SummaryTask):
        self.task = task
        self.weights = np.asarray(task.config.group_weights, dtype=float)

    @torch.no_grad()
    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        _check_batch(prompts, responses_a, responses_b)
        p = self.task.group_probs(prompts, responses_a, responses_b) @ self.weights  # (B,)
        return torch.as_tensor(p, dtype=torch.float32)

    def sample_labels_with_groups(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """0/1 labels (1 = ``a`` preferred) and the rater group (B,) that gave each one."""
        _check_batch(prompts, responses_a, responses_b)
        group_p = torch.as_tensor(self.task.group_probs(prompts, responses_a, responses_b))
        weights = torch.as_tensor(self.weights).expand(len(prompts), -1)  # (B, G)
        if len(prompts) == 0:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        groups = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)
        p = group_p.gather(1, groups[:, None]).squeeze(1)
        labels = torch.bernoulli(p, generator=generator).float()
        return labels, groups

    def sample_labels(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """0/1 labels from sampled raters: a group by weight, then Bernoulli(P_group)."""
        return self.sample_labels_with_groups(prompts, responses_a, responses_b, generator)[0]

    def eval_prompts(self, n: int, seed: int = 0) -> list[str]:
        """``n`` fresh documents of the task for a tournament (their own prompt stream)."""
        from nlhf.tasks.builtin import BUILTIN_EVAL_PROMPT_SEED

        return self.task.prompts(n, seed=BUILTIN_EVAL_PROMPT_SEED + seed)

    def report_sections(self, result, out_dir):
        """The task's report material for a tournament: each policy's style shares against the
        style game's Nash mixture, style exploitability, quality (``nlhf.eval.report``'s
        ``report_extras`` hook)."""
        from nlhf.tasks.builtin import style_sections

        return style_sections(result, self.task, out_dir)


def _check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(
            f"judge needs equal batch sizes, got {len(prompts)} prompts, "
            f"{len(a)} responses_a, {len(b)} responses_b"
        )
