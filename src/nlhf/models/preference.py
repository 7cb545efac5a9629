"""Learned preference models and the Bradley-Terry reward model (Munos et al. 2024, §5, App. G.1).

Every kind wraps a standard Hugging Face ``AutoModelForSequenceClassification`` backbone (any
decoder with a pad token, or any encoder) whose head gives one scalar (or, for the embedding
kind, a vector) per sequence. Checkpoints are therefore plain HF checkpoints (safetensors,
``config.json``, the tokenizer beside) plus a small ``nlhf_model.json`` marker naming the kind.

- ``pairwise`` (:class:`PairwisePreferenceModel`): one sequence ``[prompt <sep> y <sep> y']`` gives
  ``v(x, y, y')``; ``P(y > y' | x) = sigmoid(v(x, y, y') - v(x, y', y))`` (paper §5). Both orders
  go through one batched forward. Antisymmetric by construction: swapping ``y, y'`` negates the
  logit exactly, and :func:`antisymmetric_sigmoid` turns that into exactly ``1 - P``.
- ``reward`` (:class:`RewardModel`): ``[prompt <sep> y]`` gives ``r(x, y)``;
  ``P_BT(y > y' | x) = sigmoid(r(x, y) - r(x, y'))`` (the RLHF baseline). Transitive, so it cannot
  represent a Condorcet cycle (paper §3.2).
- ``embedding`` (:class:`EmbeddingPreferenceModel`): ``[prompt <sep> y]`` gives ``e(x, y)`` in
  R^{2k}; ``v(x, y, y') = e^T R e'`` with ``R`` block-diagonal ``[[0, 1], [-1, 0]]`` (skew
  symmetric), a general preference model (Zhang et al. 2024, "General Preference Modeling with
  Preference Representations") that can represent cycles at one forward pass per response.

Layout. A chat prompt (a message list) with a tokenizer that has a chat template is read through
that template: ``apply_chat_template(prompt)`` followed by each response as an assistant turn
(:func:`nlhf.models.chat.render_chat_turns`), i.e. the conversation
``prompt + [assistant y] (+ [assistant y'])`` with the template's own markers between the parts.
Text prompts (and chat prompts for a tokenizer without a template, with a one-time warning, as
``Role: content`` text) use ``[start] x <sep> y (<sep> y') <end>`` with the tokenizer's special
tokens. The same rendering serves training (``nlhf train-preference``) and judging.

Long inputs: the prompt is truncated first (its beginning is dropped, the end next to the
responses is kept); only if both responses alone do not fit are they cut, sharing the room
equally, so both stay visible. A warning says so once per model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from nlhf.data.schema import Text, as_text
from nlhf.models.chat import render_chat_turns

MARKER = "nlhf_model.json"
KINDS = ("pairwise", "reward", "embedding")


class Segments(NamedTuple):
    """One example's token ids before layout: the prompt and each response.

    ``templated``: the parts come from the chat template (each response a whole assistant turn)
    and are concatenated as they are; otherwise the plain layout adds start/sep/end tokens.
    """

    prompt: list[int]
    responses: list[list[int]]
    templated: bool


def antisymmetric_sigmoid(d: torch.Tensor) -> torch.Tensor:
    """``sigmoid(d)`` computed so that ``f(-d) == 1 - f(d)`` holds bit for bit.

    For ``d >= 0`` it is ``sigmoid(d)``; for ``d < 0`` it is ``1 - sigmoid(-d)``. Since
    ``sigmoid(|d|)`` lies in [1/2, 1], ``1 - sigmoid(|d|)`` is exact in floating point (Sterbenz).
    """
    s = torch.sigmoid(d.abs())
    return torch.where(d >= 0, s, 1.0 - s)


def share_room(lengths: Sequence[int], room: int) -> list[int]:
    """Largest lengths ``<= lengths`` summing to at most ``room``, shared equally (water-filling).

    Symmetric in its inputs: equal lengths get equal shares, so swapping responses never changes
    what is kept.
    """
    if sum(lengths) <= room:
        return list(lengths)
    # the largest common cap c with sum(min(length, c)) <= room; everyone keeps min(length, c)
    cap = 0
    for c in range(max(lengths) + 1):
        if sum(min(n, c) for n in lengths) > room:
            break
        cap = c
    return [min(n, cap) for n in lengths]


class ScoringModel(nn.Module):
    """Shared machinery: a sequence-classification backbone, its tokenizer, sequence layout.

    ``forward(input_ids, attention_mask, flip) -> (B,)`` logits ``d`` with
    ``P(a > b | x) = sigmoid(d)``; batches come from :meth:`collate`.
    """

    kind: ClassVar[str] = ""
    responses_per_sequence: ClassVar[int] = 1

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(backbone.config, "pad_token_id", None) is None:
            backbone.config.pad_token_id = tokenizer.pad_token_id
        self.pad_id = tokenizer.pad_token_id
        start = getattr(tokenizer, "cls_token_id", None)
        self.start_id = start if start is not None else tokenizer.bos_token_id
        sep = getattr(tokenizer, "sep_token_id", None)
        self.sep_id = sep if sep is not None else tokenizer.eos_token_id
        end = tokenizer.eos_token_id
        self.end_id = end if end is not None else self.sep_id
        if self.sep_id is None:
            raise ValueError("tokenizer needs a sep or eos token to separate prompt and responses")
        positions = _max_positions(backbone.config)
        if max_length is None:
            max_length = positions or 512
        if positions is not None and max_length > positions:
            max_length = positions
        self.max_length = int(max_length)
        self.n_special = (
            (self.start_id is not None) + self.responses_per_sequence + (self.end_id is not None)
        )
        if self.max_length < self.n_special + 2 * self.responses_per_sequence:
            raise ValueError(f"max_length {self.max_length} is too small for the layout")
        self._warned_truncation = False

    # ------------------------------------------------------------------ tokens and sequences
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode(self, prompts: Sequence[Text], *responses: Sequence[Text]) -> list[Segments]:
        """Token ids of each example ``(prompts[i], responses[0][i], responses[1][i], ...)``:
        chat prompts through the tokenizer's chat template, text as it is (module docstring)."""
        if any(len(r) != len(prompts) for r in responses):
            raise ValueError(
                f"encode needs one response per prompt in each list, got {len(prompts)} prompts "
                f"and {[len(r) for r in responses]} responses"
            )
        out: list[Segments | None] = []
        plain: list[int] = []
        for i, prompt in enumerate(prompts):
            turns = render_chat_turns(self.tokenizer, prompt, [r[i] for r in responses])
            if turns is None:
                plain.append(i)
                out.append(None)
            else:
                out.append(Segments(turns[0], turns[1], True))
        if plain:  # one tokenizer call for all plain-text parts
            texts = [as_text(prompts[i]) for i in plain]
            for r in responses:
                texts += [as_text(r[i]) for i in plain]
            ids = self.encode_texts(texts)
            n = len(plain)
            for k, i in enumerate(plain):
                out[i] = Segments(
                    ids[k], [ids[n * (j + 1) + k] for j in range(len(responses))], False
                )
        return out  # type: ignore[return-value]

    def _fit(
        self, prompt: list[int], responses: list[list[int]], templated: bool
    ) -> tuple[list[int], list[list[int]]]:
        specials = 0 if templated else self.n_special  # the plain layout's start/sep/end tokens
        budget = self.max_length - specials
        total = len(prompt) + sum(len(r) for r in responses)
        if total <= budget:
            return prompt, responses
        if not self._warned_truncation:
            warnings.warn(
                f"{self.kind} model: an input of {total + specials} tokens "
                f"exceeds max_length {self.max_length}; truncating the prompt first (keeping its "
                "end), then the responses equally, so that every response stays visible "
                "(warned once)",
                stacklevel=3,
            )
            self._warned_truncation = True
        room_for_prompt = budget - sum(len(r) for r in responses)
        if room_for_prompt > 0:
            return prompt[len(prompt) - room_for_prompt :], responses
        keep = share_room([len(r) for r in responses], budget)
        return [], [r[:k] for r, k in zip(responses, keep)]

    def _sequence(
        self, prompt: list[int], responses: list[list[int]], templated: bool
    ) -> list[int]:
        if templated:  # the template's markers already delimit the turns
            return [t for part in (prompt, *responses) for t in part]
        ids = [] if self.start_id is None else [self.start_id]
        ids += prompt
        for r in responses:
            ids += [self.sep_id, *r]
        if self.end_id is not None:
            ids.append(self.end_id)
        return ids

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):  # right padding: positions stay 0..len-1
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
        return input_ids, attention_mask

    def collate(self, examples: Sequence[Segments]) -> dict[str, torch.Tensor]:
        """Encoded pairs (:meth:`encode` with two response lists) -> ``input_ids (2B, T)``,
        ``attention_mask (2B, T)``, ``flip (B,)``.

        Each pair is laid out in a canonical order (``first <= second`` as token lists), so that
        ``(x, a, b)`` and ``(x, b, a)`` give the very same batch; ``flip`` says where ``a`` is
        the second. That makes antisymmetry exact, not just up to floating-point noise.
        """
        if not examples:
            raise ValueError("collate needs a non-empty batch of encoded pairs")
        firsts, seconds, flips = [], [], []
        for prompt, (a, b), templated in examples:
            flip = tuple(a) > tuple(b)
            first, second = (list(b), list(a)) if flip else (list(a), list(b))
            seq_first, seq_second = self._pair_sequences(list(prompt), first, second, templated)
            firsts.append(seq_first)
            seconds.append(seq_second)
            flips.append(flip)
        input_ids, attention_mask = self._pad(firsts + seconds)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "flip": torch.tensor(flips, dtype=torch.bool),
        }

    def _pair_sequences(
        self, prompt: list[int], first: list[int], second: list[int], templated: bool
    ) -> tuple[list[int], list[int]]:
        """The two sequences whose head outputs give the logit of ``P(first > second)``.

        Default (one response per sequence): ``[x <sep> first]`` and ``[x <sep> second]``.
        """
        p1, (y1,) = self._fit(prompt, [first], templated)
        p2, (y2,) = self._fit(prompt, [second], templated)
        return self._sequence(p1, [y1], templated), self._sequence(p2, [y2], templated)

    def tokenize(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> dict[str, torch.Tensor]:
        """Prompts and responses (text or chat) -> a batch for :meth:`forward`."""
        return self.collate(self.encode(prompts, responses_a, responses_b))

    # ------------------------------------------------------------------ scores
    def _head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits.float()  # (2B, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Logit ``d`` (B,) of ``P(a > b | x) = sigmoid(d)``."""
        h = self._head(input_ids, attention_mask)  # (2B, num_labels)
        B = flip.shape[0]
        d_canonical = self._pair_logit(h[:B], h[B:])  # (B,) logit of P(first > second)
        return torch.where(flip.to(d_canonical.device), -d_canonical, d_canonical)

    def _pair_logit(self, h_first: torch.Tensor, h_second: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logit(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> torch.Tensor:
        """``d`` (B,) for text or chat inputs, on the model's device, with gradient."""
        batch = self.tokenize(prompts, responses_a, responses_b)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self(**batch)

    # ------------------------------------------------------------------ checkpoints
    def marker(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_length": self.max_length, "format_version": 1}

    def save_pretrained(self, path: str | Path) -> Path:
        """A standard HF checkpoint (safetensors) + tokenizer + ``nlhf_model.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / MARKER).write_text(json.dumps(self.marker(), indent=2) + "\n")
        return path

    @classmethod
    def from_backbone(
        cls, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **marker: Any
    ) -> ScoringModel:
        return cls(backbone, tokenizer, max_length=marker.get("max_length"))


class PairwisePreferenceModel(ScoringModel):
    """``P(y > y' | x) = sigmoid(v(x, y, y') - v(x, y', y))``; v reads ``[x <sep> y <sep> y']``."""

    kind = "pairwise"
    responses_per_sequence = 2

    def _pair_sequences(self, prompt, first, second, templated):
        # both responses must fit in one sequence: truncate them jointly (symmetric in the two)
        p, (y1, y2) = self._fit(prompt, [first, second], templated)
        return self._sequence(p, [y1, y2], templated), self._sequence(p, [y2, y1], templated)

    def _pair_logit(self, h_first, h_second):
        # h_first = v(x, first, second), h_second = v(x, second, first)
        return h_first[:, 0] - h_second[:, 0]


class RewardModel(ScoringModel):
    """Bradley-Terry: ``r(x, y)`` from ``[x <sep> y]``; ``P = sigmoid(r(x, y) - r(x, y'))``."""

    kind = "reward"

    def _pair_logit(self, h_first, h_second):
        return h_first[:, 0] - h_second[:, 0]

    def collate_single(self, examples: Sequence[Segments]) -> dict[str, torch.Tensor]:
        """Encoded ``(prompt, response)`` examples -> a batch of ``[x <sep> y]`` sequences (or
        chat-template conversations) for :meth:`score`."""
        seqs = []
        for prompt, (y,), templated in examples:
            p, (y,) = self._fit(list(prompt), [list(y)], templated)
            seqs.append(self._sequence(p, [y], templated))
        input_ids, attention_mask = self._pad(seqs)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> torch.Tensor:
        """``r(x, y)`` (B,) for text or chat inputs, on the model's device, with gradient."""
        batch = self.collate_single(self.encode(prompts, responses))
        h = self._head(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return h[:, 0]


class EmbeddingPreferenceModel(ScoringModel):
    """General preference model: ``v(x, y, y') = e(x, y)^T R e(x, y')``, ``R`` skew-symmetric.

    The backbone head has ``2k`` outputs; ``R`` pairs them as ``[[0, 1], [-1, 0]]`` blocks, so
    ``v = sum_j e_{2j} e'_{2j+1} - e_{2j+1} e'_{2j}`` and ``v(x, y', y) = -v(x, y, y')`` exactly.
    With ``k >= 1`` it can represent a cycle over three responses, unlike a reward model.
    """

    kind = "embedding"

    def _pair_logit(self, h_first, h_second):
        even_1, odd_1 = h_first[:, 0::2], h_first[:, 1::2]
        even_2, odd_2 = h_second[:, 0::2], h_second[:, 1::2]
        return (even_1 * odd_2 - odd_1 * even_2).sum(-1)

    def marker(self) -> dict[str, Any]:
        return {**super().marker(), "embedding_dim": int(self.backbone.config.num_labels)}


MODEL_CLASSES: dict[str, type[ScoringModel]] = {
    "pairwise": PairwisePreferenceModel,
    "reward": RewardModel,
    "embedding": EmbeddingPreferenceModel,
}


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def num_labels_for(kind: str, embedding_dim: int = 8) -> int:
    """Head outputs per kind: 1 for pairwise/reward, ``embedding_dim`` (even) for embedding."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown model kind {kind!r}; choose one of {list(KINDS)}")
    if kind == "embedding":
        if embedding_dim < 2 or embedding_dim % 2:
            raise ValueError(f"embedding_dim: must be even and >= 2, got {embedding_dim}")
        return embedding_dim
    return 1


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A backbone config file (JSON or YAML mapping with ``model_type``) as a dict."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"random_init: model config {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot parse the model config ({err})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(
            f"{path}: a model config must be a mapping with 'model_type' (e.g. gpt2, bert, llama)"
        )
    return data


def random_backbone(
    config: str | Path | dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    num_labels: int = 1,
) -> PreTrainedModel:
    """A freshly initialised ``AutoModelForSequenceClassification`` from a small config.

    ``config``: a path to a JSON/YAML file or a dict with ``model_type`` and the architecture
    (e.g. ``{"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}``). Vocabulary size
    and special token ids come from ``tokenizer``.
    """
    data = dict(config) if isinstance(config, dict) else read_model_config(config)
    model_type = data.pop("model_type")
    data.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=num_labels,
    )
    try:
        cfg = AutoConfig.for_model(model_type, **data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"random_init: cannot build a {model_type!r} config ({err})") from None
    return AutoModelForSequenceClassification.from_config(cfg)


def pretrained_backbone(name_or_path: str | Path, num_labels: int = 1) -> PreTrainedModel:
    """An ``AutoModelForSequenceClassification`` from a checkpoint (e.g. the SFT policy); the
    head is new when the checkpoint has none."""
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), num_labels=num_labels
        )
    except OSError as err:
        raise ValueError(f"model: cannot load {name_or_path} ({err})") from None


def load_model(path: str | Path, kind: str | None = None) -> ScoringModel:
    """Load a model saved by :meth:`ScoringModel.save_pretrained` (or any HF sequence-classification
    checkpoint when ``kind`` is given; a 1-output head as ``pairwise``/``reward``)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such model directory")
    marker: dict[str, Any] = {}
    if (path / MARKER).is_file():
        try:
            marker = json.loads((path / MARKER).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path / MARKER}: not valid JSON ({err})") from None
    kind = kind or marker.get("kind")
    if kind is None:
        raise ValueError(
            f"{path}: no {MARKER} marker; not a model saved by nlhf train-preference "
            "(pass kind='pairwise'|'reward' to load a plain sequence-classification checkpoint)"
        )
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{path}: unknown model kind {kind!r}; known: {list(MODEL_CLASSES)}")
    try:
        backbone = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # OSError, SafetensorError, ValueError...: a broken checkpoint
        raise ValueError(f"{path}: cannot load the checkpoint ({err})") from None
    backbone.eval()
    return MODEL_CLASSES[kind].from_backbone(backbone, tokenizer, **marker)
