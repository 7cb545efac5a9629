"""Figures of the built-in task and of convergence in a feature game (matplotlib, PNG).

- ``plot_style_distribution``: each policy's distribution over response styles as a stacked
  bar, next to the exact Nash mixture of the style game;
- ``plot_simplex_trajectories``: each policy's path on the simplex of three categories (a
  ternary plot), with the targets marked;
- ``plot_distance_curves``: distances to the targets against the training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from nlhf.eval.plots import save_figure  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plot_style_distribution(
    names: Sequence[str],
    dist: np.ndarray,
    styles: Sequence[str],
    nash: np.ndarray,
    path: str | Path,
    title: str = "Response styles of each policy vs the Nash mixture of the style game",
) -> Path:
    """Stacked horizontal bars: row ``k`` is policy ``names[k]``'s distribution over ``styles``
    (``dist`` (K, S), rows sum to 1); the top bar is the exact Nash mixture ``nash`` (S,), whose
    boundaries are also drawn as dashed lines through every bar. Returns the PNG path."""
    D = np.asarray(dist, dtype=np.float64)
    nash = np.asarray(nash, dtype=np.float64).reshape(-1)
    K, S = len(names), len(styles)
    if D.shape != (K, S):
        raise ValueError(f"dist has shape {D.shape}, expected ({K}, {S}) for names x styles")
    if nash.shape != (S,):
        raise ValueError(f"nash has shape {nash.shape}, expected ({S},)")
    labels = ["Nash mixture"] + list(names)
    rows = np.vstack([nash, D])  # (K+1, S)
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * (K + 1) + 1.8))
    colors = plt.get_cmap("Set2")
    y = np.arange(K + 1)[::-1]  # Nash on top
    left = np.zeros(K + 1)
    handles = []
    for s, style in enumerate(styles):
        width = rows[:, s]
        color = "0.75" if style == "none" else colors(s % 8)
        bars = ax.barh(y, width, left=left, color=color, edgecolor="white")
        handles.append(Patch(facecolor=color, label=style))
        bars[0].set_edgecolor("black")
        bars[0].set_linewidth(1.2)
        for k in range(K + 1):
            if width[k] >= 0.07:
                ax.text(
                    left[k] + width[k] / 2, y[k], f"{width[k]:.0%}", ha="center", va="center",
                    fontsize=8,
                )  # fmt: skip
        left += width
    for b in np.cumsum(nash)[:-1]:
        ax.axvline(b, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_yticks(y, labels=labels)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of responses")
    ax.set_title(title, fontsize=10, pad=24)
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=S, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def _ternary(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> plane: corner 0 bottom left, corner 1 bottom right, corner 2 on top."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))[:, :3]
    p = p / p.sum(-1, keepdims=True)
    return p[:, 1] + 0.5 * p[:, 2], (np.sqrt(3) / 2) * p[:, 2]


def plot_simplex_trajectories(
    trajectories: Mapping[str, np.ndarray],
    categories: Sequence[str],
    targets: Mapping[str, np.ndarray],
    path: str | Path,
    own_targets: Mapping[str, np.ndarray] | None = None,
    start: np.ndarray | None = None,
    title: str = "Style shares during training",
) -> Path:
    """Ternary plot of three-category shares: one line per policy (``(N, 3)`` or ``(N, 4)``
    shares over training; a fourth "no category" share is dropped and the rest renormalised),
    its last point filled; ``targets`` (``{label: (3,)}``) as large markers shared by all;
    ``own_targets`` (``{policy: (3,)}``) as small crosses in the policy's colour; ``start``
    (e.g. the reference policy) as a black circle."""
    if len(categories) != 3:
        raise ValueError(f"a ternary plot needs three categories, got {list(categories)}")
    fig, ax = plt.subplots(figsize=(9.0, 8.0))
    corners = np.eye(3)
    cx, cy = _ternary(corners)
    ax.plot(np.append(cx, cx[0]), np.append(cy, cy[0]), color="black", linewidth=1)
    for f in (0.25, 0.5, 0.75):  # light grid: lines of constant share of each category
        for k in range(3):
            a = np.zeros((2, 3))
            a[:, k] = f
            others = [i for i in range(3) if i != k]
            a[0, others[0]], a[1, others[1]] = 1 - f, 1 - f
            gx, gy = _ternary(a)
            ax.plot(gx, gy, color="0.88", linewidth=0.7, zorder=0)
    offsets = [
        (-0.04, -0.04, "right"),
        (1.04, -0.04, "left"),
        (0.5, np.sqrt(3) / 2 + 0.04, "center"),
    ]
    for (x, y, ha), name in zip(offsets, categories):
        ax.text(x, y, name, ha=ha, va="center", fontsize=11, fontweight="bold")
    colors = plt.get_cmap("tab10")
    for k, (name, shares) in enumerate(trajectories.items()):
        shares = np.atleast_2d(np.asarray(shares, dtype=np.float64))
        if shares.size == 0:
            continue
        x, y = _ternary(shares)
        c = colors(k % 10)
        ax.plot(x, y, color=c, linewidth=1.1, alpha=0.8, label=name, zorder=3)
        ax.scatter(x[-1:], y[-1:], color=c, s=55, marker=MARKERS[k % len(MARKERS)], zorder=5,
                   edgecolor="black", linewidth=0.6)  # fmt: skip
        if own_targets and name in own_targets:
            tx, ty = _ternary(own_targets[name])
            ax.scatter(tx, ty, color=c, marker="x", s=60, linewidth=2, zorder=6)
    if start is not None:
        sx, sy = _ternary(start)
        ax.scatter(sx, sy, color="black", s=60, marker="o", facecolor="white", zorder=6,
                   label="start (SFT)")  # fmt: skip
    for (label, point), marker in zip(targets.items(), ("*", "D", "P", "h")):
        tx, ty = _ternary(point)
        ax.scatter(tx, ty, color="gold" if marker == "*" else "black", marker=marker,
                   s=260 if marker == "*" else 80, edgecolor="black", linewidth=1, zorder=7,
                   label=label)  # fmt: skip
    if own_targets:
        ax.scatter([], [], color="0.4", marker="x", s=60, label="each policy's own fixed point")
    ax.set_xlim(-0.12, 1.12)
    ax.set_ylim(-0.1, np.sqrt(3) / 2 + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_distance_curves(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    path: str | Path,
    log_scale: Sequence[str] = (),
    title: str = "Distance to the targets during training",
) -> Path:
    """One panel per distance (``curves[panel][policy] = (steps, values)``), one line per
    policy; panels named in ``log_scale`` get a logarithmic y axis."""
    panels = list(curves)
    if not panels:
        raise ValueError("plot_distance_curves: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    names: list[str] = []
    for lines in curves.values():
        names += [n for n in lines if n not in names]
    for ax, panel in zip(axes[0], panels):
        for name, (steps, values) in curves[panel].items():
            k = names.index(name)
            v = np.asarray(values, dtype=np.float64)
            if panel in log_scale:
                v = np.maximum(v, 1e-6)
            marker = MARKERS[k % len(MARKERS)]
            ax.plot(steps, v, color=colors(k % 10), label=name, linewidth=1.4, marker=marker,
                    markersize=3, markevery=max(1, len(v) // 8))  # fmt: skip
        if panel in log_scale:
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)
