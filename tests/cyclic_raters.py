"""Test data: a small comparison set with non-transitive (cyclic) majority preferences.

Deliberately simpler than the built-in task (``nlhf.tasks.summaries``, docs/task.md): sharp
tastes, no quality, no lapses, so the exact majorities are round numbers the tests can assert.

Paper §3.2: with three rater groups whose rankings form a Condorcet cycle, the population
preference is non-transitive, so no reward model (Bradley-Terry) can represent it, while a
pairwise preference model can. Here each prompt is a short document and has three responses, one
per style (``brief``, ``list``, ``story``); the groups rank the styles

    group 1 (weight 0.40): brief > list  > story
    group 2 (weight 0.35): list  > story > brief
    group 3 (weight 0.25): story > brief > list

so the population prefers brief over list (0.65), list over story (0.75) and story over brief
(0.60): a cycle. A labelled comparison draws a group by weight, then the group's 0/1 choice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from nlhf.data.schema import Comparison

STYLES = ("brief", "list", "story")
GROUP_RANKINGS = (
    ("brief", "list", "story"),
    ("list", "story", "brief"),
    ("story", "brief", "list"),
)
GROUP_WEIGHTS = (0.40, 0.35, 0.25)
LEXICON = [
    "river",
    "bank",
    "loan",
    "storm",
    "harbor",
    "ship",
    "vote",
    "council",
    "school",
    "teacher",
    "garden",
    "flower",
    "market",
    "price",
    "doctor",
    "clinic",
    "train",
    "station",
    "forest",
    "fire",
    "music",
    "concert",
    "bridge",
    "road",
    "farmer",
    "harvest",
]


def group_prefers(group: int, style_a: str, style_b: str) -> bool:
    """Whether rater ``group`` prefers a response of ``style_a`` over one of ``style_b``."""
    ranking = GROUP_RANKINGS[group]
    return ranking.index(style_a) < ranking.index(style_b)


def population_prob(style_a: str, style_b: str, weights: Sequence[float] = GROUP_WEIGHTS) -> float:
    """Exact population preference ``P(style_a > style_b)`` (0.5 for equal styles)."""
    if style_a == style_b:
        return 0.5
    return float(
        sum(w for g, w in enumerate(weights) if group_prefers(g, style_a, style_b))
    ) / float(sum(weights))


def style_of(response: str) -> str:
    """The style of a synthetic response (its first word)."""
    return response.split()[0]


def cyclic_responses(prompt_words: Sequence[str], rng: random.Random) -> dict[str, str]:
    """One response per style for a document: the style word then a few document words."""
    out = {}
    for style in STYLES:
        k = {"brief": 1, "list": 3, "story": 2}[style]
        words = rng.sample(list(prompt_words), k)
        if style == "story":
            words = ["once", *words]
        out[style] = " ".join([style, *words])
    return out


def cyclic_comparisons(
    n_prompts: int = 200,
    comparisons_per_prompt: int = 6,
    seed: int = 0,
    weights: Sequence[float] = GROUP_WEIGHTS,
    soft_labels: bool = False,
) -> list[Comparison]:
    """Comparisons from three rater groups with cyclic tastes (see the module docstring).

    Each prompt gets ``comparisons_per_prompt`` comparisons over its three responses, the pair
    and the order drawn uniformly; ``rater`` is the group (``"group1"``...). ``soft_labels``:
    label = the exact population probability instead of a sampled group's 0/1 choice.
    """
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights: need three non-negative group weights, got {weights}")
    rng = random.Random(seed)
    pairs = [("brief", "list"), ("list", "story"), ("story", "brief")]
    out = []
    for _ in range(n_prompts):
        words = rng.sample(LEXICON, 5)
        prompt = "summarize: " + " ".join(words)
        responses = cyclic_responses(words, rng)
        for _ in range(comparisons_per_prompt):
            sa, sb = rng.choice(pairs)
            if rng.random() < 0.5:
                sa, sb = sb, sa
            group = rng.choices(range(3), weights=weights)[0]
            label = (
                population_prob(sa, sb, weights)
                if soft_labels
                else float(group_prefers(group, sa, sb))
            )
            out.append(
                Comparison(
                    prompt,
                    responses[sa],
                    responses[sb],
                    label,
                    rater=None if soft_labels else f"group{group + 1}",
                )
            )
    return out
