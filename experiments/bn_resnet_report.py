"""The report of experiment 6 (:mod:`experiments.bn_resnet_fmnist`): the decision rule written before the run,
the seed-level comparisons, the per-model table, the outcome and the accuracy-robustness plot, from results.json.
"""
from __future__ import annotations

import math
from pathlib import Path

from .bn_resnet_fmnist import REFERENCE, model_key

#: (arm b, arm a, hypothesis) of the seed-level comparisons, b - a
COMPARISONS = (("repbn", "none", "H1"), ("rep", "none", "H2"), ("repbn", "convwd", "H3"), ("convwd", "none", ""),
               ("repbn", "rep", ""), ("adv", "none", ""))


def per_seed_means(rows: dict, seeds: list[int], arms: list[str], field: str = "l2") -> dict[str, list[float]]:
    """{arm: [mean distance per seed]} over the images every arm of that seed broke (all, normally)."""
    out = {arm: [] for arm in arms}
    for seed in seeds:
        values = {arm: [float(v) for v in rows[model_key(seed, arm)][field]] for arm in arms}
        finite = [all(math.isfinite(values[arm][i]) for arm in arms) for i in range(len(values[arms[0]]))]
        for arm in arms:
            kept = [v for v, ok in zip(values[arm], finite) if ok]
            out[arm].append(sum(kept) / len(kept))
    return out


def decide(comparison: dict) -> bool:
    """The rule written before the run: t-CI over seeds above 0 and every seed positive."""
    return bool(comparison["mean_difference"]["low"] is not None and comparison["mean_difference"]["low"] > 0
                and comparison["n_positive"] == comparison["n_seeds"])


def seed_level(rows: dict, seeds: list[int], field: str = "l2") -> list[dict]:
    from repspec_zoo.evaluation.stats import seed_level_comparison, to_jsonable

    arms = sorted({a for pair in COMPARISONS for a in pair[:2]})
    arms = [a for a in arms if all(model_key(s, a) in rows for s in seeds)]
    means = per_seed_means(rows, seeds, arms, field)
    out = []
    for b, a, hypothesis in COMPARISONS:
        if a in means and b in means:
            c = to_jsonable(seed_level_comparison(means[a], means[b]))
            out.append(dict(b=b, a=a, hypothesis=hypothesis, per_seed_a=means[a], per_seed_b=means[b], **c,
                            accepted=decide(c)))
    return out


def _seed_table(comparisons: list[dict]) -> str:
    lines = ["| b vs a | hypothesis | per-seed b - a | mean b - a [95% t-CI] | relative | signs + / - | sign test p "
             "(one-sided) | decision rule met |", "|" + "---|" * 8]
    for c in comparisons:
        d = c["mean_difference"]
        ci = f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d["low"] is not None else f"{d['estimate']:+.4f}"
        lines.append(f"| {c['b']} vs {c['a']} | {c['hypothesis'] or '-'} | "
                     f"{', '.join(f'{v:+.3f}' for v in c['differences'])} | {ci} | {c['relative_difference']:+.1%} | "
                     f"{c['n_positive']} / {c['n_negative']} | {c['sign_test_p_one_sided']:.3g} | "
                     f"{'yes' if c['accepted'] else 'no'} |")
    return "\n".join(lines)


def outcome(rows: dict, functions: dict, seeds: list[int], comparisons: list[dict]) -> list[str]:
    """The hypotheses as measured: each decision, the clean-accuracy cost and the folded-norm check."""
    from repspec_zoo.evaluation.stats import seed_level_comparison

    lines, costly = [], []
    for c in comparisons:
        if c["hypothesis"]:
            lines.append(f"- {c['hypothesis']} ({c['b']} vs {c['a']}): {'met' if c['accepted'] else 'not met'}, "
                         f"{c['mean_difference']['estimate']:+.3f} mean L2 ({c['relative_difference']:+.1%}), "
                         f"{c['n_positive']} of {c['n_seeds']} seeds positive.")
    for arm in ("rep", "repbn", "convwd", "adv"):
        if not all(model_key(s, a) in rows for s in seeds for a in (arm, "none")):
            continue
        acc = seed_level_comparison([rows[model_key(s, "none")]["clean_acc"] for s in seeds],
                                    [rows[model_key(s, arm)]["clean_acc"] for s in seeds])
        d = acc["mean_difference"]
        if d.estimate < -0.01:
            costly.append(arm)
        line = (f"- clean accuracy, {arm} - none: {100 * d.estimate:+.2f} points [{100 * d.low:+.2f}, {100 * d.high:+.2f}] "
                f"over seeds")
        if all(model_key(s, a) in functions for s in seeds for a in (arm, "none")):
            lower = sum(functions[model_key(s, arm)]["folded_sum_sq"] < functions[model_key(s, "none")]["folded_sum_sq"]
                        for s in seeds)
            raw = sum(functions[model_key(s, arm)]["raw_sum_sq"] < functions[model_key(s, "none")]["raw_sum_sq"]
                      for s in seeds)
            line += f"; BN-folded sum sigma^2 below none's in {lower} of {len(seeds)} seeds, raw sum in {raw}"
        lines.append(line + ".")
    lines.append(f"- More than 1 point of clean accuracy lost on average: {', '.join(costly)} (read against clean "
                 "accuracy in the plot below)." if costly else
                 "- No arm loses more than 1 point of clean accuracy on average, so the strength sweep the design "
                 "foresees for that case was not needed.")
    return lines


def _num(v, fmt=".4g") -> str:
    return "-" if v is None else format(v, fmt)


def _model_table(rows: dict, functions: dict, keys: list[str]) -> str:
    from repspec_zoo.evaluation.stats import format_interval

    lines = ["| model | clean acc | raw sum sigma^2 | BN-folded sum sigma^2 | Lipschitz bound | median certified "
             "radius | median feature-Jacobian norm | success | ensemble mean L2 [95% CI] | TA mean L2 |",
             "|" + "---|" * 10]
    for key in keys:
        r, f = rows[key], functions.get(key, {})
        d = r["distance"]
        ta = [float(v) for v in r["l2_ta"] if math.isfinite(float(v))]
        lines.append(f"| {key} | {r['clean_acc']:.4f} | {_num(f.get('raw_sum_sq'), '.1f')} | "
                     f"{_num(f.get('folded_sum_sq'), '.1f')} | {_num(f.get('lipschitz_upper'), '.3g')} | "
                     f"{_num(f.get('certified_median'), '.2e')}{' (vacuous)' if f.get('vacuous') else ''} | "
                     f"{_num(f.get('jacobian_median'), '.3f')} | {d['n_success']}/{d['n_samples']} | "
                     f"{format_interval(d['l2_mean'], 3)} | {sum(ta) / max(len(ta), 1):.3f} |")
    return "\n".join(lines)


def _plot(rows: dict, seeds: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    arms = sorted({r["arm"] for r in rows.values() if r["seed"] is not None})
    for arm in arms:
        pts = [(rows[model_key(s, arm)]["clean_acc"], sum(map(float, rows[model_key(s, arm)]["l2"])) /
                len(rows[model_key(s, arm)]["l2"])) for s in seeds if model_key(s, arm) in rows]
        ax.scatter(*zip(*pts), label=arm, s=28)
    if REFERENCE in rows:
        r = rows[REFERENCE]
        ax.scatter([r["clean_acc"]], [sum(map(float, r["l2"])) / len(r["l2"])], marker="*", s=120, c="k",
                   label=f"{REFERENCE} (zoo, as bundled when attacked)")
    ax.set_xlabel("clean accuracy (10k test images)")
    ax.set_ylabel("mean ensemble L2 on the shared images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("small ResNet on Fashion-MNIST: one point per seed and arm", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_robustness.png", dpi=120)
    plt.close(fig)


def report(saved: dict, out: Path) -> str:
    """README.md and the plot from results.json."""
    from .common import paired_rows, paired_table

    rows, functions, seeds = saved["rows"], saved.get("functions", {}), saved["seeds"]
    keys = sorted(rows, key=lambda k: (rows[k]["seed"] if rows[k]["seed"] is not None else 99, k))
    main_seeds = [s for s in seeds if all(model_key(s, a) in rows for a in ("none", "rep", "repbn"))]
    comparisons = saved["seed_level"] = seed_level(rows, main_seeds)
    ta_comparisons = saved["seed_level_ta"] = seed_level(rows, main_seeds, "l2_ta")
    by_image = paired_rows({(rows[k]["arm"], rows[k]["seed"]): [float(v) for v in rows[k]["l2"]]
                            for k in keys if rows[k]["seed"] is not None}, "none", 0)
    _plot(rows, seeds, out)
    n = next(iter(rows.values()))["n_samples"]
    cal = saved.get("calibration") or {}
    transfer = saved.get("transfer") or {}
    lines = ["# Experiment 6: rep-spectral on a BatchNorm ResNet, the BatchNorm-correct penalty, and controls",
             "", f"Written by `{saved['command']}`; that invocation's wall time {saved.get('wall_time_min', '?')} min "
             f"on 2 shared cores (2 one-thread workers; runs and attacks an earlier invocation finished are reused). The design, hypotheses and decision rule were fixed before the run: "
             "[experiments/bn_resnet_fmnist.py](../../../experiments/bn_resnet_fmnist.py).", "",
             f"{len(main_seeds)} seeds; per seed one unregularized 9-epoch run and every arm branched from its "
             f"epoch-6 checkpoint (epochs 7-9 regularized; lr 0.05, x0.1 in epoch 9). Every model is attacked on the "
             f"same {n} test images (correctly classified by all): the ensemble (TA, CGBA, FMN, ALMA; best per image) "
             f"at {max(saved['budgets'])} queries, L2 in [0,1] pixels; TA's own distance beside it. "
             "Per seed one number per arm: the mean distance over the shared images.", "",
             "**Decision rule** (per hypothesis, b - a per seed): the 95% Student-t CI over seeds of the mean "
             "difference lies above 0 AND every seed is positive (5 of 5: one-sided sign test p = 0.031).", "",
             "## Outcome", "", *outcome(rows, functions, main_seeds, comparisons), "",
             "## Seed-level comparisons (the evidence)", "", "Ensemble distance:", "", _seed_table(comparisons), "",
             "Tangent Attack alone (hard-label, the paper's attack):", "", _seed_table(ta_comparisons), "",
             "## Every model", "", _model_table(rows, functions, keys), "",
             "Raw and BN-folded sums: every conv's sigma_max^2, raw kernel and with its eval-mode BatchNorm folded in "
             f"({functions[keys[0]]['estimator'] if keys and keys[0] in functions else 'see repspec_zoo.evaluation.lipschitz'}); "
             "the Lipschitz bound and certified radius come from repspec_zoo.evaluation.lipschitz (sound upper bounds per layer, "
             "residual blocks as 1 + the branch). "
             f"`{REFERENCE}` is the zoo's model as bundled when it was attacked (a resumed run reuses that result; "
             "recipes/build_zoo.py now bundles seed 0 of the adv arm under that name).", "",
             "![accuracy vs robustness](accuracy_vs_robustness.png)", ""]
    if cal:
        lines += ["## The weight-decay control's strength (seed 0)", "",
                  f"Target: rep's raw sum of conv sigma_max^2 at the end, {cal['rep']:.2f} (none: {cal['none']:.2f}). "
                  f"Trials (wd_lambda: raw sum): {', '.join(f'{k}: {v:.2f}' for k, v in cal['trials'].items())}; "
                  f"chosen wd_lambda = {cal['wd_lambda']:.4g} ({cal['rule']}).", ""]
    if transfer:
        t_comp = saved["transfer_seed_level"] = seed_level(transfer, main_seeds)
        lines += ["## Transfer: each backbone fine-tuned on sklearn digits", "",
                  "New head, 15 epochs, no regularizer; TA + FMN (best per image) on shared test digits.", "",
                  _seed_table(t_comp), "",
                  "| model | digits accuracy | success | mean L2 [95% CI] |", "|---|---|---|---|"]
        from repspec_zoo.evaluation.stats import format_interval

        for key in sorted(transfer, key=lambda k: (transfer[k]["seed"], k)):
            r = transfer[key]
            lines.append(f"| {key} | {r['clean_acc']:.4f} | {r['distance']['n_success']}/{r['distance']['n_samples']} "
                         f"| {format_interval(r['distance']['l2_mean'], 3)} |")
        lines.append("")
    lines += ["## Image-level paired comparisons (secondary: one pair of trained networks each)", "",
              paired_table(by_image, ["seed"]), ""]
    text = "\n".join(lines)
    (out / "README.md").write_text(text)
    return text
