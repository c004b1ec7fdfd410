"""Plots of evaluation results (matplotlib, Agg backend, PNG written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["plot_distance_curves", "plot_robust_accuracy", "plot_analysis"]


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
        if r.black_box and ci is not None and None not in (ci["low"], ci["high"]):  # no CI from a single broken image
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


def _band(ax, xs, stats: dict, label: str) -> None:
    """Median line with an interquartile band."""
    line, = ax.plot(xs, stats["median"], marker="o", ms=3, label=label)
    ax.fill_between(xs, stats["q25"], stats["q75"], alpha=0.25, color=line.get_color())


def plot_analysis(result: dict, out: Path) -> list[Path]:
    """One PNG per analysis of ``repspec_zoo.evaluation.analysis.analyze``'s ``result`` present, into folder ``out``;
    returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    if "spectrum" in result:
        r = result["spectrum"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _band(ax, r["ranks"], r, "median (IQR)")
        ax.set(yscale="log", xlabel="rank r", ylabel="sigma_r(J_f(x))", title="Jacobian singular values")
        ax.legend()
        save(fig, "spectrum.png")
    if "alignment" in result:
        r = result["alignment"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _band(ax, r["ranks"], r["adversarial"], f"PGD delta, eps={r['attack_eps']:g}")
        _band(ax, r["ranks"], r["random"], "random delta")
        ax.set(xlabel="rank r", ylabel="|cos(delta, v_r)|", title="Alignment with singular vectors")
        ax.legend()
        save(fig, "alignment.png")
    if "linearity" in result:
        r = result["linearity"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for name in ("random", "adversarial"):
            _band(axes[0], r["norms"], r[name]["deviation"], name)
            _band(axes[1], r["norms"], r[name]["sigma_max"], name)
        axes[0].set(xlabel="||z||", ylabel="||phi(x+z) - phi(x) - J z||", title="Deviation from linearity")
        axes[1].set(xlabel="||z||", ylabel="sigma_max(J_f(x+z))", title="Top singular value")
        for ax in axes:
            ax.axvline(r["attack_eps"], ls="--", c="gray")
            ax.legend()
        save(fig, "linearity.png")
    if "robustness" in result:
        r = result["robustness"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(r["eps"], r["accuracy"], marker="o")
        ax.set(xlabel="eps (L2, [0,1] pixels)", ylabel="accuracy", ylim=(0, 1), title="PGD-L2 accuracy")
        save(fig, "robustness.png")
    return written
