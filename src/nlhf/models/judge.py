"""One judge interface for training and evaluation alike.

A judge answers ``P(a > b | prompt)`` for batches of text. The learned preference model, the
reward model (through Bradley-Terry), the built-in task's simulated raters and any Python
callable all implement it, so the policy trainer and the tournament never care which one they got.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Judge(Protocol):
    """``prob(prompts, a, b)[i] = P(a[i] > b[i] | prompts[i])``, a float tensor (B,) on CPU.

    Must be batched, take no gradient and satisfy ``prob(p, a, b) = 1 - prob(p, b, a)`` where the
    judge is a preference (for a reward model through Bradley-Terry this holds by construction).
    """

    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor: ...


class CallableJudge:
    """Wraps any ``fn(prompts, a, b) -> sequence of probabilities`` as a ``Judge``."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str], Sequence[str]], object]):
        self.fn = fn

    @torch.no_grad()
    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        _check_batch(prompts, responses_a, responses_b)
        p = torch.as_tensor(self.fn(prompts, responses_a, responses_b), dtype=torch.float32)
        p = p.reshape(-1).cpu()
        if p.numel() != len(prompts):
            raise ValueError(f"judge callable returned {p.numel()} values for {len(prompts)} pairs")
        if not torch.all((p >= 0) & (p <= 1)):
            bad = int(torch.nonzero(~((p >= 0) & (p <= 1)))[0])
            raise ValueError(f"judge callable returned P = {float(p[bad])} at index {bad}")
        return p


def sample_labels(
    judge: Judge,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampled 0/1 preference labels (1 = ``a`` preferred): the model-free variant, paper §6.

    A judge may define ``sample_labels`` itself (e.g. simulated raters drawing a rater group);
    otherwise a label is Bernoulli(``prob``).
    """
    own = getattr(judge, "sample_labels", None)
    if callable(own):
        return own(prompts, responses_a, responses_b, generator=generator)
    p = judge.prob(prompts, responses_a, responses_b)
    return torch.bernoulli(p, generator=generator)


def _check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(
            f"judge needs equal batch sizes, got {len(prompts)} prompts, "
            f"{len(a)} responses_a, {len(b)} responses_b"
        )
