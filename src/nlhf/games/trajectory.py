"""What every tabular algorithm returns: its output policy, last iterate and kept history."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from nlhf.games.game import PreferenceGame


@dataclass
class Trajectory:
    """The result of running a tabular algorithm for ``iterations`` steps.

    Attributes:
        name: the algorithm (``nash-md``, ``self-play``, ...).
        policy: the algorithm's output: the last iterate, except for fictitious play, whose output
            is the average of its iterates (game's policy shape, ``(n,)`` or ``(C, n)``).
        output: ``"last"`` or ``"average"``: which of the two ``policy`` is.
        last: the last iterate ``pi_T``.
        average: the uniform average ``(pi_0 + ... + pi_T) / (T + 1)``.
        steps: ``(K,)`` iterations ``t`` at which the history was kept.
        history: ``(K, *policy_shape)`` the output policy at those iterations.
        average_history: ``(K, *policy_shape)`` the running average at those iterations.
        iterations: ``T`` (fewer if a callback stopped the run).
        matvecs: matrix-vector products with ``P`` used (per context).
        seconds: wall-clock time of the run, without the time spent in the callback.
        params: the step sizes and other settings used.
    """

    name: str
    policy: np.ndarray
    output: str
    last: np.ndarray
    average: np.ndarray
    steps: np.ndarray
    history: np.ndarray
    average_history: np.ndarray
    iterations: int
    matvecs: int
    seconds: float
    params: dict = field(default_factory=dict)


class Recorder:
    """Keeps the running average and the iterates at the requested steps (internal helper)."""

    def __init__(
        self,
        game: PreferenceGame,
        iterations: int,
        record: Iterable[int] | None,
        callback: Callable[[int, np.ndarray, int], bool] | None = None,
    ):
        self.game = game
        self.callback = callback
        self.callback_seconds = 0.0
        self.last_t = 0
        self.iterations = int(iterations)
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.record = set() if record is None else {int(t) for t in record}
        self.steps: list[int] = []
        self.history: list[np.ndarray] = []
        self.average_history: list[np.ndarray] = []
        self.sum = np.zeros_like(game.mu3)
        self.count = 0
        self.matvecs = 0
        self.start = time.perf_counter()

    def __call__(self, t: int, pi3: np.ndarray, output3: np.ndarray | None = None) -> bool:
        """Account for iterate ``pi_t`` (``(C, n)``); ``output3`` overrides the kept policy.

        Returns True when the callback asks to stop.
        """
        self.sum += pi3
        self.count += 1
        self.last_t = t
        if t in self.record:
            self.steps.append(t)
            avg = self.sum / self.count
            self.history.append(self.game.from_batch((pi3 if output3 is None else output3).copy()))
            self.average_history.append(self.game.from_batch(avg.copy()))
        if self.callback is not None:
            begin = time.perf_counter()
            stop = bool(self.callback(t, pi3 if output3 is None else output3, self.matvecs))
            self.callback_seconds += time.perf_counter() - begin
            return stop
        return False

    def finish(
        self, name: str, last3: np.ndarray, params: dict, output: str = "last"
    ) -> Trajectory:
        seconds = time.perf_counter() - self.start - self.callback_seconds
        shape = (0, *self.game.policy_shape)
        average = self.game.from_batch(self.sum / max(self.count, 1))
        last = self.game.from_batch(last3)
        return Trajectory(
            name=name,
            policy=average if output == "average" else last,
            output=output,
            last=last,
            average=average,
            steps=np.array(self.steps, dtype=int),
            history=np.array(self.history) if self.history else np.zeros(shape),
            average_history=(
                np.array(self.average_history) if self.average_history else np.zeros(shape)
            ),
            iterations=self.last_t,
            matvecs=self.matvecs,
            seconds=seconds,
            params=params,
        )


def initial_log_policy(game: PreferenceGame, init: np.ndarray | None) -> np.ndarray:
    """``log pi_0`` as ``(C, n)``: ``log mu`` by default, else the log of a validated ``init``."""
    if init is None:
        return game.log_mu3.copy()
    pi3 = game.as_batch(init)
    if (pi3 <= 0).any() or np.abs(pi3.sum(-1) - 1).max() > 1e-9:
        raise ValueError("init must be a strictly positive probability vector (per context)")
    return np.log(pi3)


def theorem1_eta(tau: float, t: int) -> float:
    """Theorem 1's step size ``eta_t = 2 / (tau (t + 2))`` (paper §4)."""
    return 2.0 / (tau * (t + 2))


def step_sizes(game: PreferenceGame, eta: float | None, name: str):
    """A function ``t -> eta_t``: Theorem 1's schedule if ``eta`` is None, else constant."""
    if eta is None:
        if game.tau <= 0:
            raise ValueError(f"{name}: the Theorem 1 schedule needs tau > 0; give a constant eta")
        return lambda t: theorem1_eta(game.tau, t), "theorem1"
    eta = float(eta)
    if not eta > 0:
        raise ValueError(f"{name}: eta must be > 0, got {eta}")
    if eta * game.tau > 1:
        raise ValueError(f"{name}: eta * tau must be <= 1, got {eta} * {game.tau}")
    return (lambda t: eta), "constant"
