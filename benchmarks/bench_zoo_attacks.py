"""Hard-label attacks on the zoo's bundled models: CGBA against TA, G-TA and HSJA at 1K / 2K / 5K
queries, on the same correctly classified Fashion-MNIST test images for every model and attack.

For every model: mean and median L2 per attack and budget (the TA paper's rule: last iterate
within the budget), success rates, and a paired comparison of CGBA against TA on the same images
(`repspec_zoo.evaluation.stats.paired_comparison`: bootstrap CI of the mean difference, Wilcoxon). Writes
benchmarks/results_zoo_attacks.json (rendered into benchmarks/README.md by render_readme.py).

    PYTHONPATH=. python benchmarks/bench_zoo_attacks.py                 # 8 models, n=40, ~30 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_zoo_attacks.py --models slp_baseline.fmnist --n 20
    PYTHONPATH=. python benchmarks/bench_zoo_attacks.py --from results/leaderboard   # no attack run: the
        # published leaderboard's own TA and CGBA distances (its images and budgets)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
COMPARED_ATTACKS = ("ta", "gta", "hsja", "cgba")


CACHE = HERE.parent / "runs" / "bench_zoo_attacks"  # one EvalResult per model: a killed run resumes


def attack_model(job: tuple) -> dict:
    """All hard-label attacks on one model (a worker process, one torch thread); cached by settings."""
    name, index, budgets, seed = job
    from repspec_zoo import data
    from repspec_zoo.evaluation.evaluate import evaluate
    from repspec_zoo.io import atomic_write_text
    from repspec_zoo.evaluation.leaderboard import load_zoo_model

    cache = CACHE / f"{name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["per_sample"]["index"] == index and saved["budgets"] == budgets and saved["settings"]["seed"] == seed:
            return saved
    torch.set_num_threads(1)
    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    result = evaluate(load_zoo_model(name), (x, y), model_name=name, dataset_name="fashion_mnist", budgets=budgets,
                      attack=list(COMPARED_ATTACKS), seed=seed, batch_size=1000, indices=index, lemma1=False,
                      progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, result.to_json())
    return json.loads(result.to_json())


def compare(result: dict, budgets: list[int], seed: int, attacks=COMPARED_ATTACKS) -> dict:
    """Per budget: each attack's mean / median / success, and CGBA vs TA paired on the same images."""
    from repspec_zoo.evaluation import stats

    out = {}
    for q in map(str, budgets):
        per = result["per_sample"]["l2_by_attack"]
        row = {a: {"l2_mean": result["by_attack"][a]["l2_mean"][q], "l2_median": result["by_attack"][a]["l2_median"][q],
                   "success_rate": result["by_attack"][a]["success_rate"][q]} for a in attacks}
        ta, cg = [float(v) for v in per["ta"][q]], [float(v) for v in per["cgba"][q]]
        row["cgba_vs_ta"] = stats.to_jsonable(stats.paired_comparison(ta, cg, seed=seed))
        out[q] = row
    return out


def main(argv=None) -> dict:
    from repspec_zoo.argtypes import parse_budgets

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="zoo names (default: every bundled Fashion-MNIST model)")
    ap.add_argument("--n", type=int, default=40, help="test images, the same for every model")
    ap.add_argument("--budgets", type=parse_budgets, default="1000,2000,5000", help="comma-separated query budgets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="models attacked in parallel, one thread each")
    ap.add_argument("--from", dest="source", type=Path,
                    help="read the TA and CGBA distances of a leaderboard run (its --out folder) instead of attacking")
    ap.add_argument("--out", type=Path, help="default benchmarks/results_zoo_attacks[_leaderboard].json")
    args = ap.parse_args(argv)
    if args.source:
        return from_leaderboard(args.source, args.out or HERE / "results_zoo_attacks_leaderboard.json")
    args.out = args.out or HERE / "results_zoo_attacks.json"

    from repspec_zoo import data
    from repspec_zoo.io import atomic_write_text
    from repspec_zoo.evaluation.leaderboard import bundled_models, common_indices, load_zoo_model

    budgets = args.budgets
    names = args.models or bundled_models("fashion_mnist")
    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    index = common_indices({n: load_zoo_model(n) for n in names}, x, y, args.n, args.seed, 1000).tolist()
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for result in pool.imap(attack_model, [(name, index, budgets, args.seed) for name in names]):
            print(f"done: {result['model']}", flush=True)
            results.append(result)
    wall = time.perf_counter() - start
    summary = {"setup": {"n": len(index), "index": index, "budgets": budgets, "seed": args.seed,
                         "attacks": COMPARED_ATTACKS, "workers": args.workers, "threads_per_worker": 1,
                         "torch": torch.__version__, "wall_s": wall},
               "models": {r["model"]: {"clean_acc": r["clean_acc"], "by_budget": compare(r, budgets, args.seed),
                                       "wall_s": {a: r["by_attack"][a]["wall_time_s"] for a in COMPARED_ATTACKS}}
                          for r in results}}
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    top = str(budgets[-1])
    print("| model | " + " | ".join(f"{a} mean/median @{top}" for a in COMPARED_ATTACKS)
          + " | CGBA - TA mean [95% CI] |")
    for name, m in summary["models"].items():
        row = m["by_budget"][top]
        d = row["cgba_vs_ta"]["mean_difference"]
        print(f"| {name} | "
              + " | ".join(f"{row[a]['l2_mean']:.3f}/{row[a]['l2_median']:.3f}" for a in COMPARED_ATTACKS)
              + f" | {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    print(f"wrote {args.out} ({wall:.0f} s)")
    return summary


def from_leaderboard(folder: Path, out: Path) -> dict:
    """The CGBA vs TA comparison from a leaderboard's per-model EvalResult files (no attack runs)."""
    from repspec_zoo.io import atomic_write_text

    meta = json.loads((folder / "leaderboard.json").read_text())
    attacks = [a for a in ("ta", "gta", "hsja", "cgba") if a in meta["attacks"]]
    results = [json.loads((folder / f"{name}.json").read_text()) for name in meta["models"]]
    summary = {"setup": {"n": len(meta["index"]), "budgets": meta["budgets"], "seed": meta["seed"], "attacks": attacks,
                         "source": f"{folder.as_posix()} (written by `{meta['command']}`)"},
               "models": {r["model"]: {"clean_acc": r["clean_acc"],
                                       "by_budget": compare(r, meta["budgets"], meta["seed"], attacks),
                                       "wall_s": {a: r["by_attack"][a]["wall_time_s"] for a in attacks}}
                          for r in results}}
    atomic_write_text(out, json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
