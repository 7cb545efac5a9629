"""Benchmark: nlhf's Nash-MD-PG trainer vs trl 1.13.0's NashMDTrainer, and mixture sampling cost.

Munos et al. 2024, §6 (Nash-MD-PG). Both trainers get the same models, prompts, batch, response
length, temperature 1, AdamW, full fine-tuning or LoRA (``--lora``):

- default: a GPT-2-shaped policy (4 layers x 256 wide, built from a config, vocabulary 8192)
  and a reward model of the same shape used through Bradley-Terry as the judge; batch 16,
  64 new tokens;
- ``--model PATH``: a real causal LM checkpoint, e.g. SmolLM2-135M-Instruct
  (``nlhf.models.pretrained.smollm2_checkpoint()``, a 30-layer Llama with a 49k vocabulary),
  its tokenizer, and a reward model on the same backbone (a new scalar head); plain-text
  prompts of ``--prompt-tokens`` tokens. The issue's setting: ``--batch-size 4
  --new-tokens 64 --threads 1``.

What is measured, in one invocation, alternating between the two in every round (each run in
its own subprocess so that peak memory is its own):

1. seconds per training step (median over rounds x steps, the first step of a run excluded),
   and for nlhf where the step's time goes (sampling, judge, the rest: log-probs, backward,
   optimizer) from its own metrics;
2. peak memory: CPU peak RSS of the worker process, and the increase over the RSS before
   training started (on CUDA: ``torch.cuda.max_memory_allocated``);
3. mixture sampling time / plain policy sampling time for ``nlhf.sampling.generate`` (one KV
   cache per model; the floor is 2, two models run);
4. whether trl's mixture sampler (``GeometricMixtureWrapper``) samples the token-level mixture
   in this environment: the largest error of the log-probs it samples from against a no-cache
   recomputation (with transformers 5 both of its models write into ONE shared KV cache, and
   the error is of the order of nats: its samples are not Nash-MD-PG's ``y'``).

``--trl-config matched`` (default) runs trl at nlhf's precision without gradient checkpointing;
``defaults`` keeps trl's own online-DPO defaults, bf16 autocast and gradient checkpointing
(slower: what an out-of-the-box trl run does).

trl is NOT a dependency of nlhf. Run this in a separate environment that has it, e.g.

    python3 -m venv .bench-venv
    .bench-venv/bin/pip install torch==2.13.0          # first, pinned
    .bench-venv/bin/pip install trl==1.13.0 requests peft scipy psutil pyyaml matplotlib
    .bench-venv/bin/pip install --no-deps -e .
    .bench-venv/bin/python benchmarks/bench_policy.py --out runs/bench_policy.json
    .bench-venv/bin/python benchmarks/bench_policy.py --batch-size 4 --new-tokens 64 \
        --model ~/.cache/nlhf/smollm2-135m-instruct-float32 --threads 1 --rounds 2 --steps 3

Without trl the benchmark still runs (nlhf only) and the JSON says why trl is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------ set-up


def build(workdir: Path, args) -> dict:
    """Tokenizer, policy and reward model (saved to ``workdir``), prompts; no download."""
    if args.model:
        return build_real(workdir, args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from nlhf.models import RewardModel, random_backbone
    from nlhf.models.tokenizer import build_tokenizer

    # corpus: the Python sources of the installed packages, a realistic local text source
    corpus = _corpus()
    tok = build_tokenizer(corpus, kind="bpe", vocab_size=args.vocab_size)
    prompts = ["<bos>" + p for p in _prompts(tok, corpus, args.prompt_tokens - 1, args.seed)]
    torch.manual_seed(args.seed)
    shape = dict(n_layer=4, n_embd=256, n_head=4, n_positions=256)
    config = GPT2Config(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    policy = GPT2LMHeadModel(config)
    policy.save_pretrained(workdir / "policy")
    tok.save_pretrained(workdir / "policy")
    reward = RewardModel(random_backbone({"model_type": "gpt2", **shape}, tok), tok)
    reward.save_pretrained(workdir / "reward")
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    (workdir / "policy_path").write_text(str(workdir / "policy"))
    return {
        "model": "GPT-2-shaped, random init",
        "vocab_size": len(tok),
        "policy_parameters": sum(p.numel() for p in policy.parameters()),
        "prompt_tokens": args.prompt_tokens,
        **shape,
    }


def build_real(workdir: Path, args) -> dict:
    """A real checkpoint as the policy; a reward model on the same backbone (new scalar head)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from nlhf.models import RewardModel
    from nlhf.models.preference import pretrained_backbone

    path = Path(args.model).expanduser().resolve()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = _prompts(tok, _corpus(), args.prompt_tokens, args.seed)
    torch.manual_seed(args.seed)
    reward = RewardModel(pretrained_backbone(path, 1).float(), tok)
    reward.save_pretrained(workdir / "reward")
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    (workdir / "policy_path").write_text(str(path))
    config = AutoConfig.from_pretrained(path)
    return {
        "model": str(path),
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "policy_parameters": sum(p.numel() for p in reward.backbone.parameters()),
        "prompt_tokens": args.prompt_tokens,
    }


def _corpus() -> list[str]:
    import transformers

    files = sorted(Path(transformers.__file__).parent.rglob("*.py"))[:400]
    return [f.read_text(errors="ignore") for f in files]


def _prompts(tok, corpus: list[str], n_tokens: int, seed: int, count: int = 64) -> list[str]:
    """``count`` plain-text prompts of ``n_tokens`` tokens cut from the corpus."""
    import random

    rng = random.Random(seed)
    words = " ".join(corpus[:50]).split()
    prompts = []
    while len(prompts) < count:
        start = rng.randrange(len(words) - 200)
        ids = tok(" ".join(words[start : start + 200]), add_special_tokens=False)["input_ids"]
        text = tok.decode(ids[:n_tokens])
        if len(tok(text, add_special_tokens=False)["input_ids"]) == n_tokens:  # round trip
            prompts.append(text)
    return prompts


# ------------------------------------------------------------------------------ workers


def worker_nlhf(args) -> dict:
    import torch

    from nlhf.models import load_judge
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    _threads(args.threads)
    device = _device(args.device)
    wd = Path(args.workdir)
    judge = load_judge(wd / "reward", device=device, batch_size=args.batch_size)
    prompts = json.loads((wd / "prompts.json").read_text())
    cfg = PolicyTrainConfig(
        policy=(wd / "policy_path").read_text(),
        output_dir=str(wd / "out-nlhf"),
        steps=args.steps,
        batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        temperature=1.0,
        alternative="mixture",
        beta=args.beta,
        tau=args.tau,
        lr=1e-5,
        max_grad_norm=0.0,
        checkpoint_every=0,
        overwrite=True,  # the same output directory in every round
        progress=False,
        cpu=device == "cpu",
        seed=args.seed,
        lora=args.lora,
        mixed_precision=args.mixed_precision,
    )
    stamps, records = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()

    def on_step(step, model, record):
        if step == 0:  # the callback's call before the first update
            return
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        records.append(record)

    start = time.perf_counter()
    train_policy(cfg, prompts=prompts, judge=judge, callback=on_step)
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return {
        "step_seconds": times,
        "sample_seconds": [r["time/sample"] for r in records],
        "judge_seconds": [r["time/judge"] for r in records],
        "mean_response_tokens": statistics.mean(r["policy/length"] for r in records),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_training_mb": rss0,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer

    _threads(args.threads)
    device = _device(args.device)
    wd = Path(args.workdir)
    policy_path = (wd / "policy_path").read_text()
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    reference = None  # LoRA: trl uses the base model with the adapters disabled
    if not args.lora:
        reference = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(
        wd / "reward", num_labels=1, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(policy_path)
    prompts = json.loads((wd / "prompts.json").read_text())
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0)
    config = NashMDConfig(
        output_dir=str(wd / "out-trl"),
        per_device_train_batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        temperature=1.0,
        mixture_coef=[args.beta],
        beta=[args.tau],
        learning_rate=1e-5,
        max_grad_norm=0.0,
        max_steps=args.steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=device == "cpu",
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # trl's online-DPO configs default to bf16 autocast and gradient checkpointing; nlhf runs
        # neither unless asked. "matched": the same precision as nlhf, no checkpointing;
        # "defaults": trl's own defaults (what an out-of-the-box trl run does)
        bf16=True if args.trl_config == "defaults" else args.mixed_precision == "bf16",
        gradient_checkpointing=args.trl_config == "defaults",
    )
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer = NashMDTrainer(
        model=policy,
        ref_model=reference,
        reward_funcs=reward,
        args=config,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        callbacks=[Stamp()],
        peft_config=peft_config,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    start = time.perf_counter()
    trainer.train()
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return {
        "step_seconds": times,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_training_mb": rss0,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def worker_sampling(args) -> dict:
    """nlhf mixture vs plain sampling, alternating, same batch (one KV cache per model).

    trl's mixture sampling is not timed on its own: called outside its trainer, its
    ``GeometricMixtureWrapper`` behaves differently from inside ``NashMDTrainer`` (where each
    step re-runs both models over the whole prefix), so its cost is reported as part of the
    trl training step only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nlhf.sampling import generate

    _threads(args.threads)
    device = _device(args.device)
    wd = Path(args.workdir)
    policy_path = (wd / "policy_path").read_text()
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    policy, reference = policy.to(device).eval(), reference.to(device).eval()
    tok = AutoTokenizer.from_pretrained(policy_path)
    prompts = json.loads((wd / "prompts.json").read_text())[: args.batch_size]
    gen = torch.Generator(device=device).manual_seed(0)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    plain, mixture, lengths = [], [], []
    kw = dict(max_new_tokens=args.new_tokens, generator=gen)
    generate(policy, tok, prompts, **kw)  # warm-up
    for _ in range(args.sampling_repeats):
        t, s = timed(lambda: generate(policy, tok, prompts, **kw))
        plain.append(t)
        lengths.append(float(s.lengths.float().mean()))
        t, s = timed(
            lambda: generate(policy, tok, prompts, reference=reference, beta=args.beta, **kw)
        )
        mixture.append(t)
        lengths.append(float(s.lengths.float().mean()))
    result = {
        "nlhf": {
            "plain_seconds": statistics.median(plain),
            "mixture_seconds": statistics.median(mixture),
            "ratio": statistics.median(mixture) / statistics.median(plain),
            "mean_response_tokens": statistics.mean(lengths),
        }
    }
    return result


def worker_trl_mixture(args) -> dict:
    """Does trl's ``GeometricMixtureWrapper`` (the sampler of its ``NashMDTrainer``) sample
    the token-level mixture here? The log-probs it samples each token from, against a
    no-cache recomputation ``log_softmax((1 - beta) l_pi + beta l_mu)`` over the full prefix,
    on the benchmark's policy and a perturbed copy as the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from trl.experimental.nash_md.nash_md_trainer import GeometricMixtureWrapper

    _threads(args.threads)
    wd = Path(args.workdir)
    policy_path = (wd / "policy_path").read_text()
    pi = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    mu = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        for p in mu.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a reference that differs from the policy
    tok = AutoTokenizer.from_pretrained(policy_path)
    prompts = json.loads((wd / "prompts.json").read_text())[:2]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = GenerationConfig(
        max_new_tokens=8, do_sample=True, temperature=1.0, eos_token_id=None,
        pad_token_id=tok.pad_token_id or tok.eos_token_id, output_logits=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    wrapper = GeometricMixtureWrapper(pi, mu, gen, args.beta, torch.device("cpu"))
    width = batch["input_ids"].shape[1]
    worst = 0.0
    with torch.no_grad():
        out = wrapper.generate(**batch, generation_config=gen)
        for t, logits in enumerate(out.logits):
            prefix = out.sequences[:, : width + t]
            mask = torch.cat([batch["attention_mask"], torch.ones_like(prefix[:, width:])], 1)
            l_pi = pi(input_ids=prefix, attention_mask=mask).logits[:, -1]
            l_mu = mu(input_ids=prefix, attention_mask=mask).logits[:, -1]
            want = torch.log_softmax((1 - args.beta) * l_pi + args.beta * l_mu, -1)
            got = torch.log_softmax(logits.float(), -1)
            worst = max(worst, float((got - want).abs().max()))
    return {"max_logprob_error_vs_recomputation": worst, "tokens_checked": len(out.logits)}


WORKERS = {
    "nlhf": worker_nlhf,
    "trl": worker_trl,
    "sampling": worker_sampling,
    "trl_mixture": worker_trl_mixture,
}


# ------------------------------------------------------------------------------ driver


def run_worker(kind: str, args, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--workdir", str(workdir)]
    cmd += ["--steps", str(args.steps), "--device", args.device, "--seed", str(args.seed)]
    cmd += ["--beta", str(args.beta), "--tau", str(args.tau)]
    cmd += ["--sampling-repeats", str(args.sampling_repeats)]
    cmd += ["--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens)]
    cmd += ["--mixed-precision", args.mixed_precision] + (["--lora"] if args.lora else [])
    cmd += ["--trl-config", args.trl_config]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result_file = workdir / f"result-{kind}.json"
    cmd += ["--result", str(result_file)]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result_file.read_text())


def summarize(runs: list[dict]) -> dict:
    steps = [t for r in runs for t in r["step_seconds"][1:]]  # drop each run's first step
    out = {
        "seconds_per_step_median": statistics.median(steps),
        "seconds_per_step_mean": statistics.mean(steps),
        "seconds_per_step_min": min(steps),
        "steps_measured": len(steps),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_increase_mb": max(r["peak_rss_mb"] - r["rss_before_training_mb"] for r in runs),
    }
    cuda = [r["cuda_peak_mb"] for r in runs if r.get("cuda_peak_mb") is not None]
    if cuda:
        out["cuda_peak_mb"] = max(cuda)
    if "mean_response_tokens" in runs[0]:
        out["mean_response_tokens"] = statistics.mean(r["mean_response_tokens"] for r in runs)
    if "sample_seconds" in runs[0]:  # nlhf: where the step's time goes (first steps dropped)
        sample = [t for r in runs for t in r["sample_seconds"][1:]]
        judge = [t for r in runs for t in r["judge_seconds"][1:]]
        out["sample_seconds_median"] = statistics.median(sample)
        out["judge_seconds_median"] = statistics.median(judge)
        out["rest_seconds_median"] = statistics.median(
            s - a - j
            for r in runs
            for s, a, j in zip(
                r["step_seconds"][1:], r["sample_seconds"][1:], r["judge_seconds"][1:]
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_policy.json"))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    parser.add_argument("--model", help="a causal-LM checkpoint directory (default: GPT-2-shaped)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per training step")
    parser.add_argument("--new-tokens", type=int, default=64, help="maximum response length")
    parser.add_argument("--lora", action="store_true", help="LoRA (r 8) instead of full")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument(
        "--trl-config",
        default="matched",
        choices=["matched", "defaults"],
        help="trl at nlhf's precision without gradient checkpointing (matched), or with its own "
        "defaults: bf16 autocast and gradient checkpointing",
    )
    parser.add_argument("--vocab-size", type=int, default=8192, help="GPT-2-shaped models")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.125, help="mixture coefficient")
    parser.add_argument("--tau", type=float, default=0.1, help="KL coefficient (trl: beta)")
    parser.add_argument("--sampling-repeats", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    import torch
    import transformers

    trl_version, trl_reason = None, None
    if args.skip_trl:
        trl_reason = "--skip-trl given"
    elif importlib.util.find_spec("trl") is None:
        trl_reason = "trl is not installed in this environment (see the module docstring)"
    else:
        import trl

        trl_version = trl.__version__
    with tempfile.TemporaryDirectory(prefix="nlhf-bench-") as tmp:
        workdir = Path(tmp)
        setup = build(workdir, args)
        print(f"[bench] models built: {setup}", file=sys.stderr)
        runs: dict[str, list[dict]] = {"nlhf": [], "trl": []}
        errors: dict[str, str] = {}
        sampling = []
        for r in range(args.rounds):
            for kind in ("nlhf", "trl"):
                if kind == "trl" and (trl_version is None or "trl" in errors):
                    continue
                try:
                    runs[kind].append(run_worker(kind, args, workdir))
                    last = runs[kind][-1]["step_seconds"]
                    print(
                        f"[bench] round {r} {kind}: {[round(t, 3) for t in last]}", file=sys.stderr
                    )
                except RuntimeError as err:
                    errors[kind] = str(err)
                    print(f"[bench] {err}", file=sys.stderr)
            sampling.append(run_worker("sampling", args, workdir))
        mixture_check = None
        if trl_version is not None:
            try:
                mixture_check = run_worker("trl_mixture", args, workdir)
            except RuntimeError as err:
                mixture_check = {"error": str(err)[-1000:]}
    result = {
        "benchmark": "policy training step: nlhf Nash-MD-PG vs trl NashMDTrainer",
        "setup": {
            **setup,
            "batch_size": args.batch_size,
            "max_new_tokens": args.new_tokens,
            "fine_tuning": "LoRA r 8" if args.lora else "full",
            "mixed_precision": args.mixed_precision,
            "beta (mixture)": args.beta,
            "tau (KL)": args.tau,
            "rounds": args.rounds,
            "steps_per_run": args.steps,
            "device": _device(args.device),
            "threads": args.threads or torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl_version,
        },
        "nlhf": summarize(runs["nlhf"]) if runs["nlhf"] else {"error": errors.get("nlhf")},
    }
    result["setup"]["trl_config"] = args.trl_config
    if mixture_check is not None:
        result["trl_mixture_sampling_check"] = mixture_check
    if trl_version is None:
        result["trl"] = {"available": False, "reason": trl_reason}
    elif runs["trl"]:
        result["trl"] = summarize(runs["trl"])
        result["speedup_trl_over_nlhf"] = (
            result["trl"]["seconds_per_step_median"] / result["nlhf"]["seconds_per_step_median"]
        )
    else:
        result["trl"] = {"available": True, "error": errors.get("trl")}
    result["sampling"] = {
        "nlhf_mixture_over_plain": statistics.median(s["nlhf"]["ratio"] for s in sampling),
        "nlhf_plain_seconds": statistics.median(s["nlhf"]["plain_seconds"] for s in sampling),
        "nlhf_mixture_seconds": statistics.median(s["nlhf"]["mixture_seconds"] for s in sampling),
        "mean_response_tokens": statistics.mean(
            s["nlhf"]["mean_response_tokens"] for s in sampling
        ),
    }
    from nlhf.jsonio import dumps, write_json

    write_json(args.out, result)  # non-finite numbers as null
    print(dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
