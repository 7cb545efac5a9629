"""Benchmark: peak memory of one policy-gradient step, full-vocabulary log-softmax vs the
memory-lean token log-probs of ``nlhf.sampling.token_logprobs``.

The step is what ``nlhf train`` does between sampling and the optimizer: the policy's token
log-probs of a sampled response (with gradient) and its entropy, the reference's log-probs (no
gradient), the surrogate loss (``nlhf.train.policy.policy_gradient_loss``) and ``backward()``.

- ``old``: the formula the trainer used before, kept here only for the comparison: the model's
  (B, T, V) logits, ``log_softmax(logits.float() / T)`` kept for backward, the reference's
  logits and log-softmax, the entropy from the kept log-softmax after ``backward()``.
- ``new``: ``token_logprobs(policy, ..., with_entropy=True)`` and ``token_logprobs(reference)``:
  the LM head and ``logit_y - logsumexp`` on chunks of tokens, recomputed in the backward pass.
  (In the trainer the reference's scores of a Nash-MD-PG step even come from the sampling loop;
  here the reference runs its own forward, the worse case.)

Models: a Llama-shaped policy (2 layers, 256 wide, tied embeddings) built from a config with a
vocabulary of 8k, 50k or 152k (GPT-2 / Llama-3 / Qwen sizes), its reference a frozen float32
copy, batch 4, 16-token prompts, responses of 64 or 256 tokens, float32, temperature 1. Each
measurement runs in its own subprocess: peak resident memory during the step minus the resident
memory before it (Linux: the VmHWM counter reset through /proc/self/clear_refs; on CUDA:
``torch.cuda.max_memory_allocated``). "logit copies" = (peak increase - the parameter
gradients - one (V, D) head-weight gradient in flight, which both formulas hold while the
tied embedding's two gradients are summed) / the size of one (B, T, V) float32 tensor.

    python benchmarks/bench_memory.py --out benchmarks/results/bench_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:  # pragma: no cover
        return False


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlhf.sampling import response_logits, token_logprobs
    from nlhf.train.policy import policy_gradient_loss

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=args.vocab, max_position_embeddings=1024,
        tie_word_embeddings=True,
    )  # fmt: skip
    policy = LlamaForCausalLM(config).to(device).eval()
    reference = LlamaForCausalLM(config).to(device).eval().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    B, P, T = args.batch_size, args.prompt_tokens, args.length
    gen = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, args.vocab, (B, P), generator=gen).to(device)
    prompt_mask = torch.ones(B, P, dtype=torch.long, device=device)
    response_ids = torch.randint(0, args.vocab, (B, T), generator=gen).to(device)
    response_mask = torch.ones(B, T, dtype=torch.long, device=device)
    score = torch.rand(B, generator=gen).to(device) - 0.5
    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    grad_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    head = policy.get_output_embeddings().weight
    head_bytes = head.numel() * head.element_size()

    def old_step():
        logits = response_logits(policy, *batch)  # (B, T, V)
        logp_all = F.log_softmax(logits.float() / 1.0, dim=-1)  # (B, T, V), kept for backward
        logp = logp_all.gather(-1, response_ids[..., None])[..., 0]
        with torch.no_grad():
            ref_logits = response_logits(reference, *batch)
            ref_all = F.log_softmax(ref_logits.float() / 1.0, dim=-1)
            ref_logp = ref_all.gather(-1, response_ids[..., None])[..., 0] * response_mask
        loss, _ = policy_gradient_loss(logp, ref_logp, response_mask, score, 0.05)
        loss.backward()
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return float(loss), float(entropy.mean())

    def new_step():
        logp, entropy = token_logprobs(policy, *batch, with_entropy=True)
        with torch.no_grad():
            ref_logp = token_logprobs(reference, *batch)
        loss, _ = policy_gradient_loss(logp, ref_logp, response_mask, score, 0.05)
        loss.backward()
        return float(loss), float(entropy.mean())

    step = old_step if args.worker == "old" else new_step
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        token_logprobs(policy, *(t[:1, :4] for t in batch))  # one-time checks, not measured
        policy.zero_grad(set_to_none=True)
        if not _reset_peak():
            raise RuntimeError("cannot reset the peak-RSS counter (/proc/self/clear_refs)")
        before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss, entropy = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    seconds = time.perf_counter() - start
    copy_bytes = B * T * args.vocab * 4
    increase = peak - before
    return {
        "formula": args.worker,
        "vocab": args.vocab,
        "response_tokens": T,
        "peak_increase_mib": increase / MiB,
        "parameter_gradients_mib": grad_bytes / MiB,
        "head_weight_gradient_mib": head_bytes / MiB,
        "one_logits_copy_mib": copy_bytes / MiB,
        "logit_copies_at_peak": (increase - grad_bytes - head_bytes) / copy_bytes,
        "seconds": seconds,
        "loss": loss,
        "entropy": entropy,
    }


def run_worker(kind: str, vocab: int, length: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--vocab", str(vocab)]
    cmd += ["--length", str(length), "--batch-size", str(args.batch_size)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--device", args.device]
    cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_memory.json"))
    parser.add_argument("--vocabs", type=int, nargs="+", default=[8192, 50257, 152064])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import torch

    rows = []
    for vocab in args.vocabs:
        for length in args.lengths:
            old = run_worker("old", vocab, length, args)
            new = run_worker("new", vocab, length, args)
            row = {
                "vocab": vocab,
                "response_tokens": length,
                "one_logits_copy_mib": old["one_logits_copy_mib"],
                "parameter_gradients_mib": old["parameter_gradients_mib"],
                "old_peak_mib": old["peak_increase_mib"],
                "new_peak_mib": new["peak_increase_mib"],
                "old_logit_copies": old["logit_copies_at_peak"],
                "new_logit_copies": new["logit_copies_at_peak"],
                "peak_ratio_old_over_new": old["peak_increase_mib"] / new["peak_increase_mib"],
                "old_seconds": old["seconds"],
                "new_seconds": new["seconds"],
                "same_loss": abs(old["loss"] - new["loss"]) <= 1e-4 * (1 + abs(old["loss"])),
                "same_entropy": abs(old["entropy"] - new["entropy"]) <= 1e-3,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {
        "benchmark": "peak memory of one policy-gradient step: full log-softmax vs lean",
        "setup": {
            "model": "Llama, 2 layers, hidden 256, tied embeddings, float32",
            "batch_size": args.batch_size,
            "prompt_tokens": args.prompt_tokens,
            "device": args.device,
            "threads": args.threads,
            "measure": "VmHWM - VmRSS before the step" if args.device == "cpu" else "cuda peak",
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "rows": rows,
    }
    from nlhf.jsonio import dumps, write_json

    write_json(args.out, result)  # non-finite numbers as null
    print(dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
