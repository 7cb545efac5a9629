"""GPU check, prepared for a lent GPU machine: bf16 Nash-MD-PG steps on a SmolLM2-shaped model
plus the speed and memory benchmarks, in one short run (< 5 minutes on one H200).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out "$OUT"     # on the GPU machine
    PYTHONPATH=src python3 benchmarks/gpu_check.py --cpu-smoke      # the same path, tiny, on CPU

The GPU machine has torch, transformers, accelerate and peft but no network, no ``datasets``,
no ``gguf``, and only 64 MiB travel with the working tree, so the real SmolLM2 weights cannot
go. The check builds what it needs locally: a Llama with SmolLM2-135M's exact shape (30 layers,
576 wide, 9 query / 3 key-value heads, MLP 1536, vocabulary 49152, tied embeddings) and random
weights, saved in bf16 like most public checkpoints; a byte-level BPE tokenizer trained on local
text (transformers' own sources) to the same vocabulary size; a reward model of the same shape
as the judge. Speed and memory figures hold for the shape; quality figures mean nothing.

1. environment (torch, CUDA device, transformers, accelerate, peft);
2. Nash-MD-PG, ``--steps`` steps from the bf16 checkpoint with bf16 autocast: seconds per step
   and where they go, peak CUDA memory, the float32 master weights really moving (fraction of
   weights changed), finite metrics;
3. ``benchmarks/bench_policy.py --model CHECKPOINT --mixed-precision bf16`` (nlhf vs trl
   1.13.0 when trl imports, else nlhf alone and the JSON says why);
4. ``benchmarks/bench_memory.py`` (peak CUDA memory of a step, full log-softmax vs lean).

It prints one summary JSON and writes it, with the two benchmark JSONs, to ``--out``. To run
trl there too, carry its wheels (see /work/.library/device/README.md; trl needs ``datasets``,
``dill``, ``multiprocess`` and ``requests`` beside what the machine has).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SHAPE = dict(
    num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0,
    rms_norm_eps=1e-5, tie_word_embeddings=True, vocab_size=49152,
)  # fmt: skip
SMOKE_SHAPE = dict(
    num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
    vocab_size=512,
)  # fmt: skip


def environment() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "peft": peft.__version__,
        "cuda": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def build(workdir: Path, shape: dict, corpus_files: int, seed: int = 0) -> dict:
    """Tokenizer (BPE to the model's vocabulary size), policy saved in bf16, reward model."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlhf.models import RewardModel, random_backbone
    from nlhf.models.tokenizer import build_tokenizer

    t0 = time.perf_counter()
    files = sorted(Path(transformers.__file__).parent.rglob("*.py"))[:corpus_files]
    corpus = [f.read_text(errors="ignore") for f in files]
    tok = build_tokenizer(corpus, kind="bpe", vocab_size=shape["vocab_size"])
    torch.manual_seed(seed)
    ids = dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    policy = LlamaForCausalLM(LlamaConfig(**shape, **ids)).to(torch.bfloat16)
    policy.save_pretrained(workdir / "policy")
    tok.save_pretrained(workdir / "policy")
    backbone = {"model_type": "llama", **{k: v for k, v in shape.items() if k != "vocab_size"}}
    RewardModel(random_backbone(backbone, tok), tok).save_pretrained(workdir / "reward")
    words = " ".join(corpus[:20]).split()
    prompts = []  # 24-token plain-text prompts
    for i in range(64):
        ids = tok(" ".join(words[i * 40 : i * 40 + 40]), add_special_tokens=False)["input_ids"]
        prompts.append(tok.decode(ids[:24]))
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    return {
        "tokenizer_tokens": len(tok),
        "vocab_size": shape["vocab_size"],
        "layers": shape["num_hidden_layers"],
        "hidden_size": shape["hidden_size"],
        "parameters": sum(p.numel() for p in policy.parameters()),
        "checkpoint_dtype": "bfloat16",
        "build_seconds": time.perf_counter() - t0,
    }


def nash_md_steps(workdir: Path, args) -> dict:
    """``args.steps`` Nash-MD-PG steps from the bf16 checkpoint under bf16 autocast."""
    import math

    import torch

    from nlhf.models import load_judge
    from nlhf.models.checkpoint import load_causal_lm
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = "cuda" if cuda else "cpu"
    judge = load_judge(workdir / "reward", device=device, batch_size=args.batch_size)
    prompts = json.loads((workdir / "prompts.json").read_text())
    cfg = PolicyTrainConfig(
        policy=str(workdir / "policy"), output_dir=str(workdir / "nash-md"), steps=args.steps,
        batch_size=args.batch_size, max_new_tokens=args.new_tokens, alternative="mixture",
        beta=0.125, tau=0.008, lr=1e-5, mixed_precision="bf16", checkpoint_every=0,
        progress=False, cpu=not cuda, seed=0,
    )  # fmt: skip
    initial, _ = load_causal_lm(workdir / "policy", dtype="float32", with_tokenizer=False)
    initial = {n: p.detach() for n, p in initial.named_parameters()}
    records, stamps, final = [], [], {}

    def on_step(step, model, record):
        if step == 0:  # the callback's call before the first update
            return
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        records.append(record)
        if step == args.steps:
            final.update({n: p.detach().float().cpu() for n, p in model.named_parameters()})

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train_policy(cfg, prompts=prompts, judge=judge, callback=on_step)
    seconds = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    later = records[1:] or records  # the first step includes one-time set-up
    total = sum(t.numel() for t in initial.values())
    changed = sum(int((final[n] != initial[n]).sum()) for n in initial) / total

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    keys = ("pref/mean", "kl/ref", "loss/total", "grad/norm", "policy/entropy")
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_new_tokens": args.new_tokens,
        "mixed_precision": "bf16",
        "seconds_per_step_median": median(seconds[1:] or seconds),
        "first_step_seconds": seconds[0],
        "sample_seconds_median": median([r["time/sample"] for r in later]),
        "judge_seconds_median": median([r["time/judge"] for r in later]),
        "mean_response_tokens": sum(r["policy/length"] for r in records) / len(records),
        "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "master_weights_dtype": str(next(iter(final.values())).dtype),
        "fraction_of_weights_changed": changed,
        "metrics_finite": all(math.isfinite(r[k]) for r in records for k in keys if k in r),
        "last_metrics": {k: records[-1][k] for k in keys if k in records[-1]},
    }


def run_script(script: str, argv: list[str], timeout: float) -> dict:
    """Run a benchmark script in its own process (same interpreter and path); its JSON."""
    out = Path(argv[argv.index("--out") + 1])
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "exit": proc.returncode}
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU (a test)")
    parser.add_argument("--steps", type=int, default=None, help="Nash-MD-PG steps (default 6)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="response length (64)")
    parser.add_argument("--bench-rounds", type=int, default=2)
    parser.add_argument("--skip-bench", action="store_true", help="only the Nash-MD-PG steps")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    args.steps = args.steps or (2 if smoke else 6)
    args.batch_size = args.batch_size or (2 if smoke else 16)
    args.new_tokens = args.new_tokens or (4 if smoke else 64)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"check": "nlhf GPU check", "cpu_smoke": smoke, "environment": environment()}
    print(json.dumps(summary["environment"]), flush=True)
    if not smoke and not summary["environment"]["cuda"]:
        print("no CUDA device: use --cpu-smoke for the CPU version", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nlhf-gpu-check-") as tmp:
        workdir = Path(tmp)
        shape = SMOKE_SHAPE if smoke else SMOLLM2_SHAPE
        summary["model"] = build(workdir, shape, corpus_files=40 if smoke else 1500)
        print(json.dumps(summary["model"]), flush=True)
        summary["nash_md_pg"] = nash_md_steps(workdir, args)
        print(json.dumps(summary["nash_md_pg"]), flush=True)
        if not args.skip_bench:
            device = ["--device", "cpu" if smoke else "cuda"]
            bench = ["--model", str(workdir / "policy"), "--mixed-precision", "bf16"]
            bench += ["--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens)]
            bench += ["--rounds", str(1 if smoke else args.bench_rounds)]
            bench += ["--steps", "2" if smoke else "3", "--sampling-repeats", "1" if smoke else "3"]
            bench += ["--prompt-tokens", "8" if smoke else "32", "--threads", "1"]
            bench += ["--out", str(args.out / "bench_policy.json"), *device]
            bench += ["--skip-trl"] if smoke else []
            summary["bench_policy"] = run_script("bench_policy.py", bench, timeout=420)
            memory = ["--vocabs", "512" if smoke else "152064", "--lengths"]
            memory += ["8"] if smoke else ["64", "256"]
            memory += ["--out", str(args.out / "bench_memory.json"), *device]
            summary["bench_memory"] = run_script("bench_memory.py", memory, timeout=300)
    summary["wall_seconds"] = time.perf_counter() - start
    from nlhf.jsonio import dumps, write_json

    write_json(args.out / "gpu_check.json", summary)  # non-finite numbers as null
    print(dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
