"""The paper's experiment end to end on the built-in simulated-raters task.

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), §7 and App. G, on two CPU cores:
the TL;DR summaries become the simulated summary raters of ``nlhf.tasks.summaries`` (a
population of rater groups with a Condorcet cycle of style tastes), the PaLM 2 judge becomes
the task's exact population preference, and the T5 models become small GPT-2-shaped ones.

Stages (each writes under ``OUTPUT_DIR/<stage>/`` and is skipped when its outputs exist and the
hash of its inputs, i.e. its config section and the digests of the artefacts it reads, did not
change; so a re-run after an interruption picks up where it stopped):

1. ``01_task``        task data: tokenizer, SFT demonstrations, prompt sets, the style game;
2. ``02_sft``         SFT a small GPT-2-shaped policy on the demonstrations (the reference mu);
3. ``03_comparisons`` sample response pairs from the SFT policy, label them with sampled raters;
4. ``04_preference``, ``04_reward``: the pairwise preference model and the Bradley-Terry reward
   model, trained on the same comparisons;
5. ``05_<policy>``    RLHF, SP, Nash-MD-PG (several beta), BR and Nash-EMA-PG from the SFT
   policy, with equal step budgets, against the learned models (never the exact judge);
6. ``06_tournament``  every pair of policies (SFT included) under the exact judge;
7. ``07_report``      ``report.md`` with the matrix, heatmap, styles vs the Nash mixture,
   quality, training curves and a reading against the paper's findings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from nlhf.config import add_config_arguments, from_dict, save_yaml, to_dict
from nlhf.tasks.summaries import STYLES, SummaryTask, SummaryTaskConfig
from nlhf.train.sft import SFTConfig

MARKER = ".stage.json"


@dataclass
class DataStageConfig:
    """Sizes of the task data (stages 1 and 3)."""

    n_demonstrations: int = 40000
    """human demonstrations (prompt, summary) for SFT (4000 let the SFT policy memorise them:
    held-out loss 1.91 vs 1.50 on its training demonstrations)"""
    n_comparisons: int = 80000
    """labelled comparisons of two SFT samples (preference- and reward-model training data);
    with one noisy label each, fresh pairs help the models more than extra epochs"""
    n_policy_prompts: int = 2000
    """prompts the policies are trained on"""
    n_eval_prompts: int = 500
    """fresh prompts of the tournament"""
    max_new_tokens: int = 12
    """maximum response length in tokens when sampling (policies, comparisons, tournament)"""

    def __post_init__(self) -> None:
        for name in ("n_demonstrations", "n_comparisons", "n_policy_prompts", "n_eval_prompts"):
            if getattr(self, name) < 10:
                raise ValueError(f"data.{name} must be >= 10, got {getattr(self, name)}")
        if self.max_new_tokens < 2:
            raise ValueError(f"data.max_new_tokens must be >= 2, got {self.max_new_tokens}")


@dataclass
class PreferenceStageConfig:
    """Preference model and reward model (stage 4); both use the same settings and data."""

    init: Literal["sft", "random"] = "sft"
    """backbone: the SFT policy's transformer (as in the paper) or a fresh one of the size below"""
    n_layer: int = 2
    """random init: transformer blocks"""
    n_embd: int = 64
    """random init: hidden size"""
    n_head: int = 4
    """random init: attention heads"""
    epochs: float = 1.0
    """passes over the comparisons"""
    batch_size: int = 64
    """comparisons per step"""
    lr: float = 2e-3
    """peak learning rate"""
    eval_fraction: float = 0.1
    """share of prompts held out to measure accuracy"""

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("preference.epochs, batch_size and lr must be positive")


@dataclass
class PolicyStageConfig:
    """Policy training (stage 5): every method gets the same steps, batch and learning rate."""

    methods: list[str] = field(default_factory=lambda: ["rlhf", "sp", "md", "br", "ema"])
    """methods to train: rlhf, sp (self-play), md (Nash-MD-PG, one per beta), br (best response
    to SFT), ema (Nash-EMA-PG: last iterate and averaged policy)"""
    betas: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5])
    """Nash-MD-PG mixture weights of the reference (paper: 0.125 = MD1 ... 0.75 = MD6)"""
    ema_decay: float = 0.95
    """Nash-EMA-PG parameter averaging (paper: 0.999 over 10,000 steps; scaled to our steps)"""
    tau: float = 0.01
    """KL regularisation of the NLHF methods (paper: 0.008)"""
    rlhf_tau: float = 0.05
    """KL regularisation of RLHF (paper: 0.05)"""
    steps: int = 300
    """optimizer steps per method (equal budgets)"""
    batch_size: int = 32
    """prompts per step"""
    lr: float = 3e-4
    """learning rate (AdamW, constant)"""
    temperature: float = 1.0
    """sampling temperature during training"""
    model_free: bool = False
    """train NLHF methods on sampled 0/1 labels of the preference model instead of P"""

    def __post_init__(self) -> None:
        known = {"rlhf", "sp", "md", "br", "ema"}
        bad = [m for m in self.methods if m not in known]
        if bad or not self.methods:
            raise ValueError(f"policy.methods: unknown {bad}; choose from {sorted(known)}")
        if "md" in self.methods and not self.betas:
            raise ValueError("policy.betas: give at least one beta for md")
        if any(not 0 < b < 1 for b in self.betas):
            raise ValueError(f"policy.betas must be in (0, 1), got {self.betas}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("policy.steps, batch_size and lr must be positive")


@dataclass
class TournamentStageConfig:
    """The tournament under the exact judge (stage 6)."""

    n_prompts: int = 500
    """prompts per pair (at most data.n_eval_prompts)"""
    labels: Literal["sampled", "prob"] = "sampled"
    """sampled: one sampled rater label per prompt, Clopper-Pearson intervals (the paper's
    protocol); prob: the exact preference per prompt, t intervals"""


@dataclass
class DemoConfig:
    """``nlhf demo``: every stage's settings."""

    output_dir: Path = Path("runs/demo")
    """where every stage writes its artefacts (and the report, OUTPUT_DIR/07_report/report.md)"""
    seed: int = 0
    """seed of sampling, training and judging (the task has its own seed)"""
    threads: int = 1
    """torch CPU threads (0 = torch's default); one is fastest for these small models and does
    not stall when other processes share the cores"""
    until: int = 7
    """stop after this stage (1 task data, 2 SFT, 3 comparisons, 4 preference/reward models,
    5 policies, 6 tournament, 7 report)"""
    task: SummaryTaskConfig = field(default_factory=SummaryTaskConfig)
    data: DataStageConfig = field(default_factory=DataStageConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceStageConfig = field(default_factory=PreferenceStageConfig)
    policy: PolicyStageConfig = field(default_factory=PolicyStageConfig)
    tournament: TournamentStageConfig = field(default_factory=TournamentStageConfig)

    def __post_init__(self) -> None:
        if self.tournament.n_prompts > self.data.n_eval_prompts:
            raise ValueError(
                f"tournament.n_prompts ({self.tournament.n_prompts}) exceeds "
                f"data.n_eval_prompts ({self.data.n_eval_prompts})"
            )
        if not 1 <= self.until <= 7:
            raise ValueError(f"until must be a stage number 1..7, got {self.until}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


# ``--quick``: the smoke-test preset (configs/demo-quick.yaml holds the same values).
QUICK: dict[str, Any] = {
    "output_dir": "runs/demo-quick",
    "data": {
        "n_demonstrations": 1500,
        "n_comparisons": 600,
        "n_policy_prompts": 300,
        "n_eval_prompts": 100,
    },
    "sft": {"steps": 250, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32},
    "preference": {"epochs": 1.0, "batch_size": 32},
    "policy": {"steps": 8, "batch_size": 16, "betas": [0.125, 0.5]},
    "tournament": {"n_prompts": 100},
}


# --------------------------------------------------------------------------- stage machinery


def _file_digests(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (the marker excluded), by relative name."""
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.name == MARKER:
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[str(f.relative_to(path))] = h.hexdigest()
    return out


def _combine(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


class Pipeline:
    """Runs named stages under one directory; skips a stage whose inputs and outputs are intact.

    A stage's *input hash* covers its config section and the output digests of the stages it
    reads. Its marker ``<stage>/.stage.json`` (written last, so an interrupted stage has none)
    records that hash and the digest of what it wrote.
    """

    def __init__(self, root: Path, total: int, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.total = total
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def marker(self, name: str) -> dict[str, Any] | None:
        path = self.root / name / MARKER
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def input_hash(self, name: str, inputs: Any, upstream: list[str]) -> str:
        """Hash of ``inputs`` and of what the stage reads upstream: ``"stage"`` (all of its
        outputs) or ``"stage:file1,dir2"`` (only those files / directories)."""
        ups = {}
        for u in upstream:
            stage, _, only = u.partition(":")
            m = self.marker(stage)
            if m is None:
                raise RuntimeError(f"stage {name} needs stage {stage}, which has not run")
            files = m.get("files", {})
            if only:
                keep = only.split(",")
                files = {
                    k: v
                    for k, v in files.items()
                    if any(k == p or k.startswith(p + "/") for p in keep)
                }
                if not files:
                    raise RuntimeError(f"stage {name}: stage {stage} has no output named {keep}")
            ups[u] = _combine(files)
        from nlhf import __version__

        blob = json.dumps(
            {"stage": name, "inputs": inputs, "upstream": ups, "nlhf": __version__},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def run(
        self,
        index: int,
        name: str,
        inputs: Any,
        upstream: list[str],
        fn: Callable[[Path], dict[str, Any] | None],
        title: str,
    ) -> Path:
        """Run ``fn(stage_dir)`` unless the stage is up to date; returns the stage directory."""
        out = self.root / name
        want = self.input_hash(name, inputs, upstream)
        have = self.marker(name)
        if (
            have is not None
            and have.get("input_hash") == want
            and out.is_dir()
            and _file_digests(out) == have.get("files")
        ):
            self.log(f"[{index}/{self.total}] {title}: up to date, skipped ({name})")
            self.skipped.append(name)
            return out
        self.log(f"[{index}/{self.total}] {title} ({name})")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        start = time.time()
        info = fn(out) or {}
        marker = {
            "stage": name,
            "input_hash": want,
            "files": _file_digests(out),
            "seconds": round(time.time() - start, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        self.ran.append(name)
        return out


# --------------------------------------------------------------------------- stages


def _write_lines(path: Path, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        if "\n" in line:
            raise ValueError(f"{path}: line {i} contains a newline")
    path.write_text("".join(line + "\n" for line in lines))


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def stage_task(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """Stage 1: tokenizer, prompt sets, demonstrations and the exact style game."""
    from tqdm.auto import tqdm

    task = SummaryTask.from_config(cfg.task)
    d = cfg.data
    bar = tqdm(total=5, desc="task data", unit="file", leave=False)
    task.tokenizer().save_pretrained(out / "tokenizer")
    bar.update()
    sft_prompts = task.prompts(d.n_demonstrations, seed=1)
    demos = task.demonstrations(sft_prompts, seed=1)
    with (out / "demonstrations.jsonl").open("w") as f:
        for p, r in zip(sft_prompts, demos):
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    bar.update()
    # extra prompts for comparisons: identical or empty SFT pairs are redrawn from the spare
    _write_lines(out / "comparison_prompts.txt", task.prompts(2 * d.n_comparisons, seed=2))
    bar.update()
    _write_lines(out / "policy_prompts.txt", task.prompts(d.n_policy_prompts, seed=3))
    _write_lines(out / "eval_prompts.txt", task.prompts(d.n_eval_prompts, seed=4))
    bar.update()
    nash = task.nash_style_mixture()
    quality = [task.quality(p, r) for p, r in zip(sft_prompts, demos)]
    counts = Counter(task.style_of(r) for r in demos)
    info = {
        "styles": list(STYLES),
        "style_game": task.style_game().tolist(),
        "nash_style_mixture": nash.tolist(),
        "demo_style_prior": list(cfg.task.demo_style_prior),
        "demo_style_freq": [counts[s] / len(demos) for s in STYLES],
        "demo_quality": float(np.mean(quality)),
    }
    (out / "task.json").write_text(json.dumps(info, indent=2) + "\n")
    save_yaml(cfg.task, out / "task.yaml")
    bar.update()
    bar.close()
    return {}


def stage_sft(cfg: DemoConfig, task_dir: Path, out: Path) -> dict[str, Any]:
    """Stage 2: SFT the reference policy on the demonstrations."""
    from transformers import AutoTokenizer

    from nlhf.train.sft import train_sft

    rows = [json.loads(line) for line in (task_dir / "demonstrations.jsonl").open()]
    tokenizer = AutoTokenizer.from_pretrained(task_dir / "tokenizer")
    sft_cfg = dataclasses.replace(cfg.sft, output_dir=out, tokenizer=None, seed=cfg.seed)
    train_sft(sft_cfg, [r["prompt"] for r in rows], [r["response"] for r in rows], tokenizer)
    return {}


def _load_policy(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def stage_comparisons(cfg: DemoConfig, task_dir: Path, sft_dir: Path, out: Path) -> dict:
    """Stage 3: two SFT samples per prompt, labelled by a sampled rater group."""
    import torch
    from tqdm.auto import tqdm

    from nlhf.data import Comparison, write_jsonl
    from nlhf.sampling import generate

    task = SummaryTask.from_config(cfg.task)
    judge = task.judge()
    model, tokenizer = _load_policy(sft_dir)
    prompts = _read_lines(task_dir / "comparison_prompts.txt")
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    need, rows, dropped = cfg.data.n_comparisons, [], 0
    exact_agree, bayes = [], []
    chunk = 256
    bar = tqdm(total=need, desc="comparisons", unit="pair", leave=False)
    for start in range(0, len(prompts), chunk):
        batch = prompts[start : start + chunk]
        a = generate(model, tokenizer, batch, cfg.data.max_new_tokens, generator=gen).texts
        b = generate(model, tokenizer, batch, cfg.data.max_new_tokens, generator=gen).texts
        keep = [i for i in range(len(batch)) if a[i].strip() and b[i].strip() and a[i] != b[i]]
        dropped += len(batch) - len(keep)
        keep = keep[: need - len(rows)]
        P = [batch[i] for i in keep]
        A = [a[i] for i in keep]
        B = [b[i] for i in keep]
        labels, groups = judge.sample_labels_with_groups(P, A, B, generator=gen)
        exact = judge.prob(P, A, B)
        exact_agree += ((exact > 0.5).float() == labels).tolist()
        bayes += torch.maximum(exact, 1 - exact).tolist()
        for p, x, y, lab, g in zip(P, A, B, labels.tolist(), groups.tolist()):
            rows.append(Comparison(p, x, y, float(lab), rater=f"group{g + 1}"))
        bar.update(len(keep))
        if len(rows) >= need:
            break
    bar.close()
    if len(rows) < need:
        raise ValueError(
            f"data.n_comparisons: only {len(rows)} distinct non-empty SFT pairs in "
            f"{len(prompts)} prompts (the SFT policy is nearly deterministic)"
        )
    write_jsonl(rows, out / "comparisons.jsonl")
    stats = {
        "n": len(rows),
        "dropped_identical_or_empty": dropped,
        "label_mean": float(np.mean([r.label for r in rows])),
        # how often a sampled label agrees with the exact majority, and its expectation
        "label_agrees_with_exact": float(np.mean(exact_agree)),
        "bayes_accuracy": float(np.mean(bayes)),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return {}


def stage_preference(
    cfg: DemoConfig, kind: str, sft_dir: Path, comparisons_dir: Path, out: Path
) -> dict:
    """Stage 4: train the pairwise preference model or the Bradley-Terry reward model."""
    from nlhf.data import load_comparisons
    from nlhf.train.preference import PreferenceTrainConfig, train_preference

    pc = cfg.preference
    common = {
        "kind": kind,
        "output_dir": out,
        "epochs": pc.epochs,
        "batch_size": pc.batch_size,
        "lr": pc.lr,
        "eval_fraction": pc.eval_fraction,
        "seed": cfg.seed,
        "tokenizer": str(sft_dir),
    }
    if pc.init == "sft":
        pt = PreferenceTrainConfig(model=str(sft_dir), **common)
    else:
        model_cfg = {
            "model_type": "gpt2",
            "n_layer": pc.n_layer,
            "n_embd": pc.n_embd,
            "n_head": pc.n_head,
            "n_positions": 3 * cfg.sft.n_positions,
        }
        (out / "backbone_config.json").write_text(json.dumps(model_cfg))
        pt = PreferenceTrainConfig(random_init=out / "backbone_config.json", **common)
    train = load_comparisons(comparisons_dir / "comparisons.jsonl")
    metrics = train_preference(pt, train=list(train))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # resumable state; the model is kept
    (out / "demo_metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return {}


def policy_specs(cfg: DemoConfig) -> list[dict[str, Any]]:
    """One training run per method (and per beta for Nash-MD), in the report's order."""
    pc = cfg.policy
    specs = []
    for m in pc.methods:
        if m == "rlhf":
            specs.append({"name": "RLHF", "alternative": "self", "reward_model": True})
        elif m == "sp":
            specs.append({"name": "SP", "alternative": "self"})
        elif m == "md":
            for b in pc.betas:
                specs.append({"name": f"MD{b:g}", "alternative": "mixture", "beta": b})
        elif m == "br":
            specs.append({"name": "BR", "alternative": "reference"})
        elif m == "ema":
            specs.append({"name": "EMA", "alternative": "ema", "ema_decay": pc.ema_decay})
    return specs


def stage_policy(
    cfg: DemoConfig, spec: dict, task_dir: Path, sft_dir: Path, judge_dir: Path, out: Path
) -> dict:
    """Stage 5: one policy trained from SFT against the learned preference (or reward) model."""
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    pc = cfg.policy
    rlhf = bool(spec.get("reward_model"))
    tc = PolicyTrainConfig(
        policy=str(sft_dir),
        judge=str(judge_dir),
        output_dir=str(out),
        alternative=spec["alternative"],
        beta=spec.get("beta", 0.0),
        ema_decay=spec.get("ema_decay", 0.999),
        tau=pc.rlhf_tau if rlhf else pc.tau,
        reward_model=rlhf,
        model_free=pc.model_free and not rlhf,
        steps=pc.steps,
        batch_size=pc.batch_size,
        max_new_tokens=cfg.data.max_new_tokens,
        temperature=pc.temperature,
        lr=pc.lr,
        seed=cfg.seed,
        checkpoint_every=0,
        cpu=True,
    )
    train_policy(tc, prompts=_read_lines(task_dir / "policy_prompts.txt"))
    return {}


def stage_tournament(cfg: DemoConfig, task_dir: Path, pool: dict[str, Path], out: Path) -> dict:
    """Stage 6: every pair of policies under the exact population preference."""
    from nlhf.eval.tournament import run_tournament

    task = SummaryTask.from_config(cfg.task)
    result = run_tournament(
        pool,
        _read_lines(task_dir / "eval_prompts.txt"),
        task.judge(),
        n_prompts=cfg.tournament.n_prompts,
        max_new_tokens=cfg.data.max_new_tokens,
        seed=cfg.seed,
        labels=cfg.tournament.labels,
        device="cpu",
    )
    result.to_json(out / "tournament.json", include_samples=True)
    return {}


# --------------------------------------------------------------------------- the reading


def _p(result, a: str, b: str) -> tuple[float, float, float]:
    """P(a > b) with its interval (the matrix holds P(column > row))."""
    i, j = result.names.index(b), result.names.index(a)
    return float(result.matrix[i, j]), float(result.lower[i, j]), float(result.upper[i, j])


def _verdict(p: tuple[float, float, float]) -> str:
    est, lo, hi = p
    if lo > 0.5:
        return "yes"
    if hi < 0.5:
        return "no (reversed, significant)"
    return "not significant" + (" (leans yes)" if est > 0.5 else " (leans no)")


def _fmt(p: tuple[float, float, float]) -> str:
    return f"{p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}]"


def paper_reading(result, md_names: list[str]) -> str:
    """Each of the paper's §7 findings, checked against this tournament's numbers."""
    names = list(result.names)
    trained = [n for n in names if n != "SFT"]
    lines = [
        "Each finding of the paper (§7, Table 1) is checked on this run's matrix. *agrees*: "
        "every interval involved excludes 1/2 in the paper's direction; *disagrees*: some "
        "interval excludes 1/2 in the opposite direction (for BR: another trained policy has a "
        "lower mean win rate); *inconclusive*: otherwise.",
        "",
        "| paper's finding | this run | verdict |",
        "|---|---|---|",
    ]
    verdicts: dict[str, bool | None] = {}

    def agg(ps: list[tuple[float, float, float]]) -> bool | None:
        if all(p[1] > 0.5 for p in ps):
            return True
        if any(p[2] < 0.5 for p in ps):
            return False
        return None

    if "SFT" in names and trained:
        ps = {n: _p(result, n, "SFT") for n in trained}
        verdicts["sft"] = agg(list(ps.values()))
        worst = min(ps, key=lambda n: ps[n][0])
        lines.append(
            "| every method beats SFT | "
            + f"{sum(p[1] > 0.5 for p in ps.values())}/{len(ps)} significantly; weakest "
            + f"{worst} {_fmt(ps[worst])} | {_v(verdicts['sft'])} |"
        )
    md1 = min(md_names, key=lambda n: float(n[2:])) if md_names else None
    if md1 is not None:
        others = [n for n in names if n != md1]
        ps = {n: _p(result, md1, n) for n in others}
        verdicts["md1"] = agg(list(ps.values()))
        worst = min(ps, key=lambda n: ps[n][0])
        lines.append(
            f"| small-beta Nash-MD ({md1}) beats every other policy | "
            f"{sum(p[1] > 0.5 for p in ps.values())}/{len(ps)} significantly; closest "
            f"{worst} {_fmt(ps[worst])} | {_v(verdicts['md1'])} |"
        )
    if "BR" in names and len(trained) > 1:
        win = {n: float(result.mean_win_rate[names.index(n)]) for n in trained}
        lowest = min(win, key=win.get)
        verdicts["br"] = lowest == "BR"
        also = "" if lowest == "BR" else f"; BR {win['BR']:.3f}"
        lines.append(
            "| BR is the worst trained policy | lowest mean win rate among trained policies: "
            f"{lowest} ({win[lowest]:.3f}{also}) | {_v(verdicts['br'])} |"
        )
    emas = [n for n in names if n.startswith("EMA")]
    if md1 is not None and emas:
        ps = {n: _p(result, md1, n) for n in emas}
        verdicts["ema"] = agg(list(ps.values()))
        lines.append(
            f"| EMA trails Nash-MD | P({md1} > ·): "
            + "; ".join(f"{n} {_fmt(p)}" for n, p in ps.items())
            + f" | {_v(verdicts['ema'])} |"
        )
    mid = [n for n in md_names if 0.1 <= float(n[2:]) <= 0.4]
    if mid and "SP" in names and "BR" in names:
        ps = [_p(result, n, o) for n in mid for o in ("SP", "BR")]
        verdicts["mid"] = agg(ps)
        lines.append(
            "| intermediate beta (0.125-0.375) beats both SP and BR | "
            + "; ".join(f"{n} vs {o}: {_fmt(_p(result, n, o))}" for n in mid for o in ("SP", "BR"))
            + f" | {_v(verdicts['mid'])} |"
        )
    agree = sum(v is True for v in verdicts.values())
    against = sum(v is False for v in verdicts.values())
    lines += [
        "",
        f"**Summary:** {agree} of {len(verdicts)} findings reproduced significantly, "
        f"{against} contradicted, {len(verdicts) - agree - against} inconclusive at "
        f"{result.n_prompts} prompts per pair.",
    ]
    return "\n".join(lines)


def _v(v: bool | None) -> str:
    return {True: "agrees", False: "disagrees", None: "inconclusive"}[v]


def learned_style_game(judge, task: SummaryTask, prompts: list[str]) -> np.ndarray:
    """(S, S) mean ``P(style i > style j)`` under ``judge`` for two summaries with the same
    content (every salient word) that differ only in their style word."""
    S = len(STYLES)
    out = np.full((S, S), 0.5)
    content = [" ".join(task.salient_words(p)) for p in prompts]
    for i in range(S):
        for j in range(S):
            if i != j:
                a = [f"{STYLES[i]} {c}" for c in content]
                b = [f"{STYLES[j]} {c}" for c in content]
                out[i, j] = float(judge.prob(prompts, a, b).mean())
    return out


def _style_game_md(games: dict[str, np.ndarray]) -> str:
    pairs = [(0, 1), (1, 2), (2, 0)]
    head = "| judge | " + " | ".join(f"P({STYLES[i]} > {STYLES[j]})" for i, j in pairs)
    lines = [head + " | cyclic? | Nash of its style game |", "|---|" + "---:|" * 5]
    from nlhf.games import solve_nash_lp

    for name, G in games.items():
        cyc = all(G[i, j] > 0.5 for i, j in pairs) or all(G[i, j] < 0.5 for i, j in pairs)
        nash, _ = solve_nash_lp(G)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{G[i, j]:.3f}" for i, j in pairs)
            + f" | {'yes' if cyc else 'no'} | "
            + ", ".join(f"{s} {x:.2f}" for s, x in zip(STYLES, nash))
            + " |"
        )
    return "\n".join(lines)


def what_happened(
    result,
    task: SummaryTask,
    games: dict[str, np.ndarray],
    accuracy: dict[str, float],
    bayes: float,
) -> str:
    """A few sentences, computed from the numbers, on why the matrix looks the way it does."""
    names = list(result.names)
    styles = {}
    quality = {}
    for n in names:
        resp = result.samples.get(n, [])
        if not resp:
            continue
        counts = Counter(task.style_of(r) for r in resp)
        styles[n] = {s: counts[s] / len(resp) for s in (*STYLES, "none")}
        quality[n] = float(np.mean([task.quality(p, r) for p, r in zip(result.prompts, resp)]))
    lines = []
    if "SFT" in quality:
        q0 = quality["SFT"]
        better = [n for n in quality if n != "SFT" and quality[n] > q0]
        lines.append(
            f"- Quality: SFT {q0:.2f}; "
            + ", ".join(f"{n} {quality[n]:.2f}" for n in quality if n != "SFT")
            + f" ({len(better)}/{len(quality) - 1} trained policies above SFT; an ideal summary "
            "scores 2.0)."
        )
    for n, dist in styles.items():
        top = max(STYLES, key=lambda s: dist[s])
        if n != "SFT" and dist[top] >= 0.8:
            lines.append(f"- {n} collapsed onto one style: {dist[top]:.0%} `{top}`.")
    dominant: dict[str, list[str]] = {}
    for n, dist in styles.items():
        top = max(STYLES, key=lambda s: dist[s])
        if n != "SFT" and dist[top] >= 0.8:
            dominant.setdefault(top, []).append(n)
    exact = task.style_game()
    tops = sorted(dominant)
    for i, a in enumerate(tops):
        for b in tops[i + 1 :]:
            p_ab = exact[STYLES.index(a), STYLES.index(b)]
            win, lose = (a, b) if p_ab > 0.5 else (b, a)
            lines.append(
                f"- Under the exact raters `{win}` beats `{lose}` "
                f"{max(p_ab, 1 - p_ab):.3f} in the style game, so the `{win}` policies "
                f"({', '.join(dominant[win])}) are favoured over the `{lose}` policies "
                f"({', '.join(dominant[lose])}) whenever quality is similar."
            )
    nash = task.nash_style_mixture()
    tv = {
        n: 0.5 * (sum(abs(d[s] - w) for s, w in zip(STYLES, nash)) + d["none"])
        for n, d in styles.items()
    }
    trained_tv = {n: v for n, v in tv.items() if n != "SFT"}
    if trained_tv:
        closest = min(trained_tv, key=trained_tv.get)
        lines.append(
            "- Closest trained policy to the Nash mixture of the exact style game: "
            f"{closest} (total variation {tv[closest]:.2f}; SFT {tv.get('SFT', float('nan')):.2f})."
        )
    pairs = [(0, 1), (1, 2), (2, 0)]
    for name, G in games.items():
        if name == "exact raters":
            continue
        cyclic = all(G[i, j] > 0.5 for i, j in pairs) or all(G[i, j] < 0.5 for i, j in pairs)
        wins = {s: sum(G[STYLES.index(s), j] > 0.5 for j in range(len(STYLES))) for s in STYLES}
        order = sorted(STYLES, key=lambda s: (-wins[s], -G[STYLES.index(s)].mean()))
        lines.append(
            f"- The {name} "
            + (
                "learned a style cycle, so its Nash solution is a mixture."
                if cyclic
                else f"ranks the styles transitively ({' > '.join(order)}), so a policy that "
                f"optimises it is pushed toward `{order[0]}`."
            )
        )
    if accuracy:
        worst = min(accuracy.values())
        gap = bayes - worst
        lines.append(
            "- Held-out accuracy of the learned models: "
            + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
            + f" against a label-noise ceiling of {bayes:.3f}"
            + (
                ". The gap means the small models miss much of what the raters reward "
                "(mostly content: whether a word is in the document, which needs matching "
                "words across the prompt), so the policies optimise what the models did learn."
                if gap > 0.05
                else "."
            )
        )
    return "\n".join(lines)


def _stage_seconds(root: Path) -> dict[str, float]:
    out = {}
    for marker in sorted(root.glob(f"*/{MARKER}")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            out[marker.parent.name] = float(json.loads(marker.read_text())["seconds"])
    return out


def stage_report(
    cfg: DemoConfig, root: Path, stage_dirs: dict[str, Path], pool: dict[str, Path], out: Path
) -> dict:
    """Stage 7: the report (E's ``write_report``) plus the task- and paper-specific sections."""
    from nlhf.eval.report import task_sections, write_report
    from nlhf.eval.tournament import TournamentResult

    task = SummaryTask.from_config(cfg.task)
    result = TournamentResult.from_json(stage_dirs["tournament"] / "tournament.json")
    sections, figures = task_sections(result, task, out)
    md_names = [n for n in result.names if n.startswith("MD")]
    sections = [("Against the paper's findings", paper_reading(result, md_names)), *sections]

    task_info = json.loads((stage_dirs["task"] / "task.json").read_text())
    comp = json.loads((stage_dirs["comparisons"] / "stats.json").read_text())
    rows = []
    for kind in ("preference", "reward"):
        f = stage_dirs[kind] / "eval.json"
        m = json.loads(f.read_text()) if f.is_file() else {}
        acc, ll = m.get("eval/accuracy"), m.get("eval/log_loss")
        rows.append(
            f"| {kind} model | {acc:.3f} | {ll:.3f} |"
            if isinstance(acc, float) and isinstance(ll, float)
            else f"| {kind} model | n/a | n/a |"
        )
    data_md = "\n".join(
        [
            f"- SFT demonstrations: {cfg.data.n_demonstrations}, mean quality "
            f"{task_info['demo_quality']:.2f}, style frequencies "
            + ", ".join(f"{s} {x:.2f}" for s, x in zip(STYLES, task_info["demo_style_freq"]))
            + " (the Nash mixture of the style game is "
            + ", ".join(f"{s} {x:.2f}" for s, x in zip(STYLES, task_info["nash_style_mixture"]))
            + ").",
            f"- Comparisons: {comp['n']} pairs of SFT samples, one sampled rater each "
            f"({comp['dropped_identical_or_empty']} identical or empty pairs redrawn); a sampled "
            f"label agrees with the exact majority preference {comp['label_agrees_with_exact']:.3f}"
            f" of the time (expected {comp['bayes_accuracy']:.3f}): the ceiling for any learned "
            "model's held-out accuracy.",
            "",
            "| model | held-out accuracy | held-out log-loss |",
            "|---|---:|---:|",
            *rows,
            "",
            "Paper (TL;DR, same-size T5X-XL models): preference model ~0.78, reward model ~0.76.",
        ]
    )
    from nlhf.models import load_judge

    probe = _read_lines(stage_dirs["task"] / "eval_prompts.txt")[:200]
    games = {"exact raters": task.style_game()}
    for kind in ("preference", "reward"):
        if kind in stage_dirs:
            judge = load_judge(stage_dirs[kind], device="cpu")
            games[f"learned {kind} model"] = learned_style_game(judge, task, probe)
    data_md += (
        "\n\nWhat the learned models believe about style: two summaries with the same content "
        "(every salient word) that differ only in their style word, averaged over 200 "
        "tournament prompts. The exact raters' style game is a Condorcet cycle; a reward model "
        "(Bradley-Terry) cannot represent one, a pairwise preference model can.\n\n"
        + _style_game_md(games)
    )
    sections.append(("Data, preference model and reward model", data_md))
    accuracy = {}
    for kind in ("preference", "reward"):
        f = stage_dirs[kind] / "eval.json" if kind in stage_dirs else None
        if f is not None and f.is_file():
            acc = json.loads(f.read_text()).get("eval/accuracy")
            if isinstance(acc, float):
                accuracy[f"{kind} model"] = acc
    sections.insert(
        1,
        (
            "What happened, and why",
            what_happened(result, task, games, accuracy, comp["bayes_accuracy"]),
        ),
    )

    secs = _stage_seconds(root)
    timing = "\n".join(
        ["| stage | seconds |", "|---|---:|"]
        + [f"| {k} | {v:.1f} |" for k, v in secs.items()]
        + [f"| **total** | {sum(secs.values()):.1f} |"]
    )
    pc = cfg.policy
    setup = (
        f"Every policy starts from SFT and takes {pc.steps} steps of {pc.batch_size} prompts "
        f"(lr {pc.lr:g}); NLHF methods (SP, Nash-MD, BR, EMA) train against the learned "
        f"preference model with tau = {pc.tau:g}, RLHF against the reward model with tau = "
        f"{pc.rlhf_tau:g}; EMA decay {pc.ema_decay:g} (EMA = last iterate, EMA* = the averaged "
        "policy). Nash-MD-PG: the alternative samples from the token-level mixture "
        "pi^(1-beta) mu^beta; SP = beta 0, BR = beta 1. The judge of the tournament is the "
        "task's exact population preference, which no policy ever trained against.\n\n" + timing
    )
    sections.append(("Set-up and stage timings", setup))
    curves = {n: p / "metrics.jsonl" for n, p in pool.items() if (p / "metrics.jsonl").is_file()}
    curves = {n: p for n, p in curves.items() if n != "EMA*"}
    write_report(
        result,
        out,
        training_curves=curves,
        sections=sections,
        figures=figures,
        title="nlhf demo: the paper's experiment on the simulated summary raters",
    )
    return {}


# --------------------------------------------------------------------------- driver


def run_demo(cfg: DemoConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the stages of the demo up to ``cfg.until``; returns the path of
    ``report.md`` (or of the output directory when stopping earlier)."""
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, root / "config.yaml")
    specs = policy_specs(cfg)
    pipe = Pipeline(root, total=7, log=log)
    sec = lambda x: to_dict(x)  # noqa: E731  (config sections enter the hashes as plain dicts)

    dirs: dict[str, Path] = {}
    dirs["task"] = pipe.run(
        1,
        "01_task",
        {"task": sec(cfg.task), "data": sec(cfg.data)},
        [],
        lambda out: stage_task(cfg, out),
        "task data",
    )
    if cfg.until == 1:
        return root
    sft_inputs = {"sft": {**sec(cfg.sft), "output_dir": None}, "seed": cfg.seed}
    dirs["sft"] = pipe.run(
        2,
        "02_sft",
        sft_inputs,
        ["01_task:demonstrations.jsonl,tokenizer"],
        lambda out: stage_sft(cfg, dirs["task"], out),
        "SFT",
    )
    if cfg.until == 2:
        return root
    d = cfg.data
    dirs["comparisons"] = pipe.run(
        3,
        "03_comparisons",
        {
            "task": sec(cfg.task),
            "n_comparisons": d.n_comparisons,
            "max_new_tokens": d.max_new_tokens,
            "seed": cfg.seed,
        },
        ["01_task:comparison_prompts.txt", "02_sft"],
        lambda out: stage_comparisons(cfg, dirs["task"], dirs["sft"], out),
        "comparisons from sampled raters",
    )
    need_reward = any(s.get("reward_model") for s in specs)
    kinds = [("preference", "pairwise")] + ([("reward", "reward")] if need_reward else [])
    for key, kind in kinds:
        dirs[key] = pipe.run(
            4,
            f"04_{key}",
            {"preference": sec(cfg.preference), "kind": kind, "seed": cfg.seed},
            ["02_sft", "03_comparisons"],
            lambda out, kind=kind: stage_preference(
                cfg, kind, dirs["sft"], dirs["comparisons"], out
            ),
            f"{key} model",
        )
    if cfg.until <= 4:
        return root
    pool: dict[str, Path] = {"SFT": dirs["sft"]}
    policy_common = {k: v for k, v in sec(cfg.policy).items() if k not in ("methods", "betas")}
    for spec in specs:
        judge_key = "reward" if spec.get("reward_model") else "preference"
        name = f"05_{spec['name'].lower()}"
        policy_dir = pipe.run(
            5,
            name,
            {
                "spec": spec,
                "policy": policy_common,
                "max_new_tokens": cfg.data.max_new_tokens,
                "seed": cfg.seed,
            },
            ["01_task:policy_prompts.txt", "02_sft", f"04_{judge_key}"],
            lambda out, spec=spec, jk=judge_key: stage_policy(
                cfg, spec, dirs["task"], dirs["sft"], dirs[jk], out
            ),
            f"policy {spec['name']}",
        )
        pool[spec["name"]] = policy_dir
        if spec["alternative"] == "ema":
            pool["EMA*"] = policy_dir / "ema"
    policy_stages = [f"05_{s['name'].lower()}" for s in specs]
    if cfg.until == 5:
        return root
    dirs["tournament"] = pipe.run(
        6,
        "06_tournament",
        {
            "tournament": sec(cfg.tournament),
            "task": sec(cfg.task),
            "pool": {k: str(v.relative_to(root)) for k, v in pool.items()},
            "max_new_tokens": cfg.data.max_new_tokens,
            "seed": cfg.seed,
        },
        ["01_task:eval_prompts.txt", "02_sft", *policy_stages],
        lambda out: stage_tournament(cfg, dirs["task"], pool, out),
        "tournament under the exact judge",
    )
    if cfg.until == 6:
        return root
    report_dir = pipe.run(
        7,
        "07_report",
        {"config": {k: v for k, v in sec(cfg).items() if k not in ("output_dir", "until")}},
        [
            "01_task:task.json",
            "03_comparisons:stats.json",
            *[f"04_{k}" for k, _ in kinds],
            "06_tournament",
        ],
        lambda out: stage_report(cfg, root, dirs, pool, out),
        "report",
    )
    return report_dir / "report.md"


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smoke-test preset (configs/demo-quick.yaml, under 3 minutes); --config and "
        "flags still override it",
    )
    add_config_arguments(parser, DemoConfig)


def resolve_config(args: argparse.Namespace) -> DemoConfig:
    """defaults < --quick preset < --config YAML < flags."""
    data: dict[str, Any] = dict(QUICK) if getattr(args, "quick", False) else {}
    where = "arguments"
    if getattr(args, "config", None) is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping of field: value")
        from_dict(DemoConfig, _deep_merge(to_dict(DemoConfig()), loaded), where=str(path))
        data = _deep_merge(data, loaded)
        where = str(path)
    flags: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg:"):
            node = flags
            parts = key[4:].split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
    cfg = from_dict(DemoConfig, _deep_merge(data, flags), where=where)
    if getattr(args, "save_config", None) is not None:
        save_yaml(cfg, args.save_config)
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    start = time.time()
    report = run_demo(cfg)
    what = "report" if cfg.until == 7 else f"stopped after stage {cfg.until}"
    print(f"{what}: {report}  ({time.time() - start:.0f} s)")
    return 0
