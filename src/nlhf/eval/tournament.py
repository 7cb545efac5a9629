"""Tournament: compare every pair of policies under a judge (Munos et al. 2024, §7).

The paper's evaluation has a stronger judge compare the responses of every pair of trained
policies on 2,000 prompts and reports the matrix of ``P(column > row)`` with 95% Clopper-Pearson
intervals. This module does the same for any pool of Hugging Face causal-LM checkpoints and any
``Judge`` (a learned preference model, a reward model through Bradley-Terry, the built-in task's
simulated raters, or a Python callable).

One tournament:
  1. check every checkpoint (config, tokenizer, weight files, model class) before any long work,
     so that a missing or corrupted one fails at once with its name;
  2. sample ONE response per prompt from each policy (seeded per policy name, batched). A
     policy's samples are reused in all of its pairs: the pairs in one row are therefore
     correlated, but each cell is an unbiased estimate of ``P(column > row)``;
  3. judge each unordered pair once on all prompts (position-balanced: the column policy's
     response is shown first on even prompts, second on odd ones), either with the judge's
     probabilities (``labels="prob"``) or with sampled 0/1 labels (``labels="sampled"``, the
     paper's setting);
  4. fill ``M[row, col]`` and its transpose ``M[col, row] = 1 - M[row, col]`` (so ``M + M^T = 1``
     exactly, diagonal 1/2) with intervals (Clopper-Pearson for 0/1 labels, Student-t or
     bootstrap for probabilities);
  5. summarise the pool: each policy's mean and worst-case win rate against the others, the Nash
     mixture of the meta-game whose payoff is the matrix (``nlhf.games.solve_nash_lp``) and each
     policy's exploitability within the pool, ``max_{q in pool} P(q > policy) - 1/2``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from nlhf.devices import resolve_device
from nlhf.eval.intervals import bootstrap_interval, clopper_pearson, t_interval
from nlhf.jsonio import dumps, write_json, write_text
from nlhf.models.chat import is_chat
from nlhf.models.checkpoint import check_causal_lm, first_line, load_causal_lm
from nlhf.models.judge import Judge, JudgeError, judge_prob, sample_labels


@dataclass
class TournamentConfig:
    """Settings of ``nlhf tournament`` (and of ``run_tournament``'s keyword arguments)."""

    policies: list[str] = field(default_factory=list)
    """policy checkpoints to compare, each NAME=PATH or a PATH (named after its directory); a
    checkpoint is a Hugging Face causal-LM directory with its tokenizer"""
    prompts: Path | None = None
    """evaluation prompts: a text file (one prompt per line) or a JSONL file (one object with a
    "prompt" key, or one JSON string, per line); required unless the judge brings its own
    prompts (--judge builtin draws fresh prompts from the built-in task)"""
    judge: str = "builtin"
    """who compares two responses: a PATH to a trained preference- or reward-model directory,
    python:MODULE:FUNCTION (a callable fn(prompts, a, b) -> P(a > b) per item, or a Judge object;
    MODULE may be a .py file), openai:MODEL@BASE_URL (an LLM judge over an OpenAI-compatible
    server), a YAML LLM judge spec file (docs/judges.md), or 'builtin' / 'builtin:TASK.yaml'
    (the built-in task's exact simulated raters, with the task settings of a YAML file)"""
    output_dir: Path = Path("runs/tournament")
    """where the report (report.md, heatmap.png, tournament.json, matrix.csv, samples.jsonl) goes"""
    n_prompts: int = 0
    """number of prompts each pair is compared on: the first N of the prompt file (0 = all of
    them), or N fresh prompts of the built-in task with --judge builtin and no --prompts (0 =
    500)"""
    max_new_tokens: int = 32
    """maximum response length in tokens"""
    temperature: float = 1.0
    """sampling temperature of the policies (> 0)"""
    labels: Literal["sampled", "prob"] = "sampled"
    """'sampled': one sampled 0/1 judgement per prompt and Clopper-Pearson intervals (the
    paper's protocol); 'prob': the judge's probability P(a > b) per prompt and a t or bootstrap
    interval"""
    interval: Literal["t", "bootstrap"] = "t"
    """interval for labels=prob: Student-t of the mean or percentile bootstrap"""
    confidence: float = 0.95
    """confidence level of the intervals"""
    seed: int = 0
    """seed of sampling and judging (each policy's stream is derived from this and its name)"""
    batch_size: int = 64
    """prompts per sampling batch"""
    judge_batch_size: int = 256
    """response pairs per judge call"""
    balance_positions: bool = True
    """show the column policy's response first on even prompts and second on odd ones, so a
    judge with a position bias does not favour either side"""
    device: str = "auto"
    """device for the policies: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    training_curves: list[str] = field(default_factory=list)
    """training runs to plot in the report, each NAME=PATH (a metrics.jsonl file or the run
    directory holding one)"""

    def __post_init__(self) -> None:
        if self.n_prompts < 0:
            raise ValueError(f"n_prompts must be >= 0 (0 = all prompts), got {self.n_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.labels not in ("sampled", "prob"):
            raise ValueError(f"labels must be 'sampled' or 'prob', got {self.labels!r}")
        if self.interval not in ("t", "bootstrap"):
            raise ValueError(f"interval must be 't' or 'bootstrap', got {self.interval!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.judge_batch_size < 1:
            raise ValueError(f"judge_batch_size must be >= 1, got {self.judge_batch_size}")


@dataclass
class TournamentResult:
    """Everything a tournament measured. ``matrix[r, c] = P(policy c's response > policy r's)``."""

    names: list[str]
    paths: list[str]
    prompts: list[str]
    samples: dict[str, list[str]]  # name -> one response per prompt
    matrix: np.ndarray  # (K, K) P(column > row); diagonal 1/2; M + M^T = 1
    lower: np.ndarray  # (K, K) lower end of the interval
    upper: np.ndarray  # (K, K) upper end of the interval
    mean_win_rate: np.ndarray  # (K,) mean over the other policies of P(policy > other)
    worst_case: np.ndarray  # (K,) min over the other policies of P(policy > other)
    worst_opponent: list[str]  # (K,) the other policy attaining the worst case
    meta_nash: np.ndarray  # (K,) Nash mixture of the pool's meta-game
    meta_value: float  # value of the meta-game (1/2 for a symmetric game)
    exploitability: np.ndarray  # (K,) max_{q in pool} P(q > policy) - 1/2
    meta_nash_exploitability: float  # the same for the meta-Nash mixture (0 up to LP precision)
    labels: str
    interval: str
    confidence: float
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def interval_name(self) -> str:
        """Human-readable name of the interval method."""
        if self.labels == "sampled":
            return "Clopper-Pearson"
        return "Student-t" if self.interval == "t" else "percentile bootstrap"

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of every number (samples optional; they can be large)."""
        out: dict[str, Any] = {
            "names": list(self.names),
            "paths": list(self.paths),
            "n_prompts": self.n_prompts,
            "labels": self.labels,
            "interval": self.interval,
            "interval_name": self.interval_name(),
            "confidence": self.confidence,
            "matrix_meaning": "matrix[row][col] = P(response of col > response of row)",
            "matrix": self.matrix.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "mean_win_rate": self.mean_win_rate.tolist(),
            "worst_case": self.worst_case.tolist(),
            "worst_opponent": list(self.worst_opponent),
            "meta_nash": self.meta_nash.tolist(),
            "meta_value": self.meta_value,
            "exploitability": self.exploitability.tolist(),
            "meta_nash_exploitability": self.meta_nash_exploitability,
            "settings": self.settings,
            "timings": self.timings,
        }
        if include_samples:
            out["prompts"] = list(self.prompts)
            out["samples"] = {k: list(v) for k, v in self.samples.items()}
        return out

    def to_json(self, path: str | Path, include_samples: bool = False) -> Path:
        """Write ``to_dict`` as JSON (atomically; a non-finite number as ``null``); returns the
        path."""
        return write_json(path, self.to_dict(include_samples))

    @classmethod
    def from_json(cls, path: str | Path) -> TournamentResult:
        """Read a result written by ``to_json`` (samples and prompts if they were included)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))

            def floats(key: str) -> np.ndarray:  # null (a non-finite number) -> NaN
                return np.array(_nulls_to_nan(d[key]), dtype=np.float64)

            arr = {k: floats(k) for k in ("matrix", "lower", "upper")}
            return cls(
                names=list(d["names"]),
                paths=list(d["paths"]),
                prompts=list(d.get("prompts", [])),
                samples={k: list(v) for k, v in d.get("samples", {}).items()},
                mean_win_rate=floats("mean_win_rate"),
                worst_case=floats("worst_case"),
                worst_opponent=list(d["worst_opponent"]),
                meta_nash=floats("meta_nash"),
                meta_value=_float(d["meta_value"]),
                exploitability=floats("exploitability"),
                meta_nash_exploitability=_float(d["meta_nash_exploitability"]),
                labels=d["labels"],
                interval=d["interval"],
                confidence=float(d["confidence"]),
                settings=dict(d.get("settings", {})),
                timings=dict(d.get("timings", {})),
                **arr,
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a tournament result ({first_line(err)})") from None

    def to_csv(self, path: str | Path) -> Path:
        """One row per ordered pair: row, column, P(column > row), interval, number of prompts
        (written atomically)."""
        rows = [["row", "column", "p_column_beats_row", "lower", "upper", "n_prompts"]]
        for r, rn in enumerate(self.names):
            for c, cn in enumerate(self.names):
                rows.append(
                    [
                        rn,
                        cn,
                        _num(self.matrix[r, c]),
                        _num(self.lower[r, c]),
                        _num(self.upper[r, c]),
                        self.n_prompts,
                    ]
                )
        return _write_csv(path, rows)

    def policies_to_csv(self, path: str | Path) -> Path:
        """One row per policy: mean and worst-case win rate, meta-Nash weight, exploitability
        (written atomically)."""
        rows: list[list[Any]] = [
            [
                "policy",
                "path",
                "mean_win_rate",
                "worst_case_win_rate",
                "worst_opponent",
                "meta_nash_weight",
                "exploitability",
            ]
        ]
        for k, name in enumerate(self.names):
            rows.append(
                [
                    name,
                    self.paths[k],
                    _num(self.mean_win_rate[k]),
                    _num(self.worst_case[k]),
                    self.worst_opponent[k],
                    _num(self.meta_nash[k]),
                    _num(self.exploitability[k]),
                ]
            )
        return _write_csv(path, rows)

    def write_samples(self, path: str | Path) -> Path:
        """JSONL, one line per prompt: {"prompt": ..., "responses": {policy: response}}
        (written atomically)."""
        lines = []
        for i, prompt in enumerate(self.prompts):
            responses = {n: self.samples[n][i] for n in self.names if n in self.samples}
            lines.append(dumps({"prompt": prompt, "responses": responses}) + "\n")
        return write_text(path, "".join(lines))

    def summary_table(self) -> str:
        """A plain-text table for the console: the matrix (columns numbered like the rows), then
        one line per policy."""
        names = list(self.names)
        K = len(names)
        tags = [f"[{k + 1}] {n}" for k, n in enumerate(names)]
        width = max(len(t) for t in tags) + 2
        lines = [
            f"P(column beats row) on {self.n_prompts} prompts per pair "
            f"({self.confidence:.0%} {self.interval_name()} intervals in the report)",
            " " * width + "".join(f"{f'[{k + 1}]':>7}" for k in range(K)),
        ]
        for r in range(K):
            cells = "".join(
                f"{'—':>7}" if r == c else f"{self.matrix[r, c]:>7.3f}" for c in range(K)
            )
            lines.append(f"{tags[r]:<{width}}{cells}")
        opp_width = max(len(o) for o in self.worst_opponent) + 2
        lines += [
            "",
            f"{'policy':<{width}}{'mean win':>9}{'worst case':>12}  {'(vs)':<{opp_width}}"
            f"{'meta-Nash':>10}{'exploitability':>16}",
        ]
        for k in range(K):
            lines.append(
                f"{tags[k]:<{width}}{self.mean_win_rate[k]:>9.3f}{self.worst_case[k]:>12.3f}  "
                f"{self.worst_opponent[k]:<{opp_width}}{self.meta_nash[k]:>10.3f}"
                f"{self.exploitability[k]:>16.3f}"
            )
        return "\n".join(lines)


def _num(x: float) -> str:
    """A number for a CSV cell; a non-finite one is an empty cell (never ``nan``)."""
    return f"{float(x):.6g}" if math.isfinite(float(x)) else ""


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _nulls_to_nan(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, list):
        return [_nulls_to_nan(v) for v in x]
    return x


def _write_csv(path: str | Path, rows: list[list[Any]]) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# Checkpoints


def parse_policy_specs(specs: Sequence[str]) -> dict[str, Path]:
    """``["name=path", "path", ...]`` -> ordered ``{name: path}``; a bare path is named after its
    directory. Duplicate names are an error."""
    out: dict[str, Path] = {}
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            raise ValueError("empty policy specification in --policies")
        name, sep, path = spec.partition("=")
        if sep and name and not Path(spec).exists():
            name, p = name.strip(), Path(path.strip())
        else:
            p = Path(spec)
            name = p.resolve().name if p.name in ("", ".", "..") else p.name
        if not name:
            raise ValueError(f"policy {spec!r}: empty name")
        if name in out:
            raise ValueError(
                f"policy name {name!r} appears twice (from {out[name]} and {p}); "
                "name them explicitly as NAME=PATH"
            )
        out[name] = p
    return out


def check_checkpoint(name: str, path: str | Path) -> None:
    """Fail fast with a ``ValueError`` naming policy ``name`` and ``path`` unless ``path`` is a
    loadable causal-LM checkpoint with a tokenizer (see ``nlhf.models.checkpoint``)."""
    check_causal_lm(path, f"policy {name!r}")


def check_pool(
    pool: Mapping[str, str | Path], prompts: Sequence[Any] = (), max_new_tokens: int = 1
) -> list[str]:
    """Check a tournament's pool before any sampling, with ``ValueError`` naming the policy:
    at least two policies, no checkpoint given twice under two names, every checkpoint
    loadable (:func:`check_checkpoint`), and every prompt leaving room for a response in every
    policy's context. Returns warnings (prompts that leave less than ``max_new_tokens``)."""
    if len(pool) < 2:
        raise ValueError(f"a tournament needs at least 2 policies, got {len(pool)}")
    seen: dict[Path, str] = {}
    for name, path in pool.items():
        key = Path(path).resolve()
        if key in seen:
            raise ValueError(
                f"policies {seen[key]!r} and {name!r} are the same checkpoint ({path}); give each "
                "policy once"
            )
        seen[key] = name
    for name, path in pool.items():
        check_checkpoint(name, path)
    return check_prompts(pool, prompts, max_new_tokens) if prompts else []


def check_prompts(
    pool: Mapping[str, str | Path], prompts: Sequence[Any], max_new_tokens: int
) -> list[str]:
    """Every prompt, rendered by each policy's tokenizer, must leave room for a response in
    that policy's context (a ``ValueError`` naming the policy and the prompt otherwise).
    Returns warnings for prompts that leave less than ``max_new_tokens``."""
    warnings: list[str] = []
    for name, path in pool.items():
        warnings += _check_prompts_fit(name, Path(path), list(prompts), max_new_tokens)
    return warnings


def _check_prompts_fit(name: str, path: Path, prompts: list[Any], max_new_tokens: int) -> list[str]:
    """Every prompt, rendered by policy ``name``'s tokenizer, must leave room for a response in
    its context; a warning for prompts that leave less than ``max_new_tokens``."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from nlhf.models.chat import render_prompt_ids
    from nlhf.models.checkpoint import load_tokenizer
    from nlhf.sampling import context_length

    what = f"policy {name!r} ({path})"
    tokenizer = load_tokenizer(path, what)
    limit = context_length(SimpleNamespace(config=AutoConfig.from_pretrained(path)))
    if limit is None:
        return []
    short = 0
    for i, prompt in enumerate(prompts):
        try:
            n = len(render_prompt_ids(tokenizer, prompt))
        except Exception as err:  # noqa: BLE001 - e.g. a chat prompt without a chat template
            raise ValueError(
                f"{what}: cannot render prompt {i + 1} ({_short(prompt)}): {first_line(err)}"
            ) from None
        if n == 0:
            raise ValueError(f"{what}: prompt {i + 1} ({_short(prompt)}) has no tokens")
        if n >= limit:
            raise ValueError(
                f"{what}: prompt {i + 1} ({_short(prompt)}) has {n} tokens, which leaves no room "
                f"for a response in the model's context of {limit} tokens; shorten or drop it"
            )
        short += n + max_new_tokens > limit
    if short:
        return [
            f"policy {name!r}: {short} prompt(s) leave fewer than max_new_tokens="
            f"{max_new_tokens} tokens in its context of {limit}; the responses of their "
            "batches are cut short"
        ]
    return []


def _short(prompt: Any) -> str:
    return f"{str(prompt)!r:.60}"


def load_policy(name: str, path: str | Path, device: str | torch.device = "cpu"):
    """Model (in its stored dtype, eval mode, on ``device``) and tokenizer of policy ``name``."""
    return load_causal_lm(path, f"policy {name!r}", dtype="auto", device=device)


# ----------------------------------------------------------------------------------------------
# Sampling


def _stable_seed(seed: int, *parts: str) -> int:
    """A seed that depends only on ``seed`` and the given names (not on Python's hash salt)."""
    h = zlib.crc32("\x00".join(parts).encode())
    return (int(seed) * 1_000_003 + h) % (2**63 - 1)


def _generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    batch_size: int,
) -> list[str]:
    """One sampled response per prompt (decoded, special tokens removed): ``nlhf.sampling``'s
    KV-cached batched sampler, stopping at EOS."""
    from nlhf.sampling import generate

    samples = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
        batch_size=batch_size,
    )
    return list(samples.texts)


# ----------------------------------------------------------------------------------------------
# Judging


def _judge_pair(
    judge: Judge,
    prompts: list[str],
    col: list[str],
    row: list[str],
    labels: str,
    generator: torch.Generator,
    batch_size: int,
    balance_positions: bool,
    where: str,
    what: str | None = None,
) -> np.ndarray:
    """Per-prompt ``P(col > row)`` (labels="prob") or sampled 0/1 labels (labels="sampled"),
    shape (N,), float64."""
    values = []
    for start in range(0, len(prompts), batch_size):
        idx = range(start, min(start + batch_size, len(prompts)))
        swap = torch.tensor([balance_positions and i % 2 == 1 for i in idx])  # (B,)
        first = [row[i] if s else col[i] for i, s in zip(idx, swap.tolist())]
        second = [col[i] if s else row[i] for i, s in zip(idx, swap.tolist())]
        batch_prompts = [prompts[i] for i in idx]
        label = f"{what or 'judge'} on {where}, prompts {start + 1}-{idx[-1] + 1}"
        try:
            if labels == "sampled":
                out = sample_labels(
                    judge, batch_prompts, first, second, generator=generator, what=label
                )
            else:
                out = judge_prob(judge, batch_prompts, first, second, what=label)
        except JudgeError as err:
            if str(err).startswith(label):
                raise
            # a JudgeError raised inside the judge itself names only the judge
            raise JudgeError(f"{label}: {err}") from err
        out = out.to(torch.float64)  # (B,) checked: finite, in [0, 1], 0/1 when sampled
        values.append(torch.where(swap, 1.0 - out, out))
    return torch.cat(values).numpy()


def _judge_stats(judge: Judge) -> dict[str, Any] | None:
    """A judge's counters (``judge.stats()``, e.g. an LLM judge's requests), if it keeps any."""
    stats = getattr(judge, "stats", None)
    return dict(stats()) if callable(stats) else None


def _judge_report(judge: Judge, stats_before: dict[str, Any] | None) -> dict[str, Any]:
    """``judge_info`` (``judge.describe()``) and ``judge_stats`` (the counters' change during
    this tournament) for judges that provide them."""
    out: dict[str, Any] = {}
    describe = getattr(judge, "describe", None)
    if callable(describe):
        out["judge_info"] = dict(describe())
    if stats_before is not None:
        after = _judge_stats(judge) or {}
        out["judge_stats"] = {
            k: v - stats_before.get(k, 0) if isinstance(v, int | float) else v
            for k, v in after.items()
        }
    return out


def _interval(
    values: np.ndarray, labels: str, interval: str, confidence: float, seed: int
) -> tuple[float, float]:
    if labels == "sampled":
        return clopper_pearson(int(round(values.sum())), values.size, confidence)
    if interval == "t":
        return t_interval(values, confidence)
    return bootstrap_interval(values, confidence, seed=seed)


# ----------------------------------------------------------------------------------------------
# Tournament


def pool_summary(matrix: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Mean and worst-case win rate, meta-Nash mixture and exploitability from a matrix of
    ``P(column > row)``.

    The meta-game's payoff ``P[a, b] = P(a > b) = matrix[b, a]``, i.e. ``matrix.T``. A pure
    policy's exploitability is ``max_q P(q > policy) - 1/2`` over the pool (the policy itself
    included, so it is >= 0 and equals ``1/2 - worst_case`` when the worst case is below 1/2).
    """
    from nlhf.games import exploitability, solve_nash_lp

    M = np.asarray(matrix, dtype=np.float64)
    K = M.shape[0]
    off = ~np.eye(K, dtype=bool)
    wins = np.where(off, M, np.nan)  # (K, K) P(col > row), diagonal masked
    mean_win = np.nanmean(wins, axis=0) if K > 1 else np.full(K, 0.5)
    worst = np.nanmin(wins, axis=0) if K > 1 else np.full(K, 0.5)
    worst_idx = np.nanargmin(np.where(off, M, np.inf), axis=0) if K > 1 else np.zeros(K, int)
    P = M.T.copy()  # P[a, b] = P(a > b)
    pi, value = solve_nash_lp(P)
    pi = np.clip(np.asarray(pi, dtype=np.float64), 0.0, None)
    pi = pi / pi.sum()
    expl = np.array([exploitability(P, np.eye(K)[k]) for k in range(K)], dtype=np.float64)
    return {
        "mean_win_rate": mean_win,
        "worst_case": worst,
        "worst_opponent": [names[int(i)] for i in worst_idx] if K > 1 else ["-"] * K,
        "meta_nash": pi,
        "meta_value": float(value),
        "exploitability": expl,
        "meta_nash_exploitability": float(exploitability(P, pi)),
    }


def run_tournament(
    policies: Mapping[str, str | Path] | Sequence[str | Path],
    prompts: Sequence[str],
    judge: Judge,
    n_prompts: int | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    labels: Literal["sampled", "prob"] = "sampled",
    *,
    temperature: float = 1.0,
    interval: Literal["t", "bootstrap"] = "t",
    confidence: float = 0.95,
    batch_size: int = 64,
    judge_batch_size: int = 256,
    balance_positions: bool = True,
    device: str | torch.device | None = "auto",
    progress: bool = True,
    judge_name: str | None = None,
    judge_spec: str | None = None,
) -> TournamentResult:
    """Compare every pair of ``policies`` on ``prompts`` under ``judge`` (see the module doc).

    ``policies``: ``{name: checkpoint dir}`` (order kept) or a list of ``NAME=PATH`` / paths.
    ``n_prompts``: use the first ``n_prompts`` prompts (``None`` or 0: all of them).
    ``judge_name``: how the report names the judge (default: its class name).
    ``judge_spec``: the ``--judge`` string it came from; a judge's errors name it.
    Each policy samples one response per prompt once; the samples are reused in all its pairs.
    Everything (the pool, every checkpoint, the prompts against every policy's context, the
    device) is checked before any sampling.
    """
    cfg = TournamentConfig(
        n_prompts=n_prompts or 0,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        labels=labels,
        interval=interval,
        confidence=confidence,
        seed=seed,
        batch_size=batch_size,
        judge_batch_size=judge_batch_size,
        balance_positions=balance_positions,
    )
    if isinstance(policies, Mapping):
        pool = {str(k): Path(v) for k, v in policies.items()}
    else:
        pool = parse_policy_specs([str(p) for p in policies])
    if len(pool) < 2:
        raise ValueError(f"a tournament needs at least 2 policies, got {len(pool)}")
    dev = resolve_device(device)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if not ((isinstance(p, str) and p.strip()) or (is_chat(p) and len(p) > 0)):
            raise ValueError(f"prompt {i} is empty or neither text nor chat messages: {p!r}")
    if cfg.n_prompts:
        if cfg.n_prompts > len(prompts):
            raise ValueError(f"n_prompts={cfg.n_prompts} but only {len(prompts)} prompts given")
        prompts = prompts[: cfg.n_prompts]
    what = f"--judge {judge_spec}" if judge_spec else None
    if not callable(getattr(judge, "prob", None)):
        raise ValueError(f"{what or 'judge'} ({judge!r:.80}) has no prob(prompts, a, b) method")

    # 1. Every checkpoint, and every prompt against every policy's context, before any work.
    warnings = check_pool(pool, prompts, max_new_tokens)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    # 2. One response per prompt per policy.
    names = list(pool)
    t0 = time.perf_counter()
    samples: dict[str, list[str]] = {}
    bar = tqdm(total=len(names) * len(prompts), desc="sampling", unit="resp", disable=not progress)
    for name in names:
        bar.set_postfix_str(name)
        model, tokenizer = load_policy(name, pool[name], dev)
        # a CPU generator: the same draws whatever the device
        gen = torch.Generator().manual_seed(_stable_seed(seed, "sample", name))
        samples[name] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            samples[name] += _generate_texts(
                model, tokenizer, chunk, max_new_tokens, temperature, gen, batch_size
            )
            bar.update(len(chunk))
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    t_sample = time.perf_counter() - t0

    # 3-4. Each unordered pair once; the transpose is filled by M[c, r] = 1 - M[r, c].
    K = len(names)
    M = np.full((K, K), 0.5)
    lo = np.full((K, K), 0.5)
    hi = np.full((K, K), 0.5)
    pairs = [(r, c) for r in range(K) for c in range(r + 1, K)]
    t0 = time.perf_counter()
    stats_before = _judge_stats(judge)
    if not progress and isinstance(getattr(judge, "progress", None), bool):
        judge.progress = False  # a judge's own progress bar (e.g. an LLM judge's requests)
    bar = tqdm(pairs, desc="judging", unit="pair", disable=not progress)
    for r, c in bar:
        pair_seed = _stable_seed(seed, "judge", names[r], names[c])
        gen = torch.Generator().manual_seed(pair_seed)
        values = _judge_pair(
            judge,
            prompts,
            samples[names[c]],
            samples[names[r]],
            labels,
            gen,
            judge_batch_size,
            balance_positions,
            where=f"{names[c]} vs {names[r]}",
            what=what,
        )  # (N,) P(col > row) per prompt or 0/1
        p = float(values.mean())
        lower, upper = _interval(values, labels, interval, confidence, pair_seed)
        M[r, c], M[c, r] = p, 1.0 - p
        lo[r, c], hi[r, c] = lower, upper
        lo[c, r], hi[c, r] = 1.0 - upper, 1.0 - lower
        if stats_before is not None:
            stats = _judge_stats(judge)
            bar.set_postfix(requests=stats.get("requests"), cached=stats.get("cache_hits"))
    t_judge = time.perf_counter() - t0

    # 5. The pool's meta-game.
    summary = pool_summary(M, names)
    settings = dataclasses.asdict(cfg)
    settings.pop("policies"), settings.pop("prompts"), settings.pop("output_dir")
    settings.pop("training_curves"), settings.pop("judge")
    settings["n_prompts"] = len(prompts)
    settings["device"] = str(dev)
    settings["judge"] = judge_name or type(judge).__name__
    if judge_spec:
        settings["judge_spec"] = judge_spec
    if warnings:
        settings["warnings"] = warnings
    settings.update(_judge_report(judge, stats_before))
    return TournamentResult(
        names=names,
        paths=[str(pool[n]) for n in names],
        prompts=prompts,
        samples=samples,
        matrix=M,
        lower=lo,
        upper=hi,
        labels=labels,
        interval=interval,
        confidence=confidence,
        settings=settings,
        timings={"sampling_s": round(t_sample, 3), "judging_s": round(t_judge, 3)},
        **summary,
    )
