"""Judges backed by learned models: the ``Judge`` protocol of :mod:`nlhf.models.judge`.

``PreferenceModelJudge`` wraps a pairwise (or embedding) preference model,
``RewardModelJudge`` a Bradley-Terry reward model (``prob`` through BT, plus ``reward`` for the
RLHF baseline). ``load_judge(path)`` reads the ``nlhf_model.json`` marker and returns the right
one. All are batched, take no gradient and return float32 tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nlhf.models.judge import _check_batch
from nlhf.models.preference import (
    RewardModel,
    ScoringModel,
    antisymmetric_sigmoid,
    load_model,
)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PreferenceModelJudge:
    """``prob(prompts, a, b) = P(a > b | x)`` from a learned preference model."""

    def __init__(
        self,
        model: ScoringModel,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @torch.no_grad()
    def logit(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """Logits ``d`` (B,) with ``P(a > b | x) = sigmoid(d)``, CPU float32."""
        _check_batch(prompts, responses_a, responses_b)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            j = i + self.batch_size
            out.append(self.model.logit(prompts[i:j], responses_a[i:j], responses_b[i:j]).cpu())
        return torch.cat(out).float() if out else torch.zeros(0)

    @torch.no_grad()
    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """``P(a > b | x)`` (B,), CPU float32; exactly ``1 - prob(prompts, b, a)``."""
        return antisymmetric_sigmoid(self.logit(prompts, responses_a, responses_b))


class RewardModelJudge(PreferenceModelJudge):
    """Bradley-Terry judge: ``prob = sigmoid(r(x, a) - r(x, b))``; ``reward(x, y) = r(x, y)``."""

    model: RewardModel

    def __init__(self, model: RewardModel, device=None, batch_size: int = 64):
        if not isinstance(model, RewardModel):
            raise ValueError(f"RewardModelJudge needs a reward model, got kind {model.kind!r}")
        super().__init__(model, device, batch_size)

    @torch.no_grad()
    def reward(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """``r(x, y)`` (B,), CPU float32."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"reward needs equal batch sizes, got {len(prompts)} prompts and "
                f"{len(responses)} responses"
            )
        out = []
        for i in range(0, len(prompts), self.batch_size):
            j = i + self.batch_size
            out.append(self.model.score(prompts[i:j], responses[i:j]).cpu())
        return torch.cat(out).float() if out else torch.zeros(0)


def make_judge(
    model: ScoringModel, device: str | torch.device | None = None, batch_size: int = 64
) -> PreferenceModelJudge:
    """The judge for a model object: ``RewardModelJudge`` for reward models."""
    if isinstance(model, RewardModel):
        return RewardModelJudge(model, device, batch_size)
    return PreferenceModelJudge(model, device, batch_size)


def load_judge(
    path: str | Path,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    kind: str | None = None,
) -> PreferenceModelJudge:
    """A judge from a model directory written by ``nlhf train-preference``.

    ``kind`` overrides the ``nlhf_model.json`` marker (to use any HF sequence-classification
    checkpoint as a ``reward`` or ``pairwise`` model). ``device``: default CUDA when available.
    """
    return make_judge(load_model(path, kind=kind), device, batch_size)
