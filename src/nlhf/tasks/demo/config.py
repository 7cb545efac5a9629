"""Settings of ``nlhf demo``: one config section per stage, and the policies they imply.

``DemoConfig()`` is the default run (``configs/demo.yaml`` lists every field); the ``--quick``
preset is ``configs/demo-quick.yaml`` (only the fields that differ).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nlhf.tasks.summaries import SummaryTaskConfig
from nlhf.train.sft import SFTConfig

METHODS = ("rlhf", "sp", "md", "br", "ema")
# configs/ of the checkout this package lives in (src/nlhf/tasks/demo/config.py -> repo root)
CONFIGS = Path(__file__).resolve().parents[4] / "configs"
QUICK_PRESET = CONFIGS / "demo-quick.yaml"


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
    n_probe_prompts: int = 256
    """fresh prompts on which the policies' style shares are measured during training"""
    max_new_tokens: int = 12
    """maximum response length in tokens when sampling (policies, comparisons, tournament)"""

    def __post_init__(self) -> None:
        for name in (
            "n_demonstrations",
            "n_comparisons",
            "n_policy_prompts",
            "n_eval_prompts",
            "n_probe_prompts",
        ):
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
    """Policy training (stage 5): every method gets the same steps, batch and learning rate.

    How ``tau``, ``lr`` and ``steps`` were chosen (from the training-side measure only, never
    from the tournament): with the exact targets of the learned preference model's style game
    (``pi*_tau``, mu = SFT's style shares, and each beta's fixed point), Nash-MD-PG's and
    self-play's KL(target, pi_t), measured every ``probe_every`` steps, must stop falling and
    then stay in a narrow band. At tau 0.01 (lr 3e-4) it never did: MD0.125 kept circling its
    target for 2,000 steps (KL between 0.002 and 0.12, a period of about 300 steps), and a
    smaller lr (1e-4) was still on the first leg after 600 steps. At tau 0.02 (in the paper's
    sweep, 0.005-0.02) with the same lr, both settled by about 450 steps and stayed within
    KL 0.04 of their targets; ``steps`` is twice that, so that the last quarter of training
    measures the settled band. docs/demo.md records the runs.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """methods to train (any non-empty subset): rlhf, sp (self-play), md (Nash-MD-PG, one per
    beta), br (best response to SFT), ema (Nash-EMA-PG: last iterate and averaged policy)"""
    betas: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5])
    """Nash-MD-PG mixture weights of the reference (paper: 0.125 = MD1 ... 0.75 = MD6)"""
    ema_decay: float = 0.99
    """Nash-EMA-PG parameter averaging: a window of 1/(1 - decay) = 100 steps, a tenth of the
    run like the paper's 0.999 over 10,000 steps"""
    tau: float = 0.02
    """KL regularisation of the NLHF methods (paper: 0.008, swept 0.005-0.02); at 0.01 the
    policies kept circling their style-game target for 2,000 steps, at 0.02 they settle"""
    rlhf_tau: float = 0.05
    """KL regularisation of RLHF (paper: 0.05)"""
    steps: int = 1000
    """optimizer steps per method (equal budgets): twice the ~450 steps after which
    Nash-MD-PG's and self-play's KL to their style-game targets stopped falling"""
    batch_size: int = 32
    """prompts per step"""
    lr: float = 3e-4
    """learning rate (AdamW, constant)"""
    temperature: float = 1.0
    """sampling temperature during training"""
    model_free: bool = False
    """train NLHF methods on sampled 0/1 labels of the preference model instead of P"""
    probe_every: int = 25
    """measure every policy's style shares on the probe prompts every this many steps"""

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"policy.methods: unknown {bad}; choose from {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"policy.methods: a method is listed twice in {self.methods}")
        if "md" in self.methods and not self.betas:
            raise ValueError("policy.betas: give at least one beta for md")
        if any(not 0 < b < 1 for b in self.betas):
            raise ValueError(f"policy.betas must be in (0, 1), got {self.betas}")
        if len(set(self.betas)) != len(self.betas):
            raise ValueError(f"policy.betas: a beta is listed twice in {self.betas}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("policy.steps, batch_size and lr must be positive")
        if self.tau <= 0 or self.rlhf_tau <= 0:
            raise ValueError("policy.tau and policy.rlhf_tau must be > 0")
        if self.probe_every < 1:
            raise ValueError(f"policy.probe_every must be >= 1, got {self.probe_every}")


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
    """torch CPU threads per process (0 = torch's default); one is fastest for these small
    models and does not stall when other processes share the cores"""
    workers: int = 0
    """parallel worker processes for the stages that allow it (the two judges, the policies);
    0 = one per CPU core available to this process"""
    device: Literal["cpu", "auto"] = "cpu"
    """where sampling, policy training, the probes and the tournament run: cpu, or auto (a GPU
    when there is one; the preference models follow it, SFT uses a GPU whenever one exists).
    Like threads and workers, it does not invalidate finished stages"""
    until: int = 7
    """stop after this stage (1 task data, 2 SFT, 3 comparisons, 4 preference/reward models,
    5 policies, 6 tournament, 7 report)"""
    overwrite: bool = False
    """run every stage again even if it is up to date (each stage's old outputs are replaced
    when its new ones are complete), and allow an output directory that holds something other
    than a demo run (files the demo does not write are left alone)"""
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
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    @property
    def torch_device(self) -> str:
        """The torch device of ``device`` (``auto``: CUDA when there is a GPU, else the CPU)."""
        from nlhf.devices import resolve_device

        return str(resolve_device(self.device))

    @property
    def n_workers(self) -> int:
        """``workers``, or the number of CPU cores this process may use."""
        if self.workers:
            return self.workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


@dataclass(frozen=True)
class PolicySpec:
    """One policy the demo trains: what the report calls it and how the trainer runs it."""

    name: str
    """report name: RLHF, SP, MD0.125, BR, EMA"""
    method: str
    """one of METHODS"""
    alternative: Literal["self", "mixture", "reference", "ema"]
    """the trainer's alternative policy"""
    beta: float = 0.0
    """the reference's weight in the alternative's token-level mixture (SP 0, BR 1)"""
    ema_decay: float = 0.0
    """Nash-EMA-PG's parameter averaging (ema only)"""

    @property
    def reward_model(self) -> bool:
        """Trained against the reward model (RLHF) rather than the preference model."""
        return self.method == "rlhf"

    @property
    def stage(self) -> str:
        """Its stage directory."""
        return f"05_{self.name.lower()}"

    @property
    def averaged_name(self) -> str | None:
        """Name of the averaged policy it also yields (Nash-EMA-PG's EMA*), if any."""
        return f"{self.name}*" if self.method == "ema" else None


def policy_specs(cfg: DemoConfig) -> list[PolicySpec]:
    """One training run per method (and per beta for Nash-MD), in the report's order."""
    pc = cfg.policy
    specs: list[PolicySpec] = []
    for m in pc.methods:
        if m == "rlhf":
            specs.append(PolicySpec("RLHF", m, "self"))
        elif m == "sp":
            specs.append(PolicySpec("SP", m, "self"))
        elif m == "md":
            specs += [PolicySpec(f"MD{b:g}", m, "mixture", beta=b) for b in pc.betas]
        elif m == "br":
            specs.append(PolicySpec("BR", m, "reference", beta=1.0))
        elif m == "ema":
            specs.append(PolicySpec("EMA", m, "ema", ema_decay=pc.ema_decay))
    return specs
