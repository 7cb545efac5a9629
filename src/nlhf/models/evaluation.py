"""Held-out evaluation of any judge on pairwise comparisons.

Metrics (keys namespaced ``eval/``):

- ``accuracy``: share of comparisons with a non-tie label (``label != 0.5``) where the predicted
  ``P(a > b)`` is on the label's side of 1/2;
- ``log_loss``: soft-label cross-entropy ``-[l log p + (1 - l) log(1 - p)]`` (nats);
- ``ece``: expected calibration error of ``P(a > b)`` over 10 equal-width bins
  (``sum_bins n_b / n |mean label - mean p|``);
- ``antisymmetry_error``: ``max |P(a > b) + P(b > a) - 1|`` (exactly 0 for nlhf's models);
- ``triples`` / ``cycles``: for every prompt with three or more distinct responses, the
  triples of its responses (up to ``max_triples``) and how many of them the judge orders in a
  cycle (``a > b > c > a`` or reverse; a reward model never does). ``data_cycles`` counts the
  triples whose three pairs are all labelled in the data and whose mean labels form a cycle.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Sequence

import torch

from nlhf.data.schema import Comparison, as_text
from nlhf.models.judge import judge_prob


def expected_calibration_error(p: torch.Tensor, label: torch.Tensor, bins: int = 10) -> float:
    """ECE of probabilities ``p`` (N,) against (soft) labels (N,) over equal-width bins."""
    idx = torch.clamp((p * bins).long(), max=bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += float(mask.float().mean()) * abs(float(label[mask].mean() - p[mask].mean()))
    return ece


def evaluate_judge(
    judge,
    comparisons: Sequence[Comparison],
    max_triples: int = 2000,
    seed: int = 0,
    prefix: str = "eval/",
    what: str | None = None,
) -> dict[str, float]:
    """Accuracy, log-loss, ECE, antisymmetry error and predicted cycles of ``judge``; every
    judge call goes through :func:`nlhf.models.judge.judge_prob`, its errors naming the judge
    (``what``, e.g. ``"--judge runs/pm"``). ``accuracy`` and ``cycle_rate`` are NaN when
    undefined (no non-tie label, no triple): ``nlhf.jsonio`` writes them as null."""
    if not comparisons:
        raise ValueError("evaluate_judge: no comparisons to evaluate on")
    # the judge reads prompts and responses as they are (chat lists through its template)
    prompts = [c.prompt for c in comparisons]
    a = [c.response_a for c in comparisons]
    b = [c.response_b for c in comparisons]
    label = torch.tensor([c.label for c in comparisons], dtype=torch.float64)
    p_ab = judge_prob(judge, prompts, a, b, what=what).double()  # (N,)
    p_ba = judge_prob(judge, prompts, b, a, what=what).double()  # (N,)
    decided = label != 0.5
    correct = (p_ab > 0.5) == (label > 0.5)
    p_clamped = p_ab.clamp(1e-7, 1 - 1e-7)
    log_loss = -(label * p_clamped.log() + (1 - label) * (1 - p_clamped).log())
    metrics = {
        "n": float(len(comparisons)),
        "accuracy": float(correct[decided].double().mean()) if decided.any() else math.nan,
        "log_loss": float(log_loss.mean()),
        "ece": expected_calibration_error(p_ab, label),
        "antisymmetry_error": float((p_ab + p_ba - 1).abs().max()),
        "mean_prob": float(p_ab.mean()),
    }
    metrics.update(_cycles(judge, comparisons, max_triples, seed, what))
    return {prefix + k: v for k, v in metrics.items()}


def _cycles(judge, comparisons, max_triples, seed, what) -> dict[str, float]:
    responses: dict[str, list[str]] = defaultdict(list)
    labels: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    raw = {}  # text key -> the prompt or response as given (text or chat list)
    for c in comparisons:
        x, ya, yb = as_text(c.prompt), as_text(c.response_a), as_text(c.response_b)
        raw.update({x: c.prompt, ya: c.response_a, yb: c.response_b})
        for y in (ya, yb):
            if y not in responses[x]:
                responses[x].append(y)
        labels[(x, ya, yb)].append(c.label)
        labels[(x, yb, ya)].append(1.0 - c.label)
    triples = [
        (x, *t)
        for x, ys in responses.items()
        if len(ys) >= 3
        for t in itertools.combinations(ys, 3)
    ]
    if len(triples) > max_triples:
        triples = random.Random(seed).sample(triples, max_triples)
    if not triples:
        return {"triples": 0.0, "cycles": 0.0, "cycle_rate": math.nan, "data_cycles": 0.0}
    xs, first, second = [], [], []
    for x, y1, y2, y3 in triples:  # pairs (1, 2), (2, 3), (3, 1)
        xs += [x, x, x]
        first += [y1, y2, y3]
        second += [y2, y3, y1]
    xs, first, second = ([raw[k] for k in keys] for keys in (xs, first, second))
    p = judge_prob(judge, xs, first, second, what=what).reshape(-1, 3)  # (n_triples, 3)
    cycles = int(((p > 0.5).all(-1) | (p < 0.5).all(-1)).sum())
    data_cycles = 0
    for x, y1, y2, y3 in triples:
        means = [labels.get((x, u, v)) for u, v in ((y1, y2), (y2, y3), (y3, y1))]
        if all(means):
            m = [sum(v) / len(v) for v in means]
            data_cycles += all(v > 0.5 for v in m) or all(v < 0.5 for v in m)
    return {
        "triples": float(len(triples)),
        "cycles": float(cycles),
        "cycle_rate": cycles / len(triples),
        "data_cycles": float(data_cycles),
    }
