"""White-box attacks on the zoo models: distance against steps for FMN, DDN and ALMA, and the
default ensemble (ta+cgba+fmn+ddn) against the previous one (ta+cgba+fmn+alma, adv-lib's FMN at
300 steps and ALMA at 1000) on the published leaderboard's images.

    PYTHONPATH=. python benchmarks/bench_whitebox.py                       # every leaderboard model
    PYTHONPATH=. python benchmarks/bench_whitebox.py --models slp_baseline.fmnist --n-curve 16

Curves: on the first ``--n-curve`` of the leaderboard's shared images, each attack at each step
count of `CURVE_STEPS` (a fresh run per count: the step sizes anneal over the whole run, so a
shorter run is a different schedule, not a prefix); per model and attack the mean L2 and the
paired mean difference to the longest count (bootstrap CI), and the wall time. The longest count
is the published setting, read from the leaderboard's per-sample distances (FMN 300, ALMA 1000;
DDN 300 from the ensemble run below).

Ensemble: on all the leaderboard's images, per sample the best of the new white-box attacks at
``--fmn-steps`` / ``--ddn-steps`` and the leaderboard's own TA and CGBA distances at its top budget
(same code, same seed: the hard-label attacks are unchanged), against the leaderboard's
per-sample best (the previous ensemble): paired bootstrap CI of the mean difference, relative
change and CI half width, and the white-box passes per sample before and after.

Every attack run goes through `repspec_zoo.eval.evaluate` (the leaderboard's model loading,
folded forward, batch size, start pool and FMN warm start). Each (model, attack, steps, images)
result is cached under runs/bench_whitebox/, so a killed run resumes. Writes
benchmarks/results_whitebox.json (rendered into benchmarks/README.md) and the curve plot
benchmarks/whitebox_convergence.png.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / "runs" / "bench_whitebox"
LEADERBOARD = ROOT / "results" / "leaderboard"
#: step counts of the curves; the last of each is the setting the published leaderboard ran (FMN 300 and ALMA
#: 1000: its own per-sample distances; DDN 300: this benchmark's ensemble run), read on the curve images
CURVE_STEPS = {"fmn": [50, 100, 200, 300], "ddn": [50, 100, 200, 300], "alma": [100, 300, 1000]}
PUBLISHED_STEPS = {"fmn": 300, "alma": 1000}


def run_one(job: tuple) -> dict:
    """One white-box attack at ``steps`` on the leaderboard images ``index`` of one model (a worker
    process, one torch thread): per-sample L2, passes and wall time; cached."""
    name, attack, steps, index = job
    cache = CACHE / f"{name}.{attack}.{steps}.{len(index)}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["index"] == index:
            return saved
    torch.set_num_threads(1)
    from repspec_zoo import data
    from repspec_zoo.eval import evaluate
    from repspec_zoo.io import atomic_write_text
    from repspec_zoo.leaderboard import load_zoo_model

    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    start = time.perf_counter()
    result = evaluate(load_zoo_model(name), (x, y), model_name=name, dataset_name="fashion_mnist", budgets=[1],
                      attack=attack, attack_options={attack: {"steps": steps}}, indices=index, lemma1=False,
                      progress=False)
    saved = dict(model=name, attack=attack, steps=steps, index=index,
                 l2=[float(v) for v in result.per_sample["l2"]["1"]],
                 passes=result.per_sample["queries"][attack], wall_s=time.perf_counter() - start)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(saved))
    return saved


def paired(a: list[float], b: list[float], seed: int = 0) -> dict:
    """b - a on the same images: bootstrap CI of the mean difference, relative to mean(a), half width."""
    from repspec_zoo import stats

    cmp = stats.to_jsonable(stats.paired_comparison(a, b, seed=seed))
    d = cmp["mean_difference"]
    mean_a = sum(a) / len(a)
    return dict(mean_a=mean_a, mean_b=sum(b) / len(b), difference=d, relative=d["estimate"] / mean_a,
                half_width_relative=(d["high"] - d["low"]) / 2 / mean_a, ci_includes_zero=d["low"] <= 0 <= d["high"],
                wilcoxon_p=cmp.get("wilcoxon_p"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="leaderboard models (default: all in results/leaderboard)")
    ap.add_argument("--n-curve", type=int, default=64, help="images of the step curves (the first of the leaderboard's)")
    ap.add_argument("--fmn-steps", type=int, default=300, help="FMN steps of the new ensemble")
    ap.add_argument("--ddn-steps", type=int, default=300, help="DDN steps of the new ensemble")
    ap.add_argument("--curves", nargs="*", default=list(CURVE_STEPS), help="attacks to draw curves for")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results_whitebox.json")
    args = ap.parse_args(argv)

    board = json.loads((LEADERBOARD / "leaderboard.json").read_text())
    names = args.models or list(board["models"])
    published = {n: json.loads((LEADERBOARD / f"{n}.json").read_text()) for n in names}
    index = published[names[0]]["per_sample"]["index"]
    assert all(p["per_sample"]["index"] == index for p in published.values()), "leaderboard images differ"
    curve_index = index[:args.n_curve]
    jobs = [(n, a, s, index) for n in names for a, s in (("fmn", args.fmn_steps), ("ddn", args.ddn_steps))]
    jobs += [(n, a, s, curve_index) for n in names for a in args.curves for s in CURVE_STEPS[a][:-1]]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        done = {}
        for r in pool.imap_unordered(run_one, jobs):
            done[r["model"], r["attack"], r["steps"], len(r["index"])] = r
            print(f"{r['model']} {r['attack']} {r['steps']} steps x {len(r['index'])}: "
                  f"mean {sum(r['l2']) / len(r['l2']):.4f} ({r['wall_s']:.0f} s)", flush=True)
    wall = time.perf_counter() - start

    curves, ensemble = {}, {}
    for n in names:
        curves[n] = {}
        p = published[n]
        for a in args.curves:
            runs = [done[n, a, s, len(curve_index)] for s in CURVE_STEPS[a][:-1]]
            last = CURVE_STEPS[a][-1]
            if a in PUBLISHED_STEPS:
                assert PUBLISHED_STEPS[a] == last
                ref = [float(v) for v in p["per_sample"]["l2_by_attack"][a][str(p["budgets"][-1])]]
            else:
                assert last == args.ddn_steps
                ref = done[n, a, last, len(index)]["l2"]
            runs.append(dict(steps=last, l2=ref[:len(curve_index)], wall_s=None))
            curves[n][a] = [dict(steps=r["steps"], l2_mean=sum(r["l2"]) / len(r["l2"]), wall_s=r["wall_s"],
                                 vs_longest=paired(runs[-1]["l2"], r["l2"])) for r in runs]
        top = str(p["budgets"][-1])
        old_best = [float(v) for v in p["per_sample"]["l2"][top]]
        hard = [min(float(t), float(c)) for t, c in zip(p["per_sample"]["l2_by_attack"]["ta"][top],
                                                        p["per_sample"]["l2_by_attack"]["cgba"][top])]
        fmn, ddn = done[n, "fmn", args.fmn_steps, len(index)], done[n, "ddn", args.ddn_steps, len(index)]
        new_best = [min(h, f, d) for h, f, d in zip(hard, fmn["l2"], ddn["l2"])]
        old_passes = sum(sum(p["per_sample"]["queries"][a]) for a in ("fmn", "alma")) / len(index)
        new_passes = (sum(fmn["passes"]) + sum(ddn["passes"])) / len(index)
        ensemble[n] = dict(old=paired(old_best, old_best), new_vs_old=paired(old_best, new_best),
                           old_white_box_passes=old_passes, new_white_box_passes=new_passes,
                           old_white_box_wall_s=sum(p["by_attack"][a]["wall_time_s"] for a in ("fmn", "alma")),
                           new_white_box_wall_s=fmn["wall_s"] + ddn["wall_s"],
                           wins={a: sum(1 for h, f, d in zip(hard, fmn["l2"], ddn["l2"])
                                        if {"hard-label": h, "fmn": f, "ddn": d}[a] == min(h, f, d))
                                 for a in ("hard-label", "fmn", "ddn")})
    summary = dict(setup=dict(models=names, n=len(index), n_curve=len(curve_index), curve_steps=CURVE_STEPS,
                              fmn_steps=args.fmn_steps, ddn_steps=args.ddn_steps, leaderboard_top_budget=top,
                              workers=args.workers, threads_per_worker=1, torch=torch.__version__, wall_s=wall),
                   curves=curves, ensemble=ensemble)
    from repspec_zoo.io import atomic_write_text
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    plot(summary, HERE / "whitebox_convergence.png")
    for n, e in ensemble.items():
        c = e["new_vs_old"]
        print(f"{n}: previous {c['mean_a']:.4f} new {c['mean_b']:.4f} ({c['relative']:+.2%}, half width "
              f"{c['half_width_relative']:.2%}); passes {e['old_white_box_passes']:.0f} -> {e['new_white_box_passes']:.0f}")
    print(f"wrote {args.out} ({wall:.0f} s)")
    return summary


def plot(summary: dict, path: Path) -> None:
    """Mean L2 relative to the longest run against steps, one panel per attack, a line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({a for c in summary["curves"].values() for a in c})
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.4), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        for model, c in summary["curves"].items():
            pts = c[a]
            ax.plot([p["steps"] for p in pts], [1 + p["vs_longest"]["relative"] for p in pts], marker="o",
                    label=model.replace(".fmnist", ""))
        ax.set_xscale("log")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(f"{a}: mean L2 / mean at {pts[-1]['steps']} steps")
        ax.set_xlabel("steps (a full run each)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
