"""The demo's stages: each a module-level function ``stage_x(cfg, ..., out)`` that writes its
outputs into ``out`` (so that it can run in a worker process) and reads its inputs from the
directories of earlier stages. The driver (:mod:`nlhf.tasks.demo.command`) wires them up."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.config import save_yaml
from nlhf.jsonio import dumps, write_json
from nlhf.models.judge import check_judge_output, judge_prob
from nlhf.tasks.demo.config import DemoConfig, PolicySpec
from nlhf.tasks.summaries import STYLES, SummaryTask

RATERS = "the task's simulated raters"
# Seeds of the task's prompt streams (SummaryTask.prompts): disjoint sets per use.
PROMPT_SEEDS = {"demonstrations": 1, "comparisons": 2, "policy": 3, "eval": 4, "probe": 5}


def write_lines(path: Path, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        if "\n" in line:
            raise ValueError(f"{path}: line {i} contains a newline")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_policy(path: Path, device: str = "cpu"):
    """A saved policy (float32, eval mode, on ``device``) and its tokenizer."""
    from nlhf.models.checkpoint import load_causal_lm

    return load_causal_lm(path, "policy", device=device)


# --------------------------------------------------------------------------------------------
# 1-4: data, SFT, comparisons, preference and reward models


def stage_task(cfg: DemoConfig, out: Path) -> None:
    """Stage 1: tokenizer, prompt sets, demonstrations and the exact style game."""
    from tqdm.auto import tqdm

    task = SummaryTask.from_config(cfg.task)
    d = cfg.data
    bar = tqdm(total=5, desc="task data", unit="file", leave=False)
    task.tokenizer().save_pretrained(out / "tokenizer")
    bar.update()
    sft_prompts = task.prompts(d.n_demonstrations, seed=PROMPT_SEEDS["demonstrations"])
    demos = task.demonstrations(sft_prompts, seed=PROMPT_SEEDS["demonstrations"])
    with (out / "demonstrations.jsonl").open("w", encoding="utf-8") as f:
        for p, r in zip(sft_prompts, demos):
            f.write(dumps({"prompt": p, "response": r}) + "\n")
    bar.update()
    # extra prompts for comparisons: identical or empty SFT pairs are redrawn from the spare
    n_comparison_prompts = 2 * d.n_comparisons
    write_lines(
        out / "comparison_prompts.txt",
        task.prompts(n_comparison_prompts, seed=PROMPT_SEEDS["comparisons"]),
    )
    bar.update()
    for name, n in (
        ("policy", d.n_policy_prompts),
        ("eval", d.n_eval_prompts),
        ("probe", d.n_probe_prompts),
    ):
        write_lines(out / f"{name}_prompts.txt", task.prompts(n, seed=PROMPT_SEEDS[name]))
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
    write_json(out / "task.json", info)
    save_yaml(cfg.task, out / "task.yaml")
    bar.update()
    bar.close()


def train_sft_policy(cfg: DemoConfig, prompts: list[str], responses: list[str], tokenizer, out):
    """The SFT step itself (``nlhf.train.sft.train_sft``): the reference policy mu."""
    from nlhf.train.sft import train_sft

    sft_cfg = dataclasses.replace(cfg.sft, output_dir=out, tokenizer=None, seed=cfg.seed)
    train_sft(sft_cfg, prompts, responses, tokenizer)


def stage_sft(cfg: DemoConfig, task_dir: Path, out: Path) -> None:
    """Stage 2: SFT the reference policy on the demonstrations."""
    from transformers import AutoTokenizer

    with (task_dir / "demonstrations.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    tokenizer = AutoTokenizer.from_pretrained(task_dir / "tokenizer")
    train_sft_policy(
        cfg, [r["prompt"] for r in rows], [r["response"] for r in rows], tokenizer, out
    )


def stage_comparisons(cfg: DemoConfig, task_dir: Path, sft_dir: Path, out: Path) -> None:
    """Stage 3: two SFT samples per prompt, labelled by a sampled rater group."""
    import torch
    from tqdm.auto import tqdm

    from nlhf.data import Comparison, write_jsonl
    from nlhf.sampling import generate

    task = SummaryTask.from_config(cfg.task)
    judge = task.judge()
    device = cfg.torch_device
    model, tokenizer = load_policy(sft_dir, device)
    prompts = read_lines(task_dir / "comparison_prompts.txt")
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    # the raters draw on the CPU: one stream with sampling there, their own on a GPU
    label_gen = gen if device == "cpu" else torch.Generator().manual_seed(cfg.seed + 4)
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
        labels, groups = judge.sample_labels_with_groups(P, A, B, generator=label_gen)
        check_judge_output(labels, len(P), f"{RATERS}.sample_labels", labels=True)
        exact = judge_prob(judge, P, A, B, what=RATERS)
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
    write_json(out / "stats.json", stats)


def stage_preference(
    cfg: DemoConfig, kind: str, sft_dir: Path, comparisons_dir: Path, out: Path
) -> None:
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
        "cpu": cfg.torch_device == "cpu",
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
        write_json(out / "backbone_config.json", model_cfg)
        pt = PreferenceTrainConfig(random_init=out / "backbone_config.json", **common)
    train = load_comparisons(comparisons_dir / "comparisons.jsonl")
    metrics = train_preference(pt, train=list(train))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # resumable state; the model is kept
    write_json(out / "demo_metrics.json", metrics)


# --------------------------------------------------------------------------------------------
# 5: the style game's exact targets, then the policies


def style_probe(task_dir: Path, tokenizer, temperature: float):
    """The demo's ``FeatureProbe``: style shares from the first response token (a style word is
    one token of the task's word tokenizer) on the probe prompts."""
    from nlhf.tasks.convergence import FeatureProbe

    ids = [tokenizer.convert_tokens_to_ids(s) for s in STYLES]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"the policy's tokenizer has no single token for a style word {STYLES}")
    return FeatureProbe(
        read_lines(task_dir / "probe_prompts.txt"),
        list(STYLES),
        token_ids=ids,
        temperature=temperature,
    )


def salient_summary(task: SummaryTask):
    """``(prompt, style) -> "style w1 w2"``: every salient word, in one style."""
    return lambda prompt, style: " ".join([style, *task.salient_words(prompt)])


def stage_targets(
    cfg: DemoConfig,
    specs: list[PolicySpec],
    task_dir: Path,
    sft_dir: Path,
    preference_dir: Path,
    reward_dir: Path | None,
    out: Path,
) -> None:
    """Stage 5a: the exact targets of every method in the style game (``targets.json``).

    ``mu`` = the SFT policy's style shares on the probe prompts; ``G`` = the learned preference
    model's style game (two summaries with every salient word, differing only in the style
    word); ``pi*_tau`` its regularised Nash equilibrium at the training ``tau``; each Nash-MD
    beta's fixed point; BR's regularised best response to ``mu``; RLHF's ``mu exp(r / tau)``
    with the reward model's mean reward per style; the raters' exact style Nash.
    """
    from nlhf.models import load_judge
    from nlhf.tasks import convergence as cv

    task = SummaryTask.from_config(cfg.task)
    pc = cfg.policy
    device = cfg.torch_device
    sft, tokenizer = load_policy(sft_dir, device)
    probe = style_probe(task_dir, tokenizer, pc.temperature)
    mu_shares = probe.shares(sft, tokenizer)  # (S + 1,)
    mu = cv.renormalized(mu_shares[: len(STYLES)])
    make = salient_summary(task)
    G = cv.feature_game(load_judge(preference_dir, device=device), probe.prompts, make, STYLES)
    pi_star = cv.regularized_nash(G, mu, pc.tau)
    from nlhf.games import solve_nash_lp

    targets: dict[str, Any] = {
        "styles": list(STYLES),
        "tau": pc.tau,
        "rlhf_tau": pc.rlhf_tau,
        "n_probe_prompts": len(probe.prompts),
        "sft_shares": mu_shares.tolist(),
        "mu": mu.tolist(),
        "learned_game": G.tolist(),
        "learned_nash": solve_nash_lp(G)[0].tolist(),
        "pi_star_tau": pi_star.tolist(),
        "raters_game": task.style_game().tolist(),
        "raters_nash": task.nash_style_mixture().tolist(),
        "raters_pi_star_tau": cv.regularized_nash(task.style_game(), mu, pc.tau).tolist(),
        "policies": {},
    }
    if reward_dir is not None:
        rm = load_judge(reward_dir, device=device)
        r = np.array(
            [
                float(rm.reward(probe.prompts, [make(p, s) for p in probe.prompts]).mean())
                for s in STYLES
            ]
        )
        targets["reward_per_style"] = r.tolist()
        targets["reward_game"] = cv.feature_game(rm, probe.prompts, make, STYLES).tolist()
    for spec in specs:
        if spec.reward_model:
            if reward_dir is None:
                raise RuntimeError("RLHF needs the reward model's stage")
            own = cv.reward_optimum(np.array(targets["reward_per_style"]), mu, pc.rlhf_tau)
            what = "mu exp(r / tau) with the reward model's reward per style (tau = rlhf_tau)"
        elif spec.method == "ema":
            own = pi_star
            what = "pi*_tau (the EMA alternative's stationary point)"
        else:
            own = cv.mixture_fixed_point(G, mu, pc.tau, spec.beta)
            what = (
                "pi*_tau (beta 0)"
                if spec.beta == 0
                else f"fixed point of the beta = {spec.beta:g} mixture's regularised best response"
            )
        targets["policies"][spec.name] = {"own_target": own.tolist(), "own_target_is": what}
    write_json(out / "targets.json", targets)


def stage_policy(
    cfg: DemoConfig,
    spec: PolicySpec,
    task_dir: Path,
    sft_dir: Path,
    judge_dir: Path,
    out: Path,
    progress=None,
) -> None:
    """Stage 5: one policy trained from SFT against the learned preference (or reward) model,
    its style shares on the probe prompts written to ``convergence.jsonl`` every
    ``policy.probe_every`` steps. ``progress``: a queue that gets ``(name, steps done)``."""
    from nlhf.tasks.convergence import ConvergenceRecorder
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    pc = cfg.policy
    tc = PolicyTrainConfig(
        policy=str(sft_dir),
        judge=str(judge_dir),
        output_dir=str(out),
        alternative=spec.alternative,
        beta=spec.beta,
        ema_decay=spec.ema_decay or 0.999,
        tau=pc.rlhf_tau if spec.reward_model else pc.tau,
        reward_model=spec.reward_model,
        model_free=pc.model_free and not spec.reward_model,
        steps=pc.steps,
        batch_size=pc.batch_size,
        max_new_tokens=cfg.data.max_new_tokens,
        temperature=pc.temperature,
        lr=pc.lr,
        seed=cfg.seed,
        checkpoint_every=0,
        cpu=cfg.torch_device == "cpu",
        progress=progress is None,
    )
    policy, tokenizer = load_policy(sft_dir)  # the trainer moves it to its device
    recorder = ConvergenceRecorder(
        style_probe(task_dir, tokenizer, pc.temperature),
        tokenizer,
        out / "convergence.jsonl",
        every=pc.probe_every,
        last=pc.steps,
    )

    def callback(step: int, model, record: dict, alternative=None) -> None:
        # step 0 comes before the first update; ``alternative``: the trainer's EMA (EMA*)
        recorder(step, model, record, alternative=alternative)
        if progress is not None and (step % 10 == 0 or step == pc.steps):
            progress.put((spec.name, step))

    train_policy(
        tc,
        prompts=read_lines(task_dir / "policy_prompts.txt"),
        policy_model=policy,
        tokenizer=tokenizer,
        callback=callback,
    )


def stage_tournament(cfg: DemoConfig, task_dir: Path, pool: dict[str, Path], out: Path) -> None:
    """Stage 6: every pair of policies under the exact population preference."""
    from nlhf.eval.tournament import run_tournament

    task = SummaryTask.from_config(cfg.task)
    result = run_tournament(
        pool,
        read_lines(task_dir / "eval_prompts.txt"),
        task.judge(),
        n_prompts=cfg.tournament.n_prompts,
        max_new_tokens=cfg.data.max_new_tokens,
        seed=cfg.seed,
        labels=cfg.tournament.labels,
        device=cfg.torch_device,
        judge_spec=f"builtin:{task_dir.name}/task.yaml",
    )
    result.to_json(out / "tournament.json", include_samples=True)
