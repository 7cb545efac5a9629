"""Policy-training runs on a tiny model, for the scale-out tests (tests/test_scale_parity.py).

A run is a dict: ``PolicyTrainConfig`` fields, plus ``model`` (``"llama"`` or ``"gpt2"``) and
optionally ``expect_error`` (the run must stop with a ``ValueError`` containing this text).
``run(spec)`` trains in this process; as a script, the worker trains the runs of a JSON file in
order, under any launcher:

    python -m torch.distributed.run --nproc_per_node 2 tests/scale_worker.py RUNS.json

``RUNS.json`` is ``{"runs": [...], "fsdp2_on_cpu": false}``.

``fsdp2_on_cpu``: the ``Accelerator`` uses FSDP2 on CPU processes (see :func:`fsdp2_on_cpu`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator

import torch

WORDS = "good bad the cat sat on a mat dog ran far away"
PROMPTS = [
    "the cat <sep>",
    "a mat <sep>",
    "sat on the mat <sep>",
    "cat <sep>",
    "a <sep>",
    "the dog ran <sep>",
    "far away <sep>",
    "on a mat the cat <sep>",
    "dog <sep>",
    "the <sep>",
    "ran far <sep>",
]
# 4 steps of a global batch of 8 prompts in 2 micro-batches; a warm-up then a linear decay
BASE = dict(
    steps=4, grad_accum=2, max_new_tokens=6, lr=3e-3, tau=0.05, beta=0.25, ema_decay=0.5,
    checkpoint_every=0, progress=False, cpu=True, seed=3,
)  # fmt: skip


def tokenizer():
    from nlhf.models.tokenizer import build_tokenizer

    return build_tokenizer([WORDS], kind="word")


def tiny_model(tok, kind: str = "llama") -> torch.nn.Module:
    """The same random-init model in every process (seeded): a Llama (nn.Linear layers, an
    untied head, grouped-query attention) or a GPT-2 (Conv1D layers, a tied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ids = dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    if kind == "llama":
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=32,
            tie_word_embeddings=False, **ids,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=32, **ids)
    return GPT2LMHeadModel(config)


def prob(prompts, a, b):
    """P(a > b): more "good" words win, and a longer response a little."""
    out = []
    for x, y in zip(a, b):
        margin = x.split().count("good") - y.split().count("good")
        margin += 0.2 * (len(x.split()) - len(y.split()))
        out.append(1.0 / (1.0 + 2.718281828 ** (-margin)))
    return out


def run(spec: dict) -> None:
    """Train one run (``spec``: config fields + ``model`` + ``expect_error``)."""
    from nlhf.models.judge import CallableJudge
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    spec = dict(spec)
    model = spec.pop("model", "llama")
    expect_error = spec.pop("expect_error", None)
    cfg = PolicyTrainConfig(**{**BASE, **spec})
    tok = tokenizer()
    try:
        train_policy(cfg, prompts=PROMPTS, judge=CallableJudge(prob),
                     policy_model=tiny_model(tok, model), tokenizer=tok)  # fmt: skip
    except ValueError as err:
        if expect_error is None or expect_error not in str(err):
            raise
        return
    assert expect_error is None, f"no error {expect_error!r}"


@contextlib.contextmanager
def fsdp2_on_cpu() -> Iterator[None]:
    """Within the block, an ``Accelerator`` built under a multi-process CPU launch uses FSDP2.

    accelerate (1.15) never selects FSDP for CPU processes: ``AcceleratorState`` switches to
    ``DistributedType.FSDP`` only for GPU-like process groups and otherwise keeps
    ``MULTI_CPU`` (DDP), silently. torch's ``fully_shard`` itself works on a CPU device mesh
    over gloo, so this sets the distributed type and an FSDP2 plugin (from the ``FSDP_*``
    variables ``accelerate launch`` exports for an FSDP config, else accelerate's defaults)
    right after the ``Accelerator`` is built; ``prepare`` then shards the policy with
    ``fully_shard`` and checkpoints go through accelerate's FSDP save/load.
    """
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    real = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state.distributed_type == DistributedType.MULTI_CPU:
            os.environ.setdefault("FSDP_VERSION", "2")
            os.environ.setdefault("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.state.distributed_type = DistributedType.FSDP
            self.state.fsdp_plugin = FullyShardedDataParallelPlugin()

    accelerate.Accelerator.__init__ = init
    try:
        yield
    finally:
        accelerate.Accelerator.__init__ = real


if __name__ == "__main__":
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        job = json.load(f)
    with fsdp2_on_cpu() if job.get("fsdp2_on_cpu") else contextlib.nullcontext():
        for spec in job["runs"]:
            run(spec)
