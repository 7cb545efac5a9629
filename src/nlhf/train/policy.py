"""The policy trainer: Nash-MD-PG, Nash-EMA-PG, self-play, best response and the RLHF baseline.

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), §6 and App. F. For each prompt
``x`` the policy samples ``y ~ pi_theta(.|x)`` and the *alternative policy* samples
``y' ~ pi'(.|x)`` (no gradient through ``y'``); the update follows

    g = grad log pi_theta(y|x) * [ P(y > y'|x) - 1/2 - tau * log(pi_theta(y|x) / mu(y|x)) ],

where ``1/2 = P(y > y|x)`` is the baseline and the KL estimate is applied reward-to-go style:
token ``n``'s ``grad log pi_theta(y_n | x, y_<n)`` is multiplied by the log-ratio terms of
indices ``>= n`` only. The alternative names the algorithm:

- ``mixture``   Nash-MD-PG: ``pi'`` = token-level geometric mixture ``pi^(1-beta) mu^beta``;
- ``self``      self-play (SP) = mixture with beta = 0;
- ``reference`` best response to mu (BR) = mixture with beta = 1;
- ``ema``       Nash-EMA-PG: ``pi'`` = the policy with EMA parameters
  ``theta_bar <- decay * theta_bar + (1 - decay) * theta``;
- ``reward_model=True``: the RLHF baseline, ``r(x, y) - baseline`` in place of ``P - 1/2``.

``model_free=True`` replaces ``P(y > y'|x)`` by a sampled 0/1 preference label. Which of the
three scores the update uses is chosen once, before the loop (:func:`make_scorer`).

One iteration (:func:`train_policy`, top to bottom):

1. learning rate from the schedule;
2. per micro-batch: sample ``y ~ pi_theta`` and ``y' ~ pi'`` (KV-cached, ``nlhf.sampling``),
   each sample from its own generator (:func:`sample_generators`: N processes sample what one
   process samples);
3. score the decoded texts (the judge may use its own tokenizer): ``P(y > y'|x) - 1/2``, a
   sampled label - 1/2, or a reward minus a baseline;
4. advantages per token: ``A_n = P - 1/2 - tau * sum_{m >= n} log(pi/mu)(y_m)`` (detached);
5. loss ``-sum_n A_n log pi_theta(y_n | .)``, averaged over the batch; accumulate gradients;
6. clip the gradient norm; stop on a non-finite loss or gradient norm; optimizer and scheduler
   step; EMA update;
7. log, callback, checkpoint every ``checkpoint_every`` steps (``nlhf.train.run``).

Note on the fixed point: with a constant ``beta > 0`` the expected update is stationary where
``pi = argmax_pi E_{y~pi} P(y > pi^beta) - tau KL(pi, mu)``, which approaches the regularized
Nash equilibrium ``pi*_tau`` as ``beta -> 0`` (in the tabular Nash-MD, ``beta = eta * tau`` with
``eta -> 0``); the difference is O(beta^2) in KL (see tests/test_train_policy_tabular.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from nlhf.config import to_dict
from nlhf.data.prompts import load_prompts
from nlhf.models.chat import is_chat
from nlhf.models.checkpoint import (
    load_causal_lm,
    load_tokenizer,
    quiet_loading,
    resolve_dtype,
    save_causal_lm,
    stored_dtype,
)
from nlhf.models.judge import Judge, judge_prob, judge_reward, sample_labels
from nlhf.sampling import (
    AdaptersDisabled,
    EMAPolicy,
    context_length,
    encode_prompts,
    generate,
    generate_pair,
    token_logprobs,
)
from nlhf.train.run import (
    RunDirectory,
    check_finite_step,
    check_finite_weights,
    check_trackers,
    lr_factor,
    shuffled_indices,
    start_accelerator,
)

__all__ = [
    "PolicyTrainConfig",
    "train_policy",
    "load_prompts",
    "make_scorer",
    "policy_gradient_loss",
    "sample_generators",
]


@dataclass
class PolicyTrainConfig:
    """Hyper-parameters of ``nlhf train`` (one field per flag)."""

    policy: str | None = None
    """policy checkpoint to start from (a Hugging Face causal LM directory, usually the SFT
    model)"""
    reference: str | None = None
    """reference policy mu (default: the initial policy; with --lora: the base model with the
    adapters disabled)"""
    tokenizer: str | None = None
    """tokenizer directory (default: the one saved with the policy)"""
    judge: str | None = None
    """the judge: a preference- or reward-model directory, python:MODULE:FUNCTION, or another
    registered judge scheme (nlhf.models.judges.resolve_judge)"""
    judge_batch_size: int = 64
    """batch size of the judge's forward passes"""
    prompts: str | None = None
    """prompt file: .txt (one prompt per line), .jsonl (objects with a "prompt" key) or .json"""
    output_dir: str = "runs/policy"
    """where the final policy, metrics.jsonl, config.yaml and checkpoint/ are written"""
    alternative: Literal["mixture", "ema", "self", "reference"] = "mixture"
    """the alternative policy y' is sampled from: mixture (Nash-MD-PG), ema (Nash-EMA-PG),
    self (self-play, SP = mixture with beta 0), reference (best response to mu, BR = beta 1)"""
    beta: float = 0.125
    """mixture weight of the reference in the token-level geometric mixture pi^(1-beta) mu^beta"""
    ema_decay: float = 0.999
    """EMA decay of the alternative policy's parameters for alternative=ema"""
    tau: float = 0.008
    """KL regularization strength toward the reference"""
    reward_model: bool = False
    """RLHF baseline: the judge is a reward model and r(x, y) - baseline replaces P(y > y') - 1/2"""
    reward_baseline: Literal["mean", "alternative", "none"] = "mean"
    """RLHF baseline (with reward_model only): leave-one-out batch mean of r, r(x, y') of the
    alternative's sample, or none"""
    model_free: bool = False
    """use a sampled 0/1 preference label instead of the probability P(y > y'|x) (not with
    reward_model)"""
    steps: int = 100
    """number of optimizer steps"""
    batch_size: int = 16
    """prompts per optimizer step on each process (one y and one y' per prompt)"""
    grad_accum: int = 1
    """micro-batches per optimizer step (batch_size must be divisible by it)"""
    max_new_tokens: int = 64
    """maximum response length in tokens"""
    temperature: float = 1.0
    """sampling temperature of both policies (the gradient is of the tempered policy)"""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """optimizer"""
    lr: float = 1e-5
    """peak learning rate"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """learning-rate schedule after warm-up"""
    warmup_steps: int = 0
    """linear warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient-norm clipping threshold (0 = no clipping)"""
    seed: int = 0
    """random seed (sampling, data order)"""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """compute precision (accelerate autocast) where the device supports it; the trained
    weights, the optimizer state and the EMA stay float32 master copies in every case"""
    reference_dtype: Literal["float32", "auto"] = "float32"
    """dtype of the frozen reference mu: float32 (exact log-ratios; kl/ref is exactly 0 at the
    start) or auto (the checkpoint's stored dtype, e.g. bf16: half the reference's memory, its
    log-probs then carry half-precision rounding)"""
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the saved policy (and EMA) weights; auto = the dtype the policy checkpoint is
    stored in"""
    cpu: bool = False
    """force CPU even when a GPU is available"""
    lora: bool = False
    """train LoRA adapters (PEFT) instead of all weights; the reference is then the base model
    with the adapters disabled"""
    lora_r: int = 8
    """LoRA rank"""
    lora_alpha: float = 16.0
    """LoRA alpha"""
    lora_target_modules: list[str] = field(default_factory=list)
    """modules to adapt (default: PEFT's choice for the architecture)"""
    checkpoint_every: int = 50
    """save a resumable checkpoint every N steps and at the end (0 = never)"""
    resume: bool = False
    """continue the run in output_dir from its checkpoint (bit-for-bit on the same device);
    only the fields listed in docs/train.md may change"""
    overwrite: bool = False
    """replace a run already in output_dir (and allow output_dir to be an input: training in
    place)"""
    stop_after: int | None = None
    """stop this run after N steps (with a checkpoint), e.g. to fit a job time limit; continue
    later with --resume"""
    log_every: int = 1
    """write metrics every N steps"""
    log_with: list[str] = field(default_factory=list)
    """accelerate trackers to log to as well: tensorboard, wandb, trackio, ... (JSONL is always
    written)"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        for name in ("steps", "batch_size", "grad_accum", "max_new_tokens", "judge_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by "
                f"grad_accum ({self.grad_accum})"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        for name in ("warmup_steps", "checkpoint_every", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.model_free and self.reward_model:
            raise ValueError(
                "model_free / reward_model: choose one; model_free samples a preference label, "
                "reward_model scores each response with a reward"
            )
        if self.reward_baseline != "mean" and not self.reward_model:
            raise ValueError(
                f"reward_baseline: {self.reward_baseline!r} is used only with --reward-model "
                "(the RLHF baseline)"
            )

    @property
    def may_change(self) -> set[str]:
        """Fields a ``--resume`` may change: logging, progress, checkpoint frequency, where to
        stop this time, and the step budget when the learning rate does not depend on it (a
        constant schedule)."""
        fields = {"stop_after", "checkpoint_every", "log_every", "log_with", "progress"}
        return fields | ({"steps"} if self.lr_schedule == "constant" else set())

    @property
    def mixture_beta(self) -> float:
        """The reference weight of the alternative's token-level mixture (ema: unused)."""
        return {"mixture": self.beta, "self": 0.0, "reference": 1.0, "ema": 0.0}[self.alternative]


# --------------------------------------------------------------------------------------------
# inputs


def _load_models(cfg: PolicyTrainConfig, policy, reference, tokenizer):
    """The policy as float32 master weights, the frozen reference (``cfg.reference_dtype``;
    by default a copy of the initial policy, none with LoRA), the tokenizer, and the dtype the
    policy is saved in. Objects passed in are converted in place."""
    if policy is None:
        if cfg.policy is None:
            raise ValueError("policy: give a policy checkpoint directory (--policy DIR)")
        with_tok = tokenizer is None and cfg.tokenizer is None
        policy, policy_tok = load_causal_lm(
            cfg.policy, "policy", dtype="float32", with_tokenizer=with_tok
        )
        input_dtype = stored_dtype(cfg.policy)
        tokenizer = tokenizer if policy_tok is None else policy_tok
    else:
        input_dtype = _float_dtype(policy, "policy")
        policy.float()  # float32 master weights: half-precision weights cannot absorb small steps
    if tokenizer is None:
        if cfg.tokenizer is None:
            raise ValueError("tokenizer: give --tokenizer DIR (the policy came without one)")
        tokenizer = load_tokenizer(cfg.tokenizer, "tokenizer")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: it has no EOS token, so responses could never end")
    ref_dtype = torch.float32 if cfg.reference_dtype == "float32" else None  # None: as stored
    if reference is None and cfg.reference is not None:
        reference, _ = load_causal_lm(
            cfg.reference, "reference", dtype=cfg.reference_dtype, with_tokenizer=False
        )
        if (Path(cfg.reference) / "tokenizer.json").is_file():
            ref_tok = load_tokenizer(cfg.reference, "reference")
            if ref_tok.get_vocab() != tokenizer.get_vocab():
                raise ValueError(
                    f"reference {cfg.reference}: its tokenizer's vocabulary differs from the "
                    "policy's; the reference must share the policy's vocabulary"
                )
    elif reference is not None:
        _float_dtype(reference, "reference")
        if ref_dtype is not None:
            reference.to(ref_dtype)
    elif not cfg.lora:  # mu = a frozen copy of the initial policy, in the reference dtype
        reference = copy.deepcopy(policy).to(ref_dtype or input_dtype)
    if reference is not None:
        v_pi, v_mu = policy.config.vocab_size, reference.config.vocab_size
        if v_pi != v_mu:
            raise ValueError(
                f"reference: vocabulary size {v_mu} differs from the policy's {v_pi}; "
                "the reference must share the policy's vocabulary"
            )
    if len(tokenizer) > policy.config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the policy's vocabulary has only "
            f"{policy.config.vocab_size}"
        )
    save_dtype = input_dtype if cfg.save_dtype == "auto" else resolve_dtype(cfg.save_dtype, "")
    return policy, reference, tokenizer, save_dtype


def _float_dtype(model: torch.nn.Module, what: str) -> torch.dtype:
    """The dtype of a model's weights; an error unless they are floating point."""
    dtypes = {p.dtype for p in model.parameters()}
    if not dtypes:
        raise ValueError(f"{what}: the model has no parameters")
    bad = sorted(str(d).removeprefix("torch.") for d in dtypes if not d.is_floating_point)
    if bad:
        raise ValueError(
            f"{what}: weights of dtype {', '.join(bad)} (quantized?) cannot be trained or "
            "scored exactly; dequantize the model first"
        )
    return max(dtypes, key=lambda d: torch.finfo(d).bits)


def _load_judge(
    cfg: PolicyTrainConfig, judge, device: torch.device | None = None
) -> tuple[Judge, str | None]:
    """The judge (``cfg.judge`` resolved on ``device`` unless an object is given) and the name
    its errors carry (``--judge SPEC``; an object is named by its class)."""
    what = None
    if judge is None:
        if cfg.judge is None:
            raise ValueError("judge: give a preference-model or reward-model directory (--judge)")
        from nlhf.models.judges import resolve_judge

        with quiet_loading():
            judge = resolve_judge(cfg.judge, device=device, batch_size=cfg.judge_batch_size)
        what = f"--judge {cfg.judge}"
    name = what or "judge"
    if cfg.reward_model and not callable(getattr(judge, "reward", None)):
        raise ValueError(
            f"reward_model: the {name} has no .reward(prompts, responses) method; the RLHF "
            "baseline needs a reward model (nlhf train-preference --kind reward)"
        )
    if not cfg.reward_model and not callable(getattr(judge, "prob", None)):
        raise ValueError(f"{name}: it has no .prob(prompts, a, b) method")
    return judge, what


def _check_prompts(
    prompts: Sequence[str], tokenizer, policy, max_new_tokens: int
) -> list[list[int]]:
    """Validate the prompts; return their token ids."""
    if prompts is None or len(prompts) == 0:
        raise ValueError("prompts: the prompt set is empty")
    for i, p in enumerate(prompts):
        if not (isinstance(p, str) or is_chat(p)):
            raise ValueError(f"prompts: prompt {i} is neither text nor chat messages: {p!r:.80}")
    encoded = encode_prompts(tokenizer, prompts)
    lengths = [len(ids) for ids in encoded]
    limit = context_length(policy)
    if limit is not None:
        for i, n in enumerate(lengths):
            if n + max_new_tokens > limit:
                raise ValueError(
                    f"prompts: prompt {i} has {n} tokens; with max_new_tokens={max_new_tokens} "
                    f"that exceeds the model context of {limit} tokens"
                )
    return encoded


# --------------------------------------------------------------------------------------------
# pieces of the update


def policy_gradient_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    score: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's estimator as a surrogate loss.

    logp (B, T) log pi_theta(y_n | .) WITH grad; ref_logp (B, T) log mu(y_n | .); mask (B, T);
    score (B,) = P(y > y'|x) - 1/2 (or a label - 1/2, or a reward minus a baseline).
    Advantage of token n: ``A_n = score - tau * sum_{m >= n} (logp_m - ref_logp_m)``, detached;
    loss = ``-mean_b sum_n A_n logp_n``, whose gradient is the paper's ``-g``.
    """
    mask = mask.to(logp.dtype)
    log_ratio = (logp.detach() - ref_logp) * mask  # (B, T)
    kl_to_go = log_ratio.flip(-1).cumsum(-1).flip(-1)  # (B, T) sum over m >= n
    advantage = (score[:, None] - tau * kl_to_go) * mask  # (B, T), no grad
    pref_term = -(logp * mask).sum(-1) * score  # (B,)
    kl_term = tau * (logp * kl_to_go * mask).sum(-1)  # (B,)
    loss = -(logp * advantage).sum(-1).mean()
    terms = {
        "loss/pref": pref_term.mean().detach(),
        "loss/kl": kl_term.mean().detach(),
        "kl/ref": log_ratio.sum(-1).mean(),
    }
    return loss, terms


# --------------------------------------------------------------------------------------------
# the score: what takes the place of P(y > y'|x) - 1/2, chosen once before the loop


class Scorer(Protocol):
    """``scorer(prompts, y_texts, y_alt_texts) -> (score (B,), metrics)``; ``needs_alternative``
    says whether it reads ``y'`` (otherwise no ``y'`` is sampled and ``y_alt_texts`` is None)."""

    needs_alternative: bool

    def __call__(
        self, prompts: Sequence[Any], y: Sequence[str], y_alt: Sequence[str] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass
class PreferenceScore:
    """``P(y > y'|x) - 1/2`` (Nash-MD-PG, Nash-EMA-PG, SP, BR; paper §6)."""

    judge: Judge
    what: str | None = None
    needs_alternative: bool = True

    def __call__(self, prompts, y, y_alt):
        p = judge_prob(self.judge, prompts, y, y_alt, what=self.what)  # (B,)
        return p - 0.5, {"pref/mean": p.mean()}


@dataclass
class LabelScore:
    """A sampled 0/1 preference label minus 1/2 (the model-free variant, paper §6); the
    generator is part of the checkpoint."""

    judge: Judge
    generator: torch.Generator
    what: str | None = None
    needs_alternative: bool = True

    def __call__(self, prompts, y, y_alt):
        label = sample_labels(
            self.judge, prompts, y, y_alt, generator=self.generator, what=self.what
        )  # (B,) in {0, 1}
        return label - 0.5, {"pref/mean": label.mean()}


@dataclass
class RewardScore:
    """``r(x, y) - b`` (the RLHF baseline): ``b`` = the leave-one-out batch mean of ``r``,
    ``r(x, y')`` of the alternative's sample, or 0."""

    judge: Any
    baseline: Literal["mean", "alternative", "none"] = "mean"
    what: str | None = None

    @property
    def needs_alternative(self) -> bool:
        return self.baseline == "alternative"

    def __call__(self, prompts, y, y_alt):
        reward = judge_reward(self.judge, prompts, y, what=self.what)  # (B,)
        if self.baseline == "alternative":
            base = judge_reward(self.judge, prompts, y_alt, what=self.what)  # (B,)
        elif self.baseline == "mean" and reward.numel() > 1:
            base = (reward.sum() - reward) / (reward.numel() - 1)  # (B,) leave-one-out
        else:
            base = torch.zeros_like(reward)
        return reward - base, {"reward/mean": reward.mean()}


def make_scorer(
    cfg: PolicyTrainConfig, judge: Judge, label_generator: torch.Generator, what: str | None
) -> Scorer:
    """The score of ``cfg``: a reward minus a baseline (``reward_model``), a sampled label
    (``model_free``) or the preference probability."""
    if cfg.reward_model:
        return RewardScore(judge, cfg.reward_baseline, what)
    if cfg.model_free:
        return LabelScore(judge, label_generator, what)
    return PreferenceScore(judge, what)


# --------------------------------------------------------------------------------------------
# scale-out: random streams per sample, frozen models under sharding


def sample_generators(seed: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, for samples ``first .. first + count - 1`` of the run's
    global sample stream (the same numbering as the prompts, ``shuffled_indices``). A sample's
    ``y`` and ``y'`` then depend only on ``(seed, its index)``: not on how a step's global batch
    is split over processes and micro-batches, and not on any state a resume must restore."""
    generators = []
    for k in range(first, first + count):
        key = hashlib.blake2b(f"nlhf-sample:{seed}:{k}".encode(), digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(key) >> 1))
    return generators


def _shard_frozen(model: torch.nn.Module) -> None:
    """FSDP2 for a frozen model (the reference): its transformer blocks and then the whole
    model sharded over the processes with ``fully_shard``; a forward gathers the weights."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def _gathered(accelerator, model: torch.nn.Module):
    """DeepSpeed ZeRO-3 partitions the weights: gather the trainable ones to read them whole
    (the EMA update); nothing to do otherwise (FSDP2's DTensors are gathered by the EMA)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        return deepspeed.zero.GatheredParameters(params)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# the trainer


def train_policy(
    cfg: PolicyTrainConfig,
    prompts: list[str] | None = None,
    judge: Judge | None = None,
    *,
    policy_model: torch.nn.Module | None = None,
    reference_model: torch.nn.Module | None = None,
    tokenizer=None,
    callback: Callable[..., None] | None = None,
) -> Path:
    """Train a policy (paper §6) and write ``cfg.output_dir``; returns that directory.

    ``prompts``/``judge`` override ``cfg.prompts``/``cfg.judge``; ``policy_model``,
    ``reference_model`` and ``tokenizer`` (Hugging Face objects) override the paths. The
    reference defaults to a frozen copy of the initial policy. ``callback(step, policy,
    record)`` (optional) runs on the main process once before the first update (step 0,
    ``record = {"step": 0}``) and after every step, with the unwrapped policy and the step's
    metrics, e.g. for custom evaluation; a callback that takes an ``alternative`` keyword also
    gets the EMA alternative policy (``alternative="ema"``; None otherwise).

    Everything is checked before the output directory is touched (``nlhf.train.run``); a
    ``--resume`` of a finished run does nothing.
    """
    from accelerate.utils import DistributedType
    from tqdm.auto import tqdm

    # --- inputs, all checked before anything is written ---
    out = Path(cfg.output_dir)
    policy, reference, tokenizer, save_dtype = _load_models(
        cfg, policy_model, reference_model, tokenizer
    )
    if prompts is None and cfg.prompts is None:
        raise ValueError("prompts: give a prompt file (--prompts FILE)")
    prompts = list(prompts) if prompts is not None else load_prompts(cfg.prompts)
    prompt_ids = _check_prompts(prompts, tokenizer, policy, cfg.max_new_tokens)
    check_trackers(cfg.log_with)

    accelerator, _ = start_accelerator(
        cfg.mixed_precision,
        cfg.cpu,
        log_with=list(cfg.log_with) or None,
        project_dir=str(out),
        # one schedule step per optimizer step on any number of processes (accelerate would
        # step a prepared scheduler once per process: its data loaders grow with the processes)
        step_scheduler_with_optimizer=False,
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and cfg.grad_accum > 1:
        raise ValueError(
            f"grad_accum: {cfg.grad_accum} under DeepSpeed; its engine steps inside every "
            "backward, so use --grad-accum 1 (a larger --batch-size or more processes instead)"
        )
    if accelerator.is_fsdp2 and cfg.optimizer == "sgd" and (cfg.checkpoint_every or cfg.resume):
        raise ValueError(
            "optimizer: sgd under FSDP2 cannot resume from its checkpoints (torch cannot load an "
            "optimizer state without state tensors into a sharded optimizer); use --optimizer "
            "adamw, or --checkpoint-every 0"
        )
    device = accelerator.device
    judge, judge_name = _load_judge(cfg, judge, device)  # a replica on each process's device
    is_main = accelerator.is_main_process
    judge_path = cfg.judge if cfg.judge is not None and Path(cfg.judge).exists() else None
    run = RunDirectory(
        out, cfg, resume=cfg.resume, overwrite=cfg.overwrite,
        inputs={"policy": cfg.policy, "reference": cfg.reference, "tokenizer": cfg.tokenizer,
                "judge": judge_path},
        reads=[cfg.prompts], may_change=cfg.may_change, is_main=is_main,
        barrier=accelerator.wait_for_everyone,
    )  # fmt: skip
    start = run.check(cfg.steps)
    if run.finished is not None:
        accelerator.print(run.nothing_to_do)
        return out
    reference_print = _fingerprint(reference) if reference is not None else None
    if start is not None and start.extra.get("reference") not in (None, reference_print):
        raise ValueError(
            f"resume: the reference differs from the one the checkpoint in {start.path} was "
            "trained with; pass the same --reference (or the same initial --policy when the "
            "reference is its copy)"
        )
    torch.manual_seed(cfg.seed)

    # --- models: policy (trained), reference mu (frozen), optional EMA alternative ---
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,  # dropout stays off: the gradient is of the sampled policy
            target_modules=list(cfg.lora_target_modules) or None,
        )
        policy = get_peft_model(policy, lora)
    if reference is not None:
        reference.requires_grad_(False)
        reference.eval()
    policy.eval()  # dropout off: the gradient is of the distribution we sample from

    ema = None
    if cfg.alternative == "ema":  # a full copy, made before the policy is wrapped or sharded
        ema = EMAPolicy(policy, decay=cfg.ema_decay).to(device)
        accelerator.register_for_checkpointing(ema)

    params = [p for p in policy.parameters() if p.requires_grad]  # float32 master weights
    if cfg.optimizer == "adamw":
        fused = device.type in ("cpu", "cuda")  # one kernel for all tensors, not one per op
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
    )
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    if reference is not None:
        reference.to(device)
        if accelerator.is_fsdp2:  # frozen, sharded like the policy (never in the optimizer)
            _shard_frozen(reference)
    else:  # LoRA: the base model with the adapters disabled (shared weights, own KV cache)
        reference = AdaptersDisabled(accelerator.unwrap_model(policy)).eval()
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def sampling_policy() -> torch.nn.Module:
        # FSDP / DeepSpeed gather parameters in the wrapped forward; DDP's wrapper is not needed.
        return policy if sharded else accelerator.unwrap_model(policy)

    # --- random streams: sampling per sample (sample_generators, a function of the step like
    #     the data order); the model-free labels per process (part of the checkpoint) ---
    rank, world = accelerator.process_index, accelerator.num_processes
    generators = {"label": torch.Generator().manual_seed(cfg.seed * 104_729 + rank)}
    state_file = f"nlhf_state_rank{rank}.pt"  # per process: each rank has its own generators
    scorer = make_scorer(cfg, judge, generators["label"], judge_name)

    def write_checkpoint(directory: Path) -> None:
        accelerator.save_state(str(directory))
        state = {"generators": {k: g.get_state() for k, g in generators.items()}}
        torch.save(state, directory / state_file)

    def write_final(directory: Path) -> None:
        _save_policy(accelerator, policy, tokenizer, directory, save_dtype)
        if ema is not None and is_main:
            ema.save_pretrained(directory / "ema", tokenizer=tokenizer, dtype=save_dtype)

    micro_bs = cfg.batch_size // cfg.grad_accum
    beta_alt = cfg.mixture_beta
    # the reference scores y inside the sampling loop when it runs there anyway (a mixture with
    # beta > 0): one more batch row per token instead of a second forward over prompt + y. Not
    # under mixed precision: there log(pi / mu) must come from one computation path (the same
    # full forward for both), else half-precision rounding makes it nonzero at pi = mu.
    score_in_loop = (
        scorer.needs_alternative and ema is None and beta_alt > 0 and cfg.mixed_precision == "no"
    )
    sample_kwargs = dict(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, synced=sharded
    )
    checks_grad = accelerator.scaler is None  # fp16's scaler skips overflowing steps itself
    takes_alternative = _takes_alternative(callback)

    def call_back(step: int, record: dict[str, float]) -> None:
        if callback is not None and is_main:
            extra = {"alternative": ema} if takes_alternative else {}
            callback(step, accelerator.unwrap_model(policy), record, **extra)

    # --- the run directory: lock, config.yaml, resume ---
    start_step = run.open_and_resume(accelerator, accelerator.print)
    if run.start is not None:
        state = torch.load(run.start.path / state_file, weights_only=True)
        for k, g in generators.items():
            g.set_state(state["generators"][k])
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, start_step + cfg.stop_after)
    if cfg.log_with:
        accelerator.init_trackers("nlhf-train", config=to_dict(cfg))
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        disable=not (cfg.progress and is_main),
        desc=f"nlhf train ({cfg.alternative})",
        dynamic_ncols=True,
    )
    try:
        if start_step == 0:
            call_back(0, {"step": 0})
        for step in range(start_step, last_step):
            # 1. learning rate (LambdaLR)
            lr = scheduler.get_last_lr()[0]
            t0 = time.perf_counter()
            # the micro-batches' metrics, read back (a device sync each) once, after the loop
            added: list[tuple[str, torch.Tensor | float]] = []

            def add(name: str, value: torch.Tensor | float, added=added) -> None:
                added.append((name, value))

            for micro in range(cfg.grad_accum):
                # B = micro_bs prompts: this process's slice of the step's global batch
                first = ((step * cfg.grad_accum + micro) * world + rank) * micro_bs
                batch_index = shuffled_indices(len(prompts), cfg.seed, first, micro_bs)
                batch_prompts = [prompts[i] for i in batch_index]
                batch_ids = [prompt_ids[i] for i in batch_index]
                streams = sample_generators(cfg.seed, first, micro_bs)

                # 2. sample y ~ pi_theta and y' ~ pi' (no gradient)
                t_sample = time.perf_counter()
                with torch.no_grad(), accelerator.autocast():
                    if scorer.needs_alternative:  # one sampling loop; the policy's rows batched
                        y, y_alt = generate_pair(
                            sampling_policy(), tokenizer, batch_prompts, reference=reference,
                            beta=beta_alt, alternative=ema, generator=streams,
                            prompt_token_ids=batch_ids, score_reference=score_in_loop,
                            **sample_kwargs,
                        )  # fmt: skip
                    else:  # RLHF with a batch-mean baseline: no y' needed
                        y_alt = None
                        y = generate(
                            sampling_policy(), tokenizer, batch_prompts,
                            generator=streams, prompt_token_ids=batch_ids,
                            **sample_kwargs,
                        )  # fmt: skip
                add("time/sample", time.perf_counter() - t_sample)

                # 3. score the decoded texts (the judge may use its own tokenizer)
                t_judge = time.perf_counter()
                alt_texts = None if y_alt is None else y_alt.texts
                score, judged = scorer(batch_prompts, y.texts, alt_texts)  # (B,)
                score = score.to(device)
                for k, v in judged.items():
                    add(k, v)
                add("time/judge", time.perf_counter() - t_judge)

                # 4. log-probs of y: the policy's with gradient (its entropy comes from the same
                #    chunks of logits, no gradient), the reference's without (from the sampling
                #    loop when it ran there); no (B, T, V) tensor is kept (nlhf.sampling)
                args = (y.prompt_ids, y.prompt_mask, y.response_ids, y.response_mask)
                with accelerator.autocast():
                    logp, entropy = token_logprobs(
                        policy, *args, temperature=cfg.temperature, with_entropy=True
                    )  # (B, T) each
                ref_logp = y.reference_logprobs  # (B, T) or None
                if ref_logp is None:
                    with torch.no_grad(), accelerator.autocast():
                        ref_logp = token_logprobs(reference, *args, temperature=cfg.temperature)

                # 5. advantages (reward-to-go KL) and the surrogate loss
                mask = y.response_mask
                loss, terms = policy_gradient_loss(logp, ref_logp, mask, score, cfg.tau)
                if micro == cfg.grad_accum - 1:
                    accelerator.backward(loss / cfg.grad_accum)
                else:
                    with accelerator.no_sync(policy):
                        accelerator.backward(loss / cfg.grad_accum)

                add("entropy_sum", (entropy * mask).sum())  # a mean over all tokens, below
                add("tokens", mask.sum())
                add("loss/total", loss.detach())
                for k, v in terms.items():
                    add(k, v)
                add("policy/length", y.lengths.float().mean())
                add("policy/eos_rate", y.ended.float().mean())
                if y_alt is not None:
                    add("alternative/length", y_alt.lengths.float().mean())

            sums: dict[str, float] = {}
            for name, value in added:
                sums[name] = sums.get(name, 0.0) + float(value) / cfg.grad_accum

            # 6. clip (max_grad_norm 0: the norm only), stop on a non-finite loss or gradient
            #    before it reaches the weights, optimizer and scheduler step, EMA update
            max_norm = cfg.max_grad_norm or math.inf
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_norm)
            sums["grad/norm"] = float(grad_norm)
            if world > 1:  # every process sees the same numbers (and stops together)
                keys = sorted(sums)
                values = torch.tensor([sums[k] for k in keys], device=device)
                sums = dict(zip(keys, accelerator.reduce(values, "mean").tolist()))
            sums["policy/entropy"] = sums.pop("entropy_sum") / max(sums.pop("tokens"), 1.0)
            checked = {"loss": sums["loss/total"]}
            if checks_grad:
                checked["grad_norm"] = sums["grad/norm"]
            check_finite_step(step + 1, out, **checked)
            optimizer.step()
            if not optimizer.step_was_skipped:  # fp16: the scaler skips overflowing steps
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                trained = accelerator.unwrap_model(policy)
                with _gathered(accelerator, trained):
                    ema.update(trained)

            # 7. log, callback, checkpoint (a step is logged before it is checkpointed, so a
            #    resumed run has every step in metrics.jsonl exactly once)
            done = step + 1
            if "kl/ref" in sums:
                base = sums.get("pref/mean", 0.5) - 0.5 if not cfg.reward_model else 0.0
                sums["objective/regularized"] = base - cfg.tau * sums["kl/ref"]
            record = {"step": done, "lr": lr, **sums}
            record["time/step"] = time.perf_counter() - t0
            if done % cfg.log_every == 0 or done == last_step:
                run.log(record)
                if cfg.log_with:
                    accelerator.log(record, step=done)
            call_back(done, record)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < last_step:
                check_finite_weights(done, out, accelerator.unwrap_model(policy))
                run.save_checkpoint(done, write_checkpoint, {"reference": reference_print})
            shown = {k: record[k] for k in ("pref/mean", "reward/mean", "kl/ref") if k in record}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
            bar.update(1)

        # --- end: checkpoint, final policy (+ EMA) as standard Hugging Face checkpoints ---
        if last_step > start_step:
            check_finite_weights(last_step, out, accelerator.unwrap_model(policy))
            if cfg.checkpoint_every or last_step < cfg.steps:
                run.save_checkpoint(last_step, write_checkpoint, {"reference": reference_print})
        if last_step == cfg.steps:
            run.save_final(last_step, write_final)
        if cfg.log_with:
            accelerator.end_training()
    finally:
        bar.close()
        run.close()
    return out


def _takes_alternative(callback: Callable[..., None] | None) -> bool:
    """Whether a callback accepts the ``alternative`` keyword (3-argument ones do not)."""
    if callback is None:
        return False
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "alternative" or p.kind is p.VAR_KEYWORD for p in params)


@torch.no_grad()
def _fingerprint(model: torch.nn.Module) -> str | None:
    """A cheap identity of a frozen model's weights (per-tensor sums), to catch a resume with
    a different reference. None for LoRA's adapters-disabled view (its base weights live in
    the policy checkpoint)."""
    if isinstance(model, AdaptersDisabled):
        return None
    digest = hashlib.sha256()
    for name, p in model.state_dict().items():
        t = p.detach().double()
        digest.update(f"{name}:{t.sum().item():.10e}:{(t * t).sum().item():.10e};".encode())
    return digest.hexdigest()[:16]


def _save_policy(accelerator, policy, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """The final policy as a standard checkpoint, its weights cast to ``dtype`` on the way out
    (the float32 masters stay in the resumable checkpoint)."""
    unwrapped = accelerator.unwrap_model(policy)
    state_dict = accelerator.get_state_dict(policy)
    if accelerator.is_main_process:
        if hasattr(unwrapped, "merge_and_unload"):  # LoRA: adapters (float32) + merged model
            unwrapped.save_pretrained(str(out / "adapter"))
            merged = copy.deepcopy(unwrapped).merge_and_unload()
            save_causal_lm(merged, out, dtype)
        else:
            save_causal_lm(unwrapped, out, dtype, state_dict=state_dict)
        tokenizer.save_pretrained(str(out))
    accelerator.wait_for_everyone()
