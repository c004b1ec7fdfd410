"""White-box attacks on the zoo models: distance against steps for FMN, DDN and ALMA (how the
default step counts were chosen), and the default ensemble against the previous one on the
published leaderboard's images.

    PYTHONPATH=. python benchmarks/bench_whitebox.py --previous-commit 8f9329c

Curves: on the first ``--n-curve`` of the previous leaderboard's shared images (300, committed at
``--previous-commit``), each attack at each step count of `CURVE_STEPS` (a fresh run per count:
the step sizes anneal over the whole run, so a shorter run is a different schedule, not a
prefix); per model and attack the mean L2 and the paired mean difference to the published
setting (bootstrap CI), and the wall time. The published setting's distances are the previous
leaderboard's own (FMN 300, ALMA 1000); DDN's reference is a 300-step run on all its images.

Shorter: the current leaderboard's hard-label distances with the white-box attacks at `SHORT_STEPS`
(from the curve runs), per-sample best on the curve images, paired against the leaderboard's best.

Ensemble: the current leaderboard (``--current``, results/leaderboard: the default ensemble at the
default steps) against the previous one on the images both attacked (the current draw of 500
contains the previous 300: same seed, same permutation): per model the paired bootstrap CI of the
per-sample best distance (new - old), relative to the old mean, its half width, and the white-box
passes per sample before and after. The hard-label attacks are the same code and seeds in both.

Every attack run goes through `repspec_zoo.evaluation.evaluate.evaluate` (the leaderboard's model loading,
folded forward, batch size, start pool and FMN warm start). Each (model, attack, steps, images)
result is cached under runs/bench_whitebox/, so a killed run resumes. Writes
benchmarks/results_whitebox.json (rendered into benchmarks/README.md) and the curve plot
benchmarks/whitebox_convergence.png.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / "runs" / "bench_whitebox"
LEADERBOARD = "results/leaderboard"
#: step counts of the curves; the last of each is the setting the published leaderboard ran (FMN 300 and ALMA
#: 1000: its own per-sample distances; DDN 300: this benchmark's ensemble run), read on the curve images
CURVE_STEPS = {"fmn": [50, 100, 200, 300], "ddn": [50, 100, 200, 300], "alma": [100, 300, 1000]}
PUBLISHED_STEPS = {"fmn": 300, "alma": 1000}
#: the shortest white-box settings that would make `make demo` 2x faster than the code before the
#: DDN/ALMA rewrite (about a third of today's white-box passes); read from the curve runs
SHORT_STEPS = {"fmn": 100, "ddn": 100, "alma": 100}


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
    from repspec_zoo.evaluation.evaluate import evaluate
    from repspec_zoo.io import atomic_write_text
    from repspec_zoo.evaluation.leaderboard import load_zoo_model

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
    from repspec_zoo.evaluation import stats

    cmp = stats.to_jsonable(stats.paired_comparison(a, b, seed=seed))
    d = cmp["mean_difference"]
    mean_a = sum(a) / len(a)
    return dict(mean_a=mean_a, mean_b=sum(b) / len(b), difference=d, relative=d["estimate"] / mean_a,
                half_width_relative=(d["high"] - d["low"]) / 2 / mean_a, ci_includes_zero=d["low"] <= 0 <= d["high"],
                wilcoxon_p=cmp.get("wilcoxon_p"))


def compare_ensembles(old: dict, new: dict) -> dict:
    """Per-sample best distance of two leaderboard EvalResults (dicts) on the images both attacked,
    at each one's top budget: paired comparison (new - old), and white-box passes per image."""
    def by_index(r: dict) -> dict[int, int]:
        return {i: k for k, i in enumerate(r["per_sample"]["index"])}

    io, inew = by_index(old), by_index(new)
    shared = sorted(set(io) & set(inew))
    top_o, top_n = str(old["budgets"][-1]), str(new["budgets"][-1])
    a = [float(old["per_sample"]["l2"][top_o][io[i]]) for i in shared]
    b = [float(new["per_sample"]["l2"][top_n][inew[i]]) for i in shared]

    def passes(r: dict, rows: dict) -> float:
        white = [k for k, part in r["by_attack"].items() if part["params"].get("kind") == "white-box"]
        return sum(sum(r["per_sample"]["queries"][k][rows[i]] for k in white) for i in shared) / len(shared)

    return dict(n_shared=len(shared), previous_attacks=old["attack"], current_attacks=new["attack"],
                previous_budget=int(top_o), current_budget=int(top_n), new_vs_old=paired(a, b),
                previous_white_box_passes=passes(old, io), current_white_box_passes=passes(new, inew))


def shorter_ensemble(current: dict, short: dict[str, dict]) -> dict:
    """The default ensemble with the white-box attacks at `SHORT_STEPS` (``short``: attack -> its curve
    run) against the current leaderboard (``current``) on the curve images: per-sample best of the
    leaderboard's own hard-label distances and the short runs, paired against the leaderboard's best."""
    ps = current["per_sample"]
    rows = {i: k for k, i in enumerate(ps["index"])}
    top = str(current["budgets"][-1])
    index = next(iter(short.values()))["index"]
    hard = [a for a, part in current["by_attack"].items() if part["params"].get("kind") != "white-box"]
    now = [float(ps["l2"][top][rows[i]]) for i in index]
    cut = [min([float(ps["l2_by_attack"][a][top][rows[i]]) for a in hard] + [r["l2"][k] for r in short.values()])
           for k, i in enumerate(index)]
    return dict(n=len(index), steps={a: r["steps"] for a, r in short.items()}, short_vs_current=paired(now, cut))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="leaderboard models (default: all in results/leaderboard)")
    ap.add_argument("--n-curve", type=int, default=64, help="images of the step curves (the first of the leaderboard's)")
    ap.add_argument("--previous-commit", required=True,
                    help="git commit whose results/leaderboard holds the previous ensemble's run")
    ap.add_argument("--current", type=Path, default=ROOT / LEADERBOARD, help="the current leaderboard's folder")
    ap.add_argument("--curves", nargs="*", default=list(CURVE_STEPS), help="attacks to draw curves for")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results_whitebox.json")
    args = ap.parse_args(argv)

    def previous(name: str) -> dict:
        return json.loads(subprocess.run(["git", "show", f"{args.previous_commit}:{LEADERBOARD}/{name}.json"],
                                         cwd=ROOT, check=True, capture_output=True, text=True).stdout)

    names = args.models or list(previous("leaderboard")["models"])
    published = {n: previous(n) for n in names}
    index = published[names[0]]["per_sample"]["index"]
    assert all(p["per_sample"]["index"] == index for p in published.values()), "leaderboard images differ"
    curve_index = index[:args.n_curve]
    jobs = [(n, "ddn", CURVE_STEPS["ddn"][-1], index) for n in names]
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
                ref = done[n, a, last, len(index)]["l2"]
            runs.append(dict(steps=last, l2=ref[:len(curve_index)], wall_s=None))
            curves[n][a] = [dict(steps=r["steps"], l2_mean=sum(r["l2"]) / len(r["l2"]), wall_s=r["wall_s"],
                                 vs_longest=paired(runs[-1]["l2"], r["l2"])) for r in runs]
        current = json.loads((args.current / f"{n}.json").read_text())
        ensemble[n] = compare_ensembles(p, current)
        if set(SHORT_STEPS) <= set(args.curves):
            ensemble[n]["shorter"] = shorter_ensemble(
                current, {a: done[n, a, s, len(curve_index)] for a, s in SHORT_STEPS.items()})
    summary = dict(setup=dict(models=names, n_curve=len(curve_index), curve_steps=CURVE_STEPS,
                              previous_commit=args.previous_commit, current=os.path.relpath(args.current, ROOT),
                              workers=args.workers, threads_per_worker=1, torch=torch.__version__, wall_s=wall),
                   curves=curves, ensemble=ensemble)
    from repspec_zoo.io import atomic_write_text
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    plot(summary, HERE / "whitebox_convergence.png")
    for n, e in ensemble.items():
        c = e["new_vs_old"]
        print(f"{n}: previous {e['previous_attacks']} {c['mean_a']:.4f}, current {e['current_attacks']} "
              f"{c['mean_b']:.4f} ({c['relative']:+.2%} [{c['difference']['low'] / c['mean_a']:+.2%}, "
              f"{c['difference']['high'] / c['mean_a']:+.2%}]) on {e['n_shared']} images; white-box passes per "
              f"image {e['previous_white_box_passes']:.0f} -> {e['current_white_box_passes']:.0f}")
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
