"""The paper's experiment end to end on the built-in simulated-raters task (``nlhf demo``).

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), §7 and App. G, on two CPU cores:
the TL;DR summaries become the simulated summary raters of ``nlhf.tasks.summaries`` (docs/task.md),
the PaLM 2 judge becomes the task's exact population preference, and the T5 models become small
GPT-2-shaped ones.

Stages (each writes under ``OUTPUT_DIR/<stage>/`` and is skipped while the hash of its inputs,
i.e. its config section and the digests of the artefacts it reads, and its outputs are intact;
so a re-run after an interruption picks up where it stopped):

1. ``01_task``        task data: tokenizer, SFT demonstrations, prompt sets, the style game;
2. ``02_sft``         SFT a small GPT-2-shaped policy on the demonstrations (the reference mu);
3. ``03_comparisons`` sample response pairs from the SFT policy, label them with sampled raters;
4. ``04_preference``, ``04_reward``: the pairwise preference model and the Bradley-Terry reward
   model, trained on the same comparisons (in parallel worker processes);
5. ``05_targets``     the exact targets in the learned preference model's style game
   (``pi*_tau``, each method's fixed point) and the raters' style Nash;
   ``05_<policy>``    RLHF, SP, Nash-MD-PG (several beta), BR and Nash-EMA-PG from the SFT
   policy, with equal step budgets, against the learned models (never the exact judge), in
   parallel worker processes; each records its style shares on the probe prompts as it trains;
6. ``06_tournament``  every pair of policies (SFT included) under the exact judge;
7. ``07_report``      ``report.md``: the matrix, convergence to the targets, styles, quality,
   training curves and a reading against the paper's findings.

Modules: ``config`` (the settings and ``PolicySpec``), ``pipeline`` (the stage cache),
``stages``, ``report`` and ``reading`` (the report and its prose), ``command`` (driver, CLI).
"""

from nlhf.tasks.demo.command import add_arguments, resolve_config, run, run_demo
from nlhf.tasks.demo.config import DemoConfig, PolicySpec, policy_specs

__all__ = [
    "DemoConfig",
    "PolicySpec",
    "add_arguments",
    "policy_specs",
    "resolve_config",
    "run",
    "run_demo",
]
