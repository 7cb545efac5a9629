"""One judge interface for training and evaluation alike.

A judge answers ``P(a > b | prompt)`` for batches of text. The learned preference model, the
reward model (through Bradley-Terry), the built-in task's simulated raters and any Python
callable all implement it, so the policy trainer and the tournament never care which one they got.

Every caller asks a judge through :func:`judge_prob` (or :func:`sample_labels`): a judge that
raises, or returns anything but one probability per pair, is a :class:`JudgeError` naming the
judge, the pair's index and the value, never a traceback from inside the trainer.
"""

from __future__ import annotations

import functools
import numbers
import traceback
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

ROUNDING = 1e-6
"""A probability up to this far outside [0, 1] is rounding (e.g. a weighted sum of
probabilities in float32) and is clamped; anything further is an error."""


@runtime_checkable
class Judge(Protocol):
    """``prob(prompts, a, b)[i] = P(a[i] > b[i] | prompts[i])``, a float tensor (B,) on CPU.

    Must be batched, take no gradient and satisfy ``prob(p, a, b) = 1 - prob(p, b, a)`` where the
    judge is a preference (for a reward model through Bradley-Terry this holds by construction).
    Call it through :func:`judge_prob`, which checks what it returns.
    """

    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor: ...


class JudgeError(ValueError):
    """A judge raised, or returned something that is not one probability per pair; the
    message names the judge (its class or function) and the offending index and value."""


def describe_judge(judge: Any) -> str:
    """What a judge is, for error messages: ``"judge my_module.my_fn"`` for a callable (also
    inside a ``CallableJudge``), ``"judge my_module.MyJudge"`` for a judge object."""
    target = judge.fn if isinstance(judge, CallableJudge) else judge
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        name, module = target.__qualname__, getattr(target, "__module__", None)
    else:  # a judge object, or a callable object: its class
        name, module = type(target).__qualname__, type(target).__module__
    return f"judge {module}.{name}" if module and module != "builtins" else f"judge {name}"


def _label(judge: Any, what: str | None) -> str:
    described = describe_judge(judge)
    return f"{what} ({described})" if what else described


def _raised(label: str, err: Exception) -> JudgeError:
    """``label: raised Type: message (at file.py:12 in fn)``, the innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})"
    text = str(err).strip()
    message = f": {text.splitlines()[0]}" if text else ""
    return JudgeError(f"{label}: raised {type(err).__name__}{message}{at if frames else ''}")


def _call(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        with torch.no_grad():
            return fn(*args, **kwargs)
    except JudgeError:  # already names a judge (e.g. one that asks another through judge_prob)
        raise
    except Exception as err:
        raise _raised(label, err) from err


def check_judge_output(
    values: Any, n: int, what: str = "judge", labels: bool = False
) -> torch.Tensor:
    """``values`` (a tensor, array or sequence of numbers) as a (n,) float32 CPU tensor with no
    gradient, or a :class:`JudgeError`: not numbers (strings such as ``"0.7"`` or ``"yes"``
    included: a judge parses its own verdicts), not ``n`` of them, NaN, outside [0, 1] beyond
    rounding (:data:`ROUNDING`), or with ``labels`` not exactly 0 or 1."""
    kind = "sampled labels" if labels else "probabilities"
    t = _as_float64(values, n, what, kind)
    bad = torch.isnan(t) | (t < -ROUNDING) | (t > 1 + ROUNDING)
    if labels:
        bad = bad | ((t != 0) & (t != 1))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        value = float(f"{float(t[i]):.7g}")  # as written: 0.3, not its float32 0.30000001...
        if labels:
            raise JudgeError(f"{what}: returned label = {value!r} at index {i}, not 0 or 1")
        raise JudgeError(
            f"{what}: returned P = {value!r} at index {i}, not a probability in [0, 1]"
        )
    return t.clamp_(0.0, 1.0).float()


def _as_float64(values: Any, n: int, what: str, kind: str) -> torch.Tensor:
    """``values`` as a (n,) float64 CPU tensor, or a :class:`JudgeError` (not numbers, not n)."""
    if isinstance(values, str | bytes):
        raise JudgeError(
            f"{what}: returned {values!r:.40} (a {type(values).__name__}), not a sequence of "
            f"{n} {kind}"
        )
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        values = torch.from_numpy(np.ascontiguousarray(values))
    if isinstance(values, torch.Tensor):
        t = values.detach()
        if t.device.type == "meta":
            raise JudgeError(f"{what}: returned a tensor on the meta device, which holds no data")
        if t.is_complex():
            raise JudgeError(f"{what}: returned a tensor of dtype {t.dtype}, not real numbers")
        t = t.to("cpu", torch.float64).reshape(-1)
    else:
        if isinstance(values, numbers.Number | np.generic):
            values = [values]
        try:
            items = list(values)
        except TypeError:
            raise JudgeError(
                f"{what}: returned {values!r:.40} (of type {type(values).__name__}), not a "
                f"sequence of {n} {kind}"
            ) from None
        floats = []
        for i, v in enumerate(items):
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
                v = v.item()
            if not isinstance(v, numbers.Real):
                hint = ""
                if isinstance(v, str):
                    hint = "; a judge returns numbers: parse text verdicts inside the judge"
                raise JudgeError(
                    f"{what}: returned {type(v).__name__} {v!r:.40} at index {i}, not a "
                    f"number{hint}"
                )
            floats.append(float(v))
        t = torch.tensor(floats, dtype=torch.float64)
    if t.numel() != n:
        values_ = "value" if t.numel() == 1 else "values"
        items = "responses" if kind == "rewards" else "pairs"
        raise JudgeError(f"{what}: returned {t.numel()} {values_} for {n} {items}")
    return t


def judge_prob(
    judge: Judge,
    prompts: Sequence[Any],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    what: str | None = None,
) -> torch.Tensor:
    """``judge.prob(prompts, a, b)`` checked: a (B,) float32 CPU tensor in [0, 1], no gradient.

    The call runs under ``torch.no_grad``. A judge that raises is re-raised as a
    :class:`JudgeError` naming the judge (``what``, e.g. ``"--judge runs/pm"``, and its class
    or function), the original error and where it was raised; wrong output is a ``JudgeError``
    naming the index and value (:func:`check_judge_output`).
    """
    label = _label(judge, what)
    prob = getattr(judge, "prob", None)
    if not callable(prob):
        raise JudgeError(f"{label}: has no .prob(prompts, responses_a, responses_b) method")
    _check_batch(prompts, responses_a, responses_b)
    if len(prompts) == 0:
        return torch.zeros(0)
    # a CallableJudge's function is called and checked here, so its errors carry the full label
    fn = judge.fn if isinstance(judge, CallableJudge) else prob
    out = _call(label, fn, prompts, responses_a, responses_b)
    return check_judge_output(out, len(prompts), label)


class CallableJudge:
    """Wraps any ``fn(prompts, a, b) -> sequence of probabilities`` as a ``Judge``; what ``fn``
    returns is checked (:func:`check_judge_output`) and its errors name it."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str], Sequence[str]], object]):
        self.fn = fn

    @torch.no_grad()
    def prob(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        _check_batch(prompts, responses_a, responses_b)
        label = describe_judge(self)
        out = _call(label, self.fn, prompts, responses_a, responses_b)
        return check_judge_output(out, len(prompts), label)


def sample_labels(
    judge: Judge,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    generator: torch.Generator | None = None,
    *,
    what: str | None = None,
) -> torch.Tensor:
    """Sampled 0/1 preference labels (1 = ``a`` preferred): the model-free variant, paper §6.

    A judge may define ``sample_labels`` itself (e.g. simulated raters drawing a rater group);
    otherwise a label is Bernoulli(``prob``). Either way the result is checked as in
    :func:`judge_prob`: a (B,) float32 CPU tensor of 0s and 1s, errors naming the judge.
    """
    own = getattr(judge, "sample_labels", None)
    if not callable(own):
        p = judge_prob(judge, prompts, responses_a, responses_b, what=what)
        return torch.bernoulli(p, generator=generator)
    label = _label(judge, what)
    _check_batch(prompts, responses_a, responses_b)
    out = _call(label, own, prompts, responses_a, responses_b, generator=generator)
    return check_judge_output(out, len(prompts), f"{label}.sample_labels", labels=True)


def judge_reward(
    judge: Any,
    prompts: Sequence[Any],
    responses: Sequence[str],
    *,
    what: str | None = None,
) -> torch.Tensor:
    """``judge.reward(prompts, responses)`` of a reward-model judge, checked like
    :func:`judge_prob`: a (B,) float32 CPU tensor of finite numbers, errors naming the judge."""
    label = _label(judge, what)
    reward = getattr(judge, "reward", None)
    if not callable(reward):
        raise JudgeError(
            f"{label}: has no .reward(prompts, responses) method; the RLHF baseline "
            "(reward_model) needs a reward model"
        )
    if len(prompts) != len(responses):
        raise ValueError(
            f"judge needs equal batch sizes, got {len(prompts)} prompts, {len(responses)} responses"
        )
    if len(prompts) == 0:
        return torch.zeros(0)
    out = _call(label, reward, prompts, responses)
    t = _as_float64(out, len(prompts), f"{label}.reward", "rewards")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        value = float(t[i])
        raise JudgeError(f"{label}.reward: returned {value} at index {i}, not a finite number")
    return t.float()


def _check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(
            f"judge needs equal batch sizes, got {len(prompts)} prompts, "
            f"{len(a)} responses_a, {len(b)} responses_b"
        )


__all__ = [
    "CallableJudge",
    "Judge",
    "JudgeError",
    "check_judge_output",
    "describe_judge",
    "judge_prob",
    "judge_reward",
    "sample_labels",
]
