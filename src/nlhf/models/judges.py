"""Judges backed by learned models: the ``Judge`` protocol of :mod:`nlhf.models.judge`.

``PreferenceModelJudge`` wraps a pairwise (or embedding) preference model,
``RewardModelJudge`` a Bradley-Terry reward model (``prob`` through BT, plus ``reward`` for the
RLHF baseline). ``load_judge(path)`` reads the ``nlhf_model.json`` marker and returns the right
one. All are batched, take no gradient and return float32 tensors on the CPU.

:func:`resolve_judge` turns the ``--judge`` string of every command into a judge: a model
directory, a YAML judge spec file, ``python:MODULE:FUNCTION``, ``openai:MODEL@BASE_URL`` (an LLM
judge, :mod:`nlhf.models.llm_judge`), or ``SCHEME:REST`` for a scheme registered with
:func:`register_judge_scheme`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from nlhf.models.judge import CallableJudge, Judge, _check_batch
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


# --------------------------------------------------------------------------------------------
# --judge specifications

JudgeFactory = Callable[..., Judge]
"""``factory(rest, device=..., batch_size=...) -> Judge`` for a spec ``SCHEME:REST``."""
MappingFactory = Callable[..., Judge]
"""``factory(mapping, base_dir=..., where=..., device=..., batch_size=...) -> Judge`` for a YAML
judge spec file whose ``type`` is the scheme."""
_SCHEMES: dict[str, JudgeFactory] = {}
_FILE_SCHEMES: dict[str, MappingFactory] = {}


def register_judge_scheme(
    name: str, factory: JudgeFactory, from_mapping: MappingFactory | None = None
) -> None:
    """Make ``--judge NAME:REST`` resolve to ``factory(REST, device=..., batch_size=...)`` and,
    with ``from_mapping``, a YAML judge spec file with ``type: NAME`` resolve to
    ``from_mapping(fields, base_dir=the file's directory, where=the file, device=...,
    batch_size=...)``."""
    if not name.isidentifier():
        raise ValueError(f"judge scheme {name!r}: must be an identifier")
    _SCHEMES[name] = factory
    if from_mapping is not None:
        _FILE_SCHEMES[name] = from_mapping


def _python_judge(target: str, device=None, batch_size: int = 64) -> Judge:
    spec = f"python:{target}"
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--judge {spec!r}: expected python:MODULE:FUNCTION")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise FileNotFoundError(f"--judge {spec!r}: {file} does not exist")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--judge {spec!r}: cannot import {module_name} ({err})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ValueError(f"--judge {spec!r}: {module_name} has no attribute {attr!r}")
    if callable(getattr(obj, "prob", None)):
        return obj
    if callable(obj):
        return CallableJudge(obj)
    raise ValueError(f"--judge {spec!r}: {attr} is neither a Judge nor a callable")


register_judge_scheme("python", _python_judge)


def _openai_judge(rest: str, device=None, batch_size: int = 64) -> Judge:
    from nlhf.models.llm_judge import LLMJudge, parse_openai_spec

    return LLMJudge(parse_openai_spec(rest))


def _openai_judge_from_mapping(
    data: dict, base_dir: Path, where: str, device=None, batch_size: int = 64
) -> Judge:
    from nlhf.models.llm_judge import LLMJudge, config_from_mapping

    return LLMJudge(config_from_mapping(data, base_dir, where))


register_judge_scheme("openai", _openai_judge, from_mapping=_openai_judge_from_mapping)


def load_judge_spec_file(
    path: str | Path, device: str | torch.device | None = None, batch_size: int = 64
) -> Judge:
    """The judge a YAML spec file describes: ``type: SCHEME`` (default ``openai``) and the
    scheme's fields, e.g. ``model``, ``base_url``, ``template_file`` for an LLM judge."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--judge {path}: cannot read the judge spec ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--judge {path}: expected a mapping of judge settings")
    data = dict(data)
    scheme = str(data.pop("type", "openai"))
    if scheme not in _FILE_SCHEMES:
        known = ", ".join(sorted(_FILE_SCHEMES))
        raise ValueError(f"--judge {path}: unknown type {scheme!r} (known: {known})")
    return _FILE_SCHEMES[scheme](
        data, base_dir=path.parent, where=str(path), device=device, batch_size=batch_size
    )


def resolve_judge(
    spec: str, device: str | torch.device | None = None, batch_size: int = 64
) -> Judge:
    """The judge a ``--judge`` string names: an existing model directory (written by
    ``nlhf train-preference``), a YAML judge spec file (``.yaml``/``.yml``, e.g. an LLM judge),
    ``python:MODULE:FUNCTION`` (a ``Judge`` object or a callable ``fn(prompts, a, b)`` returning
    ``P(a > b)``; MODULE may be a ``.py`` file), ``openai:MODEL@BASE_URL`` (an LLM judge over an
    OpenAI-compatible server, ``nlhf.models.llm_judge``), or ``SCHEME:REST`` (or a bare
    ``SCHEME``) for another registered scheme, e.g. ``builtin:TASK.yaml``."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError("--judge: empty judge specification")
    path = Path(spec)
    scheme, sep, rest = spec.partition(":")
    if scheme in _SCHEMES and (sep or not path.exists()):  # SCHEME:REST, or a bare SCHEME
        return _SCHEMES[scheme](rest, device=device, batch_size=batch_size)
    if path.suffix.lower() in (".yaml", ".yml") and not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"--judge {spec!r}: the judge spec file does not exist")
        return load_judge_spec_file(path, device=device, batch_size=batch_size)
    if path.exists():
        return load_judge(path, device=device, batch_size=batch_size)
    known = ", ".join(f"{k}:..." for k in sorted(_SCHEMES))
    raise FileNotFoundError(
        f"--judge {spec!r}: no such model directory, and not a known judge scheme ({known})"
    )
