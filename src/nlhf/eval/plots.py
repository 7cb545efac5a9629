"""Figures for the tournament report (matplotlib, Agg backend, PNG files).

- ``plot_preference_matrix``: heatmap of ``P(column > row)`` with each cell annotated with the
  estimate and its interval (the paper's Table 1/Figure, Munos et al. 2024, §7);
- ``plot_training_curves``: one subplot per namespaced metric (``pref/mean``, ``kl/ref``, ...) of
  several runs' ``metrics.jsonl``, one line per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Metrics shown first when present; the rest follow alphabetically.
PREFERRED_METRICS = (
    "pref/mean",
    "reward/mean",
    "kl/ref",
    "policy/entropy",
    "policy/length",
    "policy/eos_rate",
    "loss/pref",
    "loss/kl",
    "loss/total",
)
# Bookkeeping, not training curves: left out unless asked for by name.
NOT_METRICS = {"step", "global_step", "epoch", "time", "wall_time", "elapsed", "timestamp", "lr"}
NOT_METRIC_PREFIXES = ("time/",)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _is_metric(key: str) -> bool:
    return key not in NOT_METRICS and not key.startswith(NOT_METRIC_PREFIXES)


def plot_preference_matrix(
    matrix: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    title: str = "P(column beats row)",
) -> Path:
    """Heatmap of ``matrix[row, col] = P(col > row)`` on a diverging scale centred at 1/2; each cell
    shows the estimate and, if given, its interval. Returns the PNG path."""
    M = np.asarray(matrix, dtype=np.float64)
    K = len(names)
    if M.shape != (K, K):
        raise ValueError(f"matrix has shape {M.shape}, expected ({K}, {K}) for {K} names")
    size = max(4.5, 0.95 * K + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(M, cmap="RdBu", vmin=0.0, vmax=1.0)
    font = max(7.0, min(12.0, 80.0 / K))
    for r in range(K):
        for c in range(K):
            p = M[r, c]
            color = "white" if abs(p - 0.5) > 0.3 else "black"
            if r == c:
                ax.text(c, r, "—", ha="center", va="center", fontsize=font, color="0.5")
                continue
            has_interval = lower is not None and upper is not None
            ax.text(
                c, r - 0.13 * has_interval, f"{p:.2f}", ha="center", va="center",
                fontsize=font * 1.15, fontweight="bold", color=color,
            )  # fmt: skip
            if has_interval:
                ax.text(
                    c, r + 0.22, f"[{lower[r, c]:.2f}, {upper[r, c]:.2f}]", ha="center",
                    va="center", fontsize=font * 0.8, color=color,
                )  # fmt: skip
    ax.set_xticks(range(K), labels=list(names), rotation=40, ha="right")
    ax.set_yticks(range(K), labels=list(names))
    ax.set_xlabel("column policy (the one whose win rate is shown)")
    ax.set_ylabel("row policy (opponent)")
    ax.set_title(title)
    ax.set_xticks(np.arange(-0.5, K, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, K, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("P(column > row)")
    fig.tight_layout()
    return save_figure(fig, path)


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (one JSON object per line); bad lines are an error naming
    the file and line, except an unfinished last line (a run still writing, or killed), which is
    skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    from nlhf.data.textfile import iter_lines

    rows = []
    for i, line in iter_lines(path, lambda n: f"{path}, line {n}"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if not line.endswith("\n"):
                break  # the last line of a run that is still writing (or was killed): skip it
            raise ValueError(f"{path}, line {i}: not JSON ({err})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {i}: expected a JSON object")
        rows.append(row)
    return rows


def plot_training_curves(
    runs: Mapping[str, str | Path],
    path: str | Path,
    metrics: Sequence[str] | None = None,
    max_metrics: int = 9,
    smooth: int | None = None,
) -> Path | None:
    """One subplot per metric, one line per run, from each run's ``metrics.jsonl`` (a file or a
    directory holding one). ``metrics``: which keys (default: the numeric keys present, preferred
    ones first, at most ``max_metrics``). Long noisy curves are drawn faintly with a moving average
    on top (window ``smooth``, default ~1/20 of the run). Returns the PNG path, or ``None`` when no
    run has any metric."""
    data: dict[str, list[dict]] = {name: read_metrics(p) for name, p in runs.items()}
    present: set[str] = set()
    for rows in data.values():
        for row in rows:
            present |= {k for k, v in row.items() if _is_number(v)}
    if metrics is None:
        chosen = [m for m in PREFERRED_METRICS if m in present]
        chosen += sorted(m for m in present - set(chosen) if _is_metric(m))
        metrics = chosen[:max_metrics]
    metrics = [m for m in metrics if m in present]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows + 0.6), squeeze=False)
    drawn = [n for n, rows in data.items() if any(m in row for row in rows for m in metrics)]
    colors = plt.get_cmap("tab10" if len(drawn) <= 10 else "tab20")
    for m_idx, metric in enumerate(metrics):
        ax = axes[m_idx // ncols][m_idx % ncols]
        for r_idx, name in enumerate(drawn):
            xs, ys = [], []
            for i, row in enumerate(data[name]):
                v = row.get(metric)
                if _is_number(v) and math.isfinite(float(v)):
                    xs.append(float(row.get("step", row.get("global_step", i))))
                    ys.append(float(v))
            if not xs:
                continue
            # Runs that start identical (same seed and data) overlap: earlier runs are drawn
            # wider and underneath, with their own marker, so every run stays visible.
            style = {
                "color": colors(r_idx % colors.N),
                "linewidth": 1.3 + 2.0 * (len(drawn) - 1 - r_idx) / max(1, len(drawn) - 1),
                "zorder": 2 + r_idx,
            }
            window = smooth or max(1, len(ys) // 20)
            if window > 1 and len(ys) > 2 * window:
                ax.plot(xs, ys, color=style["color"], alpha=0.2, linewidth=0.8)
                kernel = np.ones(window) / window
                ys_s = np.convolve(ys, kernel, mode="valid")
                ax.plot(xs[window - 1 :], ys_s, label=name, **style)
            else:
                marker = MARKERS[r_idx % len(MARKERS)] if len(xs) < 40 else None
                ax.plot(xs, ys, label=name, marker=marker, markersize=4, **style)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for m_idx in range(len(metrics), nrows * ncols):
        axes[m_idx // ncols][m_idx % ncols].axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 6), 1, 1))
    return save_figure(fig, path)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (directories created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
