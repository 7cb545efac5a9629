"""Preference models, the Bradley-Terry reward model and judges (paper §5, App. G.1).

```python
from nlhf.models import load_judge
judge = load_judge("runs/pm")                 # a directory written by `nlhf train-preference`
p = judge.prob(prompts, responses_a, responses_b)   # (B,) P(a > b | x), CPU, no grad
judge.reward(prompts, responses)              # reward-model judges only: r(x, y) (B,)
```
"""

from nlhf.models.evaluation import evaluate_judge, expected_calibration_error
from nlhf.models.judge import CallableJudge, Judge, sample_labels
from nlhf.models.judges import (
    PreferenceModelJudge,
    RewardModelJudge,
    load_judge,
    make_judge,
    register_judge_scheme,
    resolve_judge,
)
from nlhf.models.preference import (
    KINDS,
    MARKER,
    EmbeddingPreferenceModel,
    PairwisePreferenceModel,
    RewardModel,
    ScoringModel,
    antisymmetric_sigmoid,
    load_model,
    pretrained_backbone,
    random_backbone,
)

__all__ = [
    "KINDS",
    "MARKER",
    "CallableJudge",
    "EmbeddingPreferenceModel",
    "Judge",
    "PairwisePreferenceModel",
    "PreferenceModelJudge",
    "RewardModel",
    "RewardModelJudge",
    "ScoringModel",
    "antisymmetric_sigmoid",
    "evaluate_judge",
    "expected_calibration_error",
    "load_judge",
    "load_model",
    "make_judge",
    "pretrained_backbone",
    "random_backbone",
    "register_judge_scheme",
    "resolve_judge",
    "sample_labels",
]
