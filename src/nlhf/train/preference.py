"""Train a pairwise preference model or a Bradley-Terry reward model (Munos et al. 2024, §5,
App. G.1) on pairwise comparisons, with accelerate (CPU, one GPU or many, same code).

Loss, for a comparison ``(x, y, y', l)`` with ``l = P(y > y' | x)`` (0/1 or soft):
``-[l log sigmoid(d) + (1 - l) log sigmoid(-d)]`` where ``d`` is the model's logit:
``v(x, y, y') - v(x, y', y)`` (pairwise), ``r(x, y) - r(x, y')`` (reward, Bradley-Terry) or
``e(x, y)^T R e(x, y')`` (embedding). The pairwise model is antisymmetric by construction, so the
swapped copy of a comparison would give the identical loss: no swap augmentation is needed.

One optimizer step:
  1. take the next ``batch_size`` comparisons of a per-epoch shuffle (split in ``grad_accum``
     micro-batches and across processes);
  2. tokenize each pair in its canonical order, one forward for both orders (``2B`` sequences);
  3. soft-label cross-entropy on ``d``, backward (gradients synchronised on the last micro-batch);
  4. clip, AdamW step, linear warm-up then linear decay of the learning rate.
Precision: the model trains on float32 master weights whatever the backbone checkpoint's dtype
(bf16 weights cannot absorb small AdamW steps); ``mixed_precision`` sets the compute precision;
the final model is written in ``save_dtype`` (default: the backbone's stored dtype), the
resumable checkpoint in float32.

Every ``eval_every`` steps and at the end: evaluate on the held-out prompts (accuracy, log-loss,
ECE, antisymmetry error, predicted cycles); every ``save_every`` steps and at the end: a
resumable checkpoint. A non-finite loss or gradient norm stops the run before the update.

Outputs in ``output_dir`` (written through ``nlhf.train.run``): the model (standard HF checkpoint
+ tokenizer + ``nlhf_model.json``), ``eval.json`` (final metrics), ``metrics.jsonl`` (one JSON
per logged step), ``config.yaml``, ``checkpoint/`` (for ``resume``), ``nlhf_finished.json``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from nlhf.data import Comparison, as_text, load_comparisons
from nlhf.data.loaders import train_and_eval
from nlhf.jsonio import write_json
from nlhf.models.checkpoint import (
    check_weights,
    first_line,
    load_tokenizer,
    looks_like_hub_id,
    quiet_loading,
)
from nlhf.models.evaluation import evaluate_judge
from nlhf.models.judges import make_judge
from nlhf.models.preference import (
    MODEL_CLASSES,
    ScoringModel,
    load_model,
    num_labels_for,
    pretrained_backbone,
    random_backbone,
)
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
class PreferenceTrainConfig:
    """Hyper-parameters of ``nlhf train-preference``."""

    kind: Literal["pairwise", "reward", "embedding"] = "pairwise"
    """model kind: pairwise preference model P(y > y'|x) = sigmoid(v(x,y,y') - v(x,y',y)),
    Bradley-Terry reward model r(x, y), or skew-symmetric embedding preference model"""
    data: str | None = None
    """training comparisons: a .jsonl/.json/.csv/.tsv/.parquet file, a `datasets` directory, or a
    Hugging Face hub name (downloads only then)"""
    format: Literal["auto", "native", "chosen_rejected", "summarize_from_feedback", "hh_rlhf"] = (
        "auto"
    )
    """data format; auto detects it from each row's keys"""
    split: str | None = None
    """split of `data` to train on (a dataset split, or rows whose `split` field matches)"""
    eval_data: str | None = None
    """held-out comparisons (same kinds of source as data); default: a prompt-disjoint share of
    data"""
    eval_split: str | None = None
    """split of `eval_data` (or of `data` when eval_data is not given) to evaluate on"""
    eval_fraction: float = 0.1
    """share of distinct prompts held out for evaluation when neither eval_data nor eval_split is
    given (0 = no evaluation)"""
    allow_shared_eval_prompts: bool = False
    """evaluate on eval comparisons whose prompt also occurs in the training data (by default
    they are dropped, and an eval set made only of such prompts is an error)"""
    skip_invalid: bool = False
    """drop invalid rows (counted and reported) instead of stopping at the first"""
    output_dir: Path = Path("runs/preference")
    """where the model, eval.json, metrics.jsonl, config.yaml and checkpoint/ go"""
    model: str | None = None
    """backbone checkpoint (local path or hub name) for AutoModelForSequenceClassification, e.g.
    the SFT policy; a new scalar head is added when it has none"""
    random_init: Path | None = None
    """instead of `model`: a JSON/YAML backbone config with model_type (e.g. gpt2) to build a small
    randomly initialised backbone"""
    tokenizer: str | None = None
    """tokenizer directory/name; default: the model's, or for random_init one built locally on the
    training text"""
    tokenizer_kind: Literal["word", "bpe"] = "bpe"
    """kind of tokenizer built for random_init when no tokenizer is given"""
    vocab_size: int = 8000
    """vocabulary size of a tokenizer built for random_init"""
    embedding_dim: int = 8
    """embedding kind only: even size 2k of the preference embedding"""
    max_length: int = 512
    """maximum sequence length in tokens (capped by the backbone's positions); longer inputs
    truncate the prompt first, then both responses equally"""
    steps: int = 0
    """optimizer steps; 0 = derive from epochs"""
    epochs: float = 1.0
    """passes over the training data when steps is 0"""
    batch_size: int = 32
    """comparisons per optimizer step (over all processes and micro-batches)"""
    grad_accum: int = 1
    """micro-batches per optimizer step (gradient accumulation)"""
    lr: float = 5e-5
    """peak AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_steps: int = 0
    """linear learning-rate warm-up steps (then linear decay to 0 at the last step)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (0 = no clipping)"""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """autocast (compute) precision; auto = bf16 on a GPU that supports it, else full precision.
    The trained weights and the optimizer state are float32 master copies in every case"""
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the saved model's weights; auto = the dtype the backbone checkpoint is stored in
    (float32 for random_init)"""
    cpu: bool = False
    """force the CPU even when a GPU is available"""
    eval_every: int = 0
    """evaluate every this many steps (0 = only at the end)"""
    save_every: int = 0
    """write a resumable checkpoint every this many steps (0 = only at the end)"""
    log_every: int = 10
    """append train metrics to metrics.jsonl every this many steps"""
    eval_batch_size: int = 64
    """pairs per forward during evaluation"""
    max_triples: int = 2000
    """evaluation: at most this many response triples checked for predicted cycles"""
    resume: bool = False
    """continue the run in output_dir from its checkpoint (bit-for-bit on the same device); only
    the fields listed in docs/train-preference.md may change"""
    overwrite: bool = False
    """replace a run already in output_dir (and allow output_dir to be an input)"""
    progress: bool = True
    """show a progress bar"""
    seed: int = 0
    """seed for initialisation, data order and the train/eval split"""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "max_length", "vocab_size", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "eval_every", "save_every", "max_triples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every: must be >= 1, got {self.log_every}")
        if self.steps == 0 and not self.epochs > 0:
            raise ValueError(f"epochs: must be > 0 when steps is 0, got {self.epochs}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm: must be >= 0")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size: {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        if self.model is not None and self.random_init is not None:
            raise ValueError("model / random_init: give one of them, not both")
        num_labels_for(self.kind, self.embedding_dim)  # validates embedding_dim

    @property
    def may_change(self) -> set[str]:
        """Fields a ``--resume`` may change: evaluation, checkpoint and logging frequency, the
        evaluation's batch size and triples, progress. Not the step budget: the learning rate
        decays to 0 at the last step."""
        return {
            "eval_every",
            "save_every",
            "log_every",
            "eval_batch_size",
            "max_triples",
            "progress",
        }


# ----------------------------------------------------------------------------- data


def _build_model(cfg: PreferenceTrainConfig, train: list[Comparison]) -> ScoringModel:
    """The model to train: a new head on the ``model`` checkpoint (checked: the path exists or
    is a hub name, the weight files are intact, the tokenizer loads and fits the backbone's
    vocabulary), or a random backbone from ``random_init``."""
    from nlhf.models.tokenizer import build_tokenizer

    num_labels = num_labels_for(cfg.kind, cfg.embedding_dim)
    cls = MODEL_CLASSES[cfg.kind]
    if cfg.model is not None:
        local = Path(cfg.model).exists() or not looks_like_hub_id(cfg.model)
        if local:  # a hub name is only tried for what is not a path and looks like one
            check_weights(cfg.model, "model")
        what = "tokenizer" if cfg.tokenizer else "model"
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, what, need_eos=False, hub=True)
        where = "" if local else " (not a local path; tried the Hugging Face hub)"
        try:
            with quiet_loading():
                backbone = pretrained_backbone(cfg.model, num_labels)
        except ValueError as err:
            raise ValueError(f"{first_line(err)}{where}") from None
        except Exception as err:  # noqa: BLE001 - any failure is a checkpoint that does not load
            raise ValueError(
                f"model ({cfg.model}): cannot load{where} ({first_line(err)})"
            ) from None
        vocab = backbone.config.vocab_size
        if isinstance(vocab, int) and len(tokenizer) > vocab:
            raise ValueError(
                f"{what} ({cfg.tokenizer or cfg.model}): the tokenizer has {len(tokenizer)} "
                f"tokens but the model's vocabulary has only {vocab}"
            )
    elif cfg.random_init is not None:
        if cfg.tokenizer is not None:
            tokenizer = load_tokenizer(cfg.tokenizer, "tokenizer", need_eos=False, hub=True)
        else:
            texts = []
            for c in train:
                texts += [as_text(c.prompt), as_text(c.response_a), as_text(c.response_b)]
            tokenizer = build_tokenizer(texts, cfg.tokenizer_kind, cfg.vocab_size)
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        backbone = random_backbone(cfg.random_init, tokenizer, num_labels)
    else:
        raise ValueError("model / random_init: give a backbone checkpoint or a model config")
    return cls(backbone, tokenizer, max_length=cfg.max_length)


# ----------------------------------------------------------------------------- training


def train_preference(
    cfg: PreferenceTrainConfig,
    train: list[Comparison] | None = None,
    eval: list[Comparison] | None = None,  # noqa: A002  (interface name)
) -> dict[str, float]:
    """Train the model of ``cfg.kind``; write ``cfg.output_dir``; return the final metrics.

    ``train`` / ``eval``: comparisons in memory instead of ``cfg.data`` / ``cfg.eval_data``.
    Everything is checked before the output directory is touched (``nlhf.train.run``); a
    ``--resume`` of a finished run returns its metrics and does nothing else.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    # --- inputs, all checked before anything is written ---
    accelerator, say = start_accelerator(cfg.mixed_precision, cfg.cpu)
    is_main = accelerator.is_main_process
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    train, evals = train_and_eval(
        cfg,
        lambda path, split: load_comparisons(path, cfg.format, split, cfg.skip_invalid),
        train, eval, say, "comparisons",
    )  # fmt: skip
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    world = accelerator.num_processes
    per_process = per_process_batch(cfg.batch_size, cfg.grad_accum, world, " comparisons")
    micro = per_process * world
    rank = accelerator.process_index
    run = RunDirectory.for_data_trainer(cfg, accelerator)
    start = run.check(total_steps)
    if run.finished is not None:
        say(run.nothing_to_do)
        return read_metrics(out / "eval.json")
    if start is not None:  # the checkpoint's own model and tokenizer; weights restored below
        model = load_model(start.path / "model")
        model.max_length = min(model.max_length, cfg.max_length)
    else:
        model = _build_model(cfg, train)
    save_dtype = _save_dtype(cfg)
    model.float()  # float32 master weights: half-precision weights cannot absorb small steps

    # pre-tokenize once (chat prompts through the model's chat template)
    encoded = model.encode(
        [c.prompt for c in train], [c.response_a for c in train], [c.response_b for c in train]
    )
    labels = torch.tensor([c.label for c in train], dtype=torch.float32)

    no_decay = ("bias", "norm", "ln_")
    groups = [
        {
            "params": [
                p for n, p in model.named_parameters() if not any(k in n.lower() for k in no_decay)
            ],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [
                p for n, p in model.named_parameters() if any(k in n.lower() for k in no_decay)
            ],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, "linear")
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    checks_grad = accelerator.scaler is None  # fp16's scaler skips overflowing steps itself

    def run_eval(step: int, log: bool = True) -> dict[str, float]:
        if not evals:
            return {}
        unwrapped = accelerator.unwrap_model(model)
        judge = make_judge(unwrapped, accelerator.device, cfg.eval_batch_size)
        what = f"the {cfg.kind} model in training"
        metrics = evaluate_judge(judge, evals, cfg.max_triples, cfg.seed, what=what)
        unwrapped.train()
        if log:
            run.log({"step": step, **metrics})
        return metrics

    def write_checkpoint(directory: Path) -> None:
        if is_main:
            accelerator.unwrap_model(model).save_pretrained(directory / "model")
        accelerator.save_state(str(directory / "state"))

    # --- the run directory: lock, config.yaml, resume ---
    start_step = run.open_and_resume(accelerator, say, state="state")
    model.train()
    t0 = time.perf_counter()
    window_loss, window_acc, window_n = 0.0, 0.0, 0
    last_train: dict[str, float] = {}
    bar = tqdm(
        range(start_step, total_steps),
        initial=start_step,
        total=total_steps,
        desc=f"train {cfg.kind}",
        disable=not (is_main and cfg.progress),
        dynamic_ncols=True,
    )
    try:
        for step in bar:
            # 1-3. this process's share of the step's comparisons, per micro-batch: both orders
            #      of every pair in one forward, soft-label cross-entropy, backward
            step_loss = 0.0
            for m in range(cfg.grad_accum):
                first = (step * cfg.grad_accum + m) * micro + rank * per_process
                idx = shuffled_indices(len(train), cfg.seed, first, per_process)
                batch = accelerator.unwrap_model(model).collate([encoded[i] for i in idx])
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                target = labels[idx].to(accelerator.device)
                sync = m == cfg.grad_accum - 1
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx:
                    d = model(**batch)  # (B,)
                    loss = F.binary_cross_entropy_with_logits(d.float(), target)
                    accelerator.backward(loss / cfg.grad_accum)
                loss_value = float(loss.detach())
                step_loss += loss_value / cfg.grad_accum
                window_loss += loss_value
                window_acc += float((((d > 0) == (target > 0.5)) | (target == 0.5)).float().mean())
                window_n += 1
            # 4. clip (max_grad_norm 0: the norm only), stop on a non-finite loss or gradient
            #    before it reaches the weights, AdamW, schedule
            max_norm = cfg.max_grad_norm or math.inf
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
            checked = torch.tensor([step_loss, grad_norm if checks_grad else 0.0])
            if world > 1:  # every process stops together
                checked = accelerator.reduce(checked.to(accelerator.device), "mean").cpu()
            check_finite_step(step + 1, out, loss=checked[0], grad_norm=checked[1])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            # 5. log, evaluate, checkpoint (a step is logged before it is checkpointed)
            if done % cfg.log_every == 0 or done == total_steps:
                last_train = {
                    "train/loss": window_loss / window_n,
                    "train/accuracy": window_acc / window_n,
                    "train/lr": scheduler.get_last_lr()[0],
                }
                run.log({"step": done, **last_train, "time/elapsed_s": time.perf_counter() - t0})
                bar.set_postfix(loss=f"{last_train['train/loss']:.4f}")
                window_loss, window_acc, window_n = 0.0, 0.0, 0
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
                eval_metrics = run_eval(done)
                if eval_metrics:
                    bar.set_postfix(
                        loss=f"{last_train.get('train/loss', float('nan')):.4f}",
                        eval_acc=f"{eval_metrics['eval/accuracy']:.3f}",
                    )
            if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
                check_finite_weights(done, out, accelerator.unwrap_model(model))
                run.save_checkpoint(done, write_checkpoint)
        bar.close()
        train_seconds = time.perf_counter() - t0

        # --- end: evaluation, checkpoint, then the model and eval.json ---
        if total_steps > start_step:
            eval_metrics = run_eval(total_steps)
            check_finite_weights(total_steps, out, accelerator.unwrap_model(model))
            run.save_checkpoint(total_steps, write_checkpoint)
        else:  # resumed from the last checkpoint: its evaluation was logged before it
            eval_metrics = run_eval(total_steps, log=False)
        metrics = {
            **last_train,
            **eval_metrics,
            "train/steps": float(total_steps),
            "train/comparisons": float(len(train)),
            "eval/comparisons": float(len(evals)),
            "time/train_s": train_seconds,
        }

        def write_final(directory: Path) -> None:
            if is_main:  # training is over: the weights go out in the dtype asked for
                accelerator.unwrap_model(model).to(save_dtype).save_pretrained(directory)
                write_json(directory / "eval.json", metrics)

        run.save_final(total_steps, write_final)
        accelerator.end_training()
    finally:
        bar.close()
        run.close()
    return metrics


def _save_dtype(cfg: PreferenceTrainConfig) -> torch.dtype:
    """``save_dtype``, with auto = the dtype the backbone checkpoint is stored in."""
    from nlhf.models.checkpoint import resolve_dtype, stored_dtype

    if cfg.save_dtype != "auto":
        return resolve_dtype(cfg.save_dtype, "")
    if cfg.model is None:
        return torch.float32
    if Path(cfg.model).is_dir():
        return stored_dtype(cfg.model)
    from transformers import AutoConfig  # a hub name: its config says

    dtype = getattr(AutoConfig.from_pretrained(cfg.model), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
