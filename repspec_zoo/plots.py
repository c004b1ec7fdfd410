"""Plots of evaluation results (matplotlib, Agg backend, PNG written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["plot_distance_curves", "plot_robust_accuracy"]


def _figure(width: float = 6.4, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_distance_curves(results: Mapping, path: Path) -> Path:
    """Per model: the mean best hard-label L2 (broken samples) against the query budget (solid),
    and the mean best over all attacks with its 95% bootstrap CI (dashed, with the error bar at the
    largest budget; white-box attacks do not spend queries, so it is flat once they dominate)."""
    plt, fig, ax = _figure(7.2, 4.6)
    for name, r in results.items():
        part = r.black_box or r.__dict__
        line, = ax.plot(r.budgets, [part["l2_mean"][str(q)] for q in r.budgets], marker=".", label=name)
        ci = r.distance["l2_mean"]
        if r.black_box and ci is not None:
            ax.plot(r.budgets, [r.l2_mean[str(q)] for q in r.budgets], color=line.get_color(), linestyle="--")
            ax.errorbar([r.budgets[-1]], [ci["estimate"]],
                        yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                        color=line.get_color(), capsize=3)
    first = next(iter(results.values()))
    hard = "+".join(first.black_box["attacks"]) if first.black_box else first.attack
    ax.set_xscale("log")
    ax.set_xlabel("hard-label queries per sample and attack")
    ax.set_ylabel("mean L2 distance, broken samples ([0,1] pixels)")
    ax.set_title(f"solid: best of {hard}; dashed: best of {first.attack} (95% CI); "
                 f"{first.n_samples} test images", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_robust_accuracy(results: Mapping, path: Path) -> Path:
    """Test-set robust accuracy (an upper bound) against the L2 radius, one line per model."""
    plt, fig, ax = _figure()
    for name, r in results.items():
        curve = r.robust_accuracy["curve"]
        ax.plot([c["eps"] for c in curve], [c["robust_accuracy_upper"]["estimate"] for c in curve], label=name,
                drawstyle="steps-post")
    eps = next(iter(results.values())).robust_accuracy["eps"]
    if eps:
        ax.axvline(eps, color="0.5", linestyle=":", label=f"eps = {eps}")
    ax.set_xlabel("L2 radius eps ([0,1] pixels)")
    ax.set_ylabel("robust accuracy (upper bound)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
