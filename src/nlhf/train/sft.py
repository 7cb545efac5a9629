"""Supervised fine-tuning (SFT): the reference policy ``mu`` of NLHF (Munos et al. 2024, §7).

The paper initialises every policy, and the KL anchor ``mu``, from a model fine-tuned on human
demonstrations (TL;DR summaries). ``nlhf sft`` trains a causal LM on (prompt, response) pairs or
chat conversations, with the loss on the response tokens only.

What the model reads is what the policy trainer samples from: the prompt is
``render_prompt_ids`` (a chat prompt through the tokenizer's template with the generation
prompt; text as written) and the target is ``render_response_ids`` (the assistant turn up to and
including the end-of-turn token with a template; else the response text and EOS), so a trained
policy stops where ``nlhf.sampling.generate`` stops it.

One optimizer step (:func:`train_sft`, top to bottom):

1. the next ``batch_size`` demonstrations of a per-epoch shuffle, split into ``grad_accum``
   micro-batches and across processes;
2. right-pad ``prompt + response``; labels are the response tokens (-100 elsewhere);
3. next-token cross-entropy summed over the response tokens (logits only from the first
   response position on), divided by the step's response tokens (over all processes);
4. clip; a non-finite loss or gradient norm stops the run before the update; AdamW on float32
   master weights (bf16/fp16 compute through accelerate's autocast), learning-rate schedule.

Every ``eval_every`` steps and at the end: the mean token loss on held-out prompts; every
``save_every`` steps: a resumable checkpoint (the output directory is ``nlhf.train.run``'s).
The result is a standard Hugging Face checkpoint (LoRA adapters merged), stored in the input
checkpoint's dtype unless ``save_dtype`` says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from nlhf.data.demonstrations import Demonstration, load_demonstrations
from nlhf.data.loaders import train_and_eval
from nlhf.data.schema import as_text
from nlhf.jsonio import write_json
from nlhf.models.chat import render_prompt_ids, render_response_ids, response_text
from nlhf.sampling import accepts_logits_to_keep, context_length
from nlhf.train.run import (
    RunDirectory,
    check_finite_step,
    check_finite_weights,
    lr_factor,
    per_process_batch,
    read_metrics,
    shuffled_indices,
    start_accelerator,
)


@dataclass
class SFTTrainConfig:
    """Hyper-parameters of ``nlhf sft`` (one field per flag)."""

    data: str | None = None
    """demonstrations: a .jsonl/.json/.csv/.tsv/.parquet file, a `datasets` directory, or a
    Hugging Face hub name (downloads only then); rows with `messages`, or `prompt` with
    `response`/`completion`/`label`"""
    format: Literal["auto", "messages", "prompt_response"] = "auto"
    """data format; auto detects it from each row's keys"""
    split: str | None = None
    """split of `data` to train on (a dataset split, or rows whose `split` field matches)"""
    eval_data: str | None = None
    """held-out demonstrations (same kinds of source as data); default: a prompt-disjoint share
    of data"""
    eval_split: str | None = None
    """split of `eval_data` (or of `data` when eval_data is not given) to evaluate on"""
    eval_fraction: float = 0.05
    """share of distinct prompts held out for the eval loss when neither eval_data nor
    eval_split is given (0 = no evaluation)"""
    allow_shared_eval_prompts: bool = False
    """evaluate on eval demonstrations whose prompt also occurs in the training data (by
    default they are dropped, and an eval set made only of such prompts is an error)"""
    skip_invalid: bool = False
    """drop invalid rows (counted and reported) instead of stopping at the first"""
    output_dir: Path = Path("runs/sft")
    """where the model, eval.json, metrics.jsonl, config.yaml and checkpoint/ go"""
    model: str | None = None
    """causal-LM checkpoint directory to fine-tune (loaded with float32 master weights)"""
    random_init: Path | None = None
    """instead of `model`: a JSON/YAML model config with model_type (e.g. gpt2, llama) for a
    randomly initialised model, sized for the tokenizer"""
    tokenizer: str | None = None
    """tokenizer directory; default: the model's, or for random_init one built on the data"""
    tokenizer_kind: Literal["word", "bpe"] = "bpe"
    """kind of tokenizer built for random_init when no tokenizer is given"""
    vocab_size: int = 8000
    """vocabulary size of a tokenizer built for random_init"""
    max_length: int = 1024
    """maximum prompt + response tokens (capped by the model's context); longer examples lose
    the beginning of the prompt first, then the end of the response"""
    steps: int = 0
    """optimizer steps; 0 = derive from epochs"""
    epochs: float = 1.0
    """passes over the training data when steps is 0"""
    batch_size: int = 32
    """demonstrations per optimizer step (over all processes and micro-batches)"""
    grad_accum: int = 1
    """micro-batches per optimizer step (gradient accumulation)"""
    lr: float = 2e-5
    """peak AdamW learning rate"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """learning-rate decay after warm-up, down to min_lr_ratio * lr at the last step"""
    min_lr_ratio: float = 0.0
    """final learning rate as a share of lr (linear and cosine schedules)"""
    warmup_steps: int = 0
    """linear learning-rate warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only; not biases, norms)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (0 = no clipping)"""
    lora: bool = False
    """train LoRA adapters (PEFT) instead of all weights; they are merged into the saved model"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: float = 32.0
    """LoRA alpha"""
    lora_dropout: float = 0.0
    """LoRA dropout"""
    lora_target_modules: list[str] = field(default_factory=list)
    """modules to adapt (default: PEFT's choice for the architecture)"""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """autocast compute precision (weights stay float32); auto = bf16 on a GPU that supports
    it, else full precision"""
    cpu: bool = False
    """force the CPU even when a GPU is available"""
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the saved model; auto = the input checkpoint's (float32 for random_init)"""
    eval_every: int = 0
    """evaluate every this many steps (0 = only at the end)"""
    save_every: int = 500
    """write a resumable checkpoint every this many steps (0 = never)"""
    log_every: int = 10
    """append train metrics to metrics.jsonl every this many steps"""
    eval_batch_size: int = 32
    """demonstrations per forward during evaluation"""
    resume: bool = False
    """continue the run in output_dir from its checkpoint (model, optimizer, scheduler, RNG;
    the data position is a function of the step); only the fields listed in docs/sft.md may
    change"""
    overwrite: bool = False
    """replace a run already in output_dir (and allow output_dir to be an input)"""
    progress: bool = True
    """show a progress bar"""
    seed: int = 0
    """seed for initialisation, data order and the train/eval split"""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "vocab_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1 or self.lora_r < 1:
            raise ValueError("log_every and lora_r: must be >= 1")
        if self.steps == 0 and not self.epochs > 0:
            raise ValueError(f"epochs: must be > 0 when steps is 0, got {self.epochs}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("weight_decay, max_grad_norm: must be >= 0; lora_dropout in [0, 1)")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size: {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        if self.model is not None and self.random_init is not None:
            raise ValueError("model / random_init: give one of them, not both")

    @property
    def may_change(self) -> set[str]:
        """Fields a ``--resume`` may change: evaluation, checkpoint and logging frequency, the
        evaluation's batch size, progress, and the step budget (steps, epochs) when the
        learning rate does not depend on it (a constant schedule)."""
        fields = {"eval_every", "save_every", "log_every", "eval_batch_size", "progress"}
        return fields | ({"steps", "epochs"} if self.lr_schedule == "constant" else set())


# ----------------------------------------------------------------------------- data


def load_sft_data(
    cfg: SFTTrainConfig,
    train: Sequence[Demonstration] | None = None,
    evals: Sequence[Demonstration] | None = None,
    say=print,
) -> tuple[list[Demonstration], list[Demonstration]]:
    """Training and held-out demonstrations: from memory, ``data``/``eval_data``, a split of
    ``data`` or a prompt-disjoint share of it; eval never shares a prompt with train."""
    train, evals = _in_memory(train, cfg, cfg.split), _in_memory(evals, cfg, cfg.eval_split)

    def load(path: str, split: str | None):
        return load_demonstrations(path, cfg.format, split, cfg.skip_invalid)

    return train_and_eval(cfg, load, train, evals, say, "demonstrations")


def _in_memory(items, cfg: SFTTrainConfig, split: str | None) -> list[Demonstration] | None:
    """Demonstrations as given, or converted from a ``datasets`` object (its ``split``) / row
    mappings."""
    if (
        items is None
        or isinstance(items, list | tuple)
        and all(isinstance(d, Demonstration) for d in items)
    ):
        return None if items is None else list(items)
    return list(load_demonstrations(items, cfg.format, split, cfg.skip_invalid))


def encode_demonstrations(
    tokenizer, demonstrations: Sequence[Demonstration], max_length: int, compact: bool = False
) -> tuple[list[tuple[Sequence[int], Sequence[int]]], int]:
    """``[(prompt_ids, response_ids), ...]`` as the policy reads and writes them
    (``render_prompt_ids`` / ``render_response_ids``), and how many were truncated to
    ``max_length`` (the prompt's beginning first, then the response's end).

    Text prompts are tokenized in one batch; ``compact`` stores int32 arrays instead of lists
    (a tenth of the memory for a large data set).
    """
    texts = [i for i, d in enumerate(demonstrations) if isinstance(d.prompt, str)]
    batched: dict[int, tuple[list[int], list[int]]] = {}
    if texts:  # text prompts: as written; the response's text, then EOS
        eos = int(tokenizer.eos_token_id)
        enc = lambda xs: tokenizer(xs, add_special_tokens=False)["input_ids"]  # noqa: E731
        prompts = enc([demonstrations[i].prompt for i in texts])
        responses = enc([response_text(demonstrations[i].response) for i in texts])
        for i, p, r in zip(texts, prompts, responses):
            batched[i] = (list(p), list(r) if r and r[-1] == eos else [*r, eos])
    rows, truncated = [], 0
    for i, d in enumerate(demonstrations):
        if i in batched:
            prompt, response = batched.pop(i)
        else:
            prompt = render_prompt_ids(tokenizer, d.prompt)
            response = render_response_ids(tokenizer, d.prompt, d.response)
        if not prompt:
            raise ValueError(f"demonstration {i}: the prompt {as_text(d.prompt)!r:.60} is empty")
        if len(prompt) + len(response) > max_length:
            truncated += 1
            response = response[: max_length - 1]
            prompt = prompt[len(prompt) - (max_length - len(response)) :]
        if compact:
            prompt, response = np.asarray(prompt, np.int32), np.asarray(response, np.int32)
        rows.append((prompt, response))
    return rows, truncated


def collate(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off the response)."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    for i, (p, r) in enumerate(rows):
        n_p, n = len(p), len(p) + len(r)
        ids[i, :n_p] = torch.as_tensor(p)
        ids[i, n_p:n] = torch.as_tensor(r)
        mask[i, :n] = 1
        labels[i, n_p:n] = torch.as_tensor(r)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------- model


def _build_tokenizer(cfg: SFTTrainConfig, train: Sequence[Demonstration]):
    from nlhf.models.checkpoint import load_tokenizer
    from nlhf.models.tokenizer import build_tokenizer

    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    if cfg.model is not None:
        return None  # the checkpoint's own
    texts = [t for d in train for t in (as_text(d.prompt), as_text(d.response))]
    return build_tokenizer(texts, cfg.tokenizer_kind, cfg.vocab_size)


def build_model(cfg: SFTTrainConfig, tokenizer, model_config: dict[str, Any] | None = None):
    """``(model, tokenizer, input_dtype)``: the checkpoint of ``cfg.model`` with float32 master
    weights, or a random model from ``cfg.random_init`` (or ``model_config``) sized for the
    tokenizer; LoRA adapters when ``cfg.lora``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from nlhf.models.checkpoint import load_causal_lm, stored_dtype
    from nlhf.models.preference import read_model_config

    if cfg.model is not None:
        if not Path(cfg.model).exists() and cfg.model.count("/") == 1:
            name = cfg.model.split("/")[1]
            raise ValueError(
                f"model: {cfg.model} is not a local directory; models are read from disk: "
                f"download it first, e.g. hf download {cfg.model} --local-dir models/{name}"
            )
        model, own_tokenizer = load_causal_lm(cfg.model, "model", dtype="float32")
        tokenizer = tokenizer or own_tokenizer
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"tokenizer: {len(tokenizer)} tokens but the model's vocabulary has only "
                f"{model.config.vocab_size}"
            )
        input_dtype = stored_dtype(cfg.model)
    else:
        if model_config is None:
            if cfg.random_init is None:
                raise ValueError("model / random_init: give a checkpoint or a model config")
            model_config = read_model_config(cfg.random_init)
        data = dict(model_config)
        model_type = data.pop("model_type")
        data.update(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        try:
            config = AutoConfig.for_model(model_type, **data)
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(config)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"random_init: cannot build a {model_type!r} model ({err})") from None
        input_dtype = torch.float32
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules) or None,
        )
        model = get_peft_model(model, lora)
    return model, tokenizer, input_dtype


def response_nll(
    model, batch: dict[str, torch.Tensor], keep_logits: bool
) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (float32, with grad) of the response tokens, and their count.

    Logits are computed only from the first response position of the batch on (prompts are
    context, not targets), then upcast to float32 for the cross-entropy.
    """
    labels = batch["labels"]  # (B, T)
    is_target = labels != -100  # (B, T)
    first = int(is_target.float().argmax(-1).min())  # earliest response position, >= 1
    keep = labels.shape[1] - first + 1  # logits at positions first-1 .. T-1
    extra = {"logits_to_keep": keep} if keep_logits else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    logits = out.logits[:, -keep:-1, :]  # (B, T - first, V): predictions of tokens first..T-1
    targets = labels[:, first:]  # (B, T - first)
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return nll, int(is_target.sum())


# ----------------------------------------------------------------------------- the model out


def _save_model(accelerator, model, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """The final model as a standard checkpoint in ``dtype`` (LoRA: adapters in ``adapter/``
    and merged into the saved weights)."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        if hasattr(unwrapped, "merge_and_unload"):
            unwrapped.save_pretrained(str(out / "adapter"))
            final = copy.deepcopy(unwrapped).merge_and_unload()
        else:
            final = unwrapped
        final = final.to(dtype)
        final.config.dtype = str(dtype).replace("torch.", "")
        final.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate_sft(model, rows, pad_id: int, batch_size: int, keep_logits: bool, accelerator):
    """Mean NLL per response token on ``rows`` (this process's share, summed over processes)."""
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = rows[rank::world]
    nll, tokens = (
        torch.zeros((), device=accelerator.device),
        torch.zeros((), device=accelerator.device),
    )
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i : i + batch_size], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            s, n = response_nll(model, batch, keep_logits)
        nll += s
        tokens += n
    if world > 1:
        nll, tokens = accelerator.reduce(nll, "sum"), accelerator.reduce(tokens, "sum")
    model.train(was_training)
    loss = float(nll / tokens.clamp(min=1))
    return {
        "eval/loss": loss,
        "eval/perplexity": math.exp(min(loss, 50.0)),
        "eval/tokens": float(tokens),
        "eval/demonstrations": float(len(rows)),
    }


def train_sft(
    cfg: SFTTrainConfig,
    train: Sequence[Demonstration] | None = None,
    eval: Sequence[Demonstration] | None = None,  # noqa: A002  (interface name)
    tokenizer=None,
) -> dict[str, float]:
    """Fine-tune ``cfg.model`` (or a random ``cfg.random_init`` model) on demonstrations; write
    ``cfg.output_dir``; return the final metrics.

    ``train`` / ``eval``: demonstrations in memory instead of ``cfg.data`` / ``cfg.eval_data``
    (``Demonstration`` objects, a ``datasets.Dataset`` or a list of row mappings in any format of
    :func:`nlhf.data.load_demonstrations`); ``tokenizer``: a tokenizer object instead of
    ``cfg.tokenizer``.
    """
    if isinstance(cfg, SFTConfig):  # the demo's call: train_sft(cfg, prompts, responses, tok)
        return _train_demo_sft(cfg, train, eval, tokenizer)  # type: ignore[arg-type]
    return _train(cfg, train, eval, tokenizer)


def _train(cfg, train, evals, tokenizer, model_config: dict[str, Any] | None = None):
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from nlhf.models.checkpoint import load_tokenizer, resolve_dtype

    # --- inputs, all checked before anything is written ---
    accelerator, say = start_accelerator(cfg.mixed_precision, cfg.cpu)
    is_main = accelerator.is_main_process
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    train, evals = load_sft_data(cfg, train, evals, say)
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    world = accelerator.num_processes
    per_process = per_process_batch(cfg.batch_size, cfg.grad_accum, world)
    micro = per_process * world
    run = RunDirectory.for_data_trainer(cfg, accelerator)
    start = run.check(total_steps)
    if run.finished is not None:
        say(run.nothing_to_do)
        return read_metrics(out / "eval.json")
    if start is not None:  # the checkpoint's tokenizer (built on the data for random_init)
        tokenizer = load_tokenizer(start.path / "tokenizer", "the checkpoint's tokenizer")
    elif tokenizer is None:
        tokenizer = _build_tokenizer(cfg, train)
    model, tokenizer, input_dtype = build_model(cfg, tokenizer, model_config)
    save_dtype = input_dtype if cfg.save_dtype == "auto" else resolve_dtype(cfg.save_dtype, "")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: it has no EOS token, so responses could never end")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    context = context_length(model)
    max_length = min(cfg.max_length, context) if context else cfg.max_length
    rows, truncated = encode_demonstrations(tokenizer, train, max_length, compact=True)
    eval_rows, eval_truncated = encode_demonstrations(tokenizer, evals, max_length, compact=True)
    if truncated or eval_truncated:
        say(
            f"{truncated} training and {eval_truncated} eval demonstrations exceed {max_length} "
            "tokens: their prompts were cut from the start (then the response's end)"
        )
    keep_logits = accepts_logits_to_keep(model)

    # --- optimizer on float32 master weights, schedule, accelerate ---
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    checks_grad = accelerator.scaler is None  # fp16's scaler skips overflowing steps itself

    def run_eval(step: int) -> dict[str, float]:
        if not eval_rows:
            return {}
        metrics = evaluate_sft(
            model, eval_rows, pad_id, cfg.eval_batch_size, keep_logits, accelerator
        )
        run.log({"step": step, **metrics})
        return metrics

    def write_checkpoint(directory: Path) -> None:
        if is_main:
            tokenizer.save_pretrained(directory / "tokenizer")
        accelerator.save_state(str(directory / "state"))

    # --- the run directory: lock, config.yaml, resume ---
    start_step = run.open_and_resume(accelerator, say, state="state")
    model.train()
    t0 = time.perf_counter()
    window_nll, window_tokens = 0.0, 0
    last_train: dict[str, float] = {}
    bar = tqdm(
        range(start_step, total_steps),
        initial=start_step,
        total=total_steps,
        desc="nlhf sft",
        disable=not (is_main and cfg.progress),
        dynamic_ncols=True,
    )
    try:
        for step in bar:
            # 1. this step's demonstrations on this process, per micro-batch
            order = shuffled_indices(len(rows), cfg.seed, step * cfg.batch_size, cfg.batch_size)
            micro_rows = []
            for m in range(cfg.grad_accum):
                first = m * micro + accelerator.process_index * per_process
                micro_rows.append([rows[i] for i in order[first : first + per_process]])
            n_step = sum(len(r) for mr in micro_rows for _, r in mr)  # response tokens, here
            n_all = n_step
            if world > 1:  # the mean over the step's tokens on all processes, like one batch
                n_all = int(
                    accelerator.reduce(torch.tensor(n_step, device=accelerator.device), "sum")
                )
            scale = world / n_all  # DDP averages the processes' gradients
            step_nll = 0.0
            for m, batch_rows in enumerate(micro_rows):
                # 2. right-padded prompt + response, labels on the response only
                batch = collate(batch_rows, pad_id)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                # 3. summed token NLL / the step's response tokens (over all processes)
                sync = m == cfg.grad_accum - 1
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx:
                    with accelerator.autocast():
                        nll, _ = response_nll(model, batch, keep_logits)
                    accelerator.backward(nll * scale)
                step_nll += float(nll.detach())
            # 4. clip (max_grad_norm 0: the norm only), stop on a non-finite loss or gradient
            #    before it reaches the weights, AdamW, schedule
            max_norm = cfg.max_grad_norm or math.inf
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
            checked = torch.tensor([step_nll, float(n_step), grad_norm if checks_grad else 0.0])
            if world > 1:  # every process stops together
                checked = accelerator.reduce(checked.to(accelerator.device), "sum").cpu()
            loss = float(checked[0] / checked[1].clamp(min=1))
            check_finite_step(step + 1, out, loss=loss, grad_norm=checked[2])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window_nll += step_nll
            window_tokens += n_step
            done = step + 1
            # 5. log, evaluate, checkpoint (a step is logged before it is checkpointed)
            if done % cfg.log_every == 0 or done == total_steps:
                sums = torch.tensor([window_nll, float(window_tokens)], device=accelerator.device)
                if world > 1:
                    sums = accelerator.reduce(sums, "sum")
                loss = float(sums[0] / sums[1].clamp(min=1))
                last_train = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}
                run.log({"step": done, **last_train, "train/tokens": float(sums[1]),
                         "time/elapsed_s": time.perf_counter() - t0})  # fmt: skip
                bar.set_postfix(loss=f"{loss:.4f}")
                window_nll, window_tokens = 0.0, 0
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
                metrics = run_eval(done)
                if metrics:
                    bar.set_postfix(loss=f"{last_train.get('train/loss', 0):.4f}",
                                    eval=f"{metrics['eval/loss']:.4f}")  # fmt: skip
            if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
                check_finite_weights(done, out, accelerator.unwrap_model(model))
                run.save_checkpoint(done, write_checkpoint)
        bar.close()
        train_seconds = time.perf_counter() - t0

        # --- end: evaluation, then the model and eval.json; the checkpoint goes once the
        #     model is in place (the model is the result) ---
        eval_metrics = run_eval(total_steps)
        metrics = {
            **last_train,
            **eval_metrics,
            "train/steps": float(total_steps),
            "train/demonstrations": float(len(rows)),
            "train/truncated": float(truncated),
            "time/train_s": train_seconds,
        }
        check_finite_weights(total_steps, out, accelerator.unwrap_model(model))

        def write_final(directory: Path) -> None:
            _save_model(accelerator, model, tokenizer, directory, save_dtype)
            if is_main:
                write_json(directory / "eval.json", metrics)

        run.save_final(total_steps, write_final, remove_checkpoint=True)
        accelerator.end_training()
    finally:
        bar.close()
        run.close()
    return metrics


# ----------------------------------------------------------------------------- the demo's call


@dataclass
class SFTConfig:
    """The demo's SFT section: a small GPT-2-shaped policy from scratch.

    Kept for ``nlhf demo``'s call ``train_sft(SFTConfig, prompts, responses, tokenizer)``,
    which runs the trainer above with these settings (cosine decay to 10% of lr, no held-out
    share, no checkpoints). New code uses :class:`SFTTrainConfig`.
    """

    output_dir: Path = Path("runs/sft")
    """directory for the checkpoint, tokenizer, metrics.jsonl and config.yaml"""
    tokenizer: Path | None = None
    """tokenizer directory; None: use the tokenizer passed in, else build a word-level one"""
    model_config: Path | None = None
    """a GPT-2 config (config.json) to build the model from; None: use the sizes below"""
    n_layer: int = 2
    """transformer blocks"""
    n_embd: int = 64
    """hidden size"""
    n_head: int = 4
    """attention heads"""
    n_positions: int = 64
    """maximum prompt + response length in tokens"""
    dropout: float = 0.0
    """dropout of residual, embedding and attention (GPT-2 uses 0.1; small data needs none)"""
    steps: int = 10000
    """optimizer steps (copying document words needs many: at 3000 steps on the built-in task
    the policy still invents words the document does not contain)"""
    batch_size: int = 32
    """pairs per step"""
    lr: float = 3e-3
    """peak learning rate (AdamW)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_steps: int = 20
    """linear warm-up steps before cosine decay"""
    seed: int = 0
    """seed for model initialisation and batch order"""
    log_every: int = 25
    """write a metrics line every this many steps"""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.log_every < 1:
            raise ValueError("warmup_steps must be >= 0 and log_every >= 1")


def _train_demo_sft(
    cfg: SFTConfig, prompts: Sequence[str], responses: Sequence[str], tokenizer=None
) -> Path:
    if prompts is None or responses is None or len(prompts) != len(responses):
        raise ValueError("SFT needs one response per prompt")
    if cfg.model_config is not None:
        from transformers import GPT2Config

        path = Path(cfg.model_config)
        if not path.is_file():
            raise FileNotFoundError(f"SFT model_config {path} does not exist")
        model_config = {**GPT2Config.from_json_file(str(path)).to_dict(), "model_type": "gpt2"}
    else:
        model_config = {
            "model_type": "gpt2",
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_positions": cfg.n_positions,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
        }
    train_cfg = SFTTrainConfig(
        output_dir=cfg.output_dir,
        tokenizer=None if cfg.tokenizer is None else str(cfg.tokenizer),
        tokenizer_kind="word",
        max_length=int(model_config.get("n_positions", cfg.n_positions)),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        eval_fraction=0.0,
        save_every=0,
        log_every=cfg.log_every,
        mixed_precision="no",
        save_dtype="float32",
        seed=cfg.seed,
    )
    demos = [Demonstration(p, r) for p, r in zip(prompts, responses)]
    _train(train_cfg, demos, [], tokenizer, model_config=model_config)
    return Path(cfg.output_dir)


__all__ = [
    "SFTConfig",
    "SFTTrainConfig",
    "build_model",
    "collate",
    "encode_demonstrations",
    "evaluate_sft",
    "load_sft_data",
    "response_nll",
    "train_sft",
]
