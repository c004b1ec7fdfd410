"""`repspec-zoo leaderboard`: benchmark the zoo's bundled backbones side by side (the main job).

For every zoo model whose weights ship with the package and were trained on ``--dataset``:
clean accuracy on the whole test split, the Tangent Attack on ``--n`` correctly classified
test images (the same seeded draw rule for every model), the mean / median L2 distance at each
budget, the Lemma-1 local estimate and, where it holds, the certified radius. Writes, into
``--out``: one EvalResult JSON per model, ``leaderboard.json``, ``leaderboard.md`` and
``distance_vs_queries.png`` (mean L2 vs queries, one line per model).

Distances are L2 in [0,1] pixel space (the image has 784 pixels for Fashion-MNIST, so a
distance of 1 is e.g. 0.036 per pixel on average).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch

from . import data
from .attacks import NormalizedModel
from .eval import EvalResult, evaluate
from .io import atomic_write_text
from .models.zoo import list_pretrained



def bundled_models(dataset: str) -> list[str]:
    """Zoo names whose weights ship inside the package and were trained on ``dataset``."""
    return [row.name for row in list_pretrained() if row.source == "bundled" and row.dataset == dataset]


def curve_budgets(table_budgets: list[int], points: int = 12) -> list[int]:
    """The table's budgets plus a log-spaced grid up to the largest, for the distance-vs-queries plot."""
    top = max(table_budgets)
    grid = torch.logspace(2, torch.log10(torch.tensor(float(top))), points).round().long().tolist()
    return sorted(set(grid) | set(table_budgets))


def markdown_table(results: dict[str, EvalResult], budgets: list[int]) -> str:
    cols = " | ".join(f"mean L2 @{q}" for q in budgets)
    lines = [f"| model | clean_acc | {cols} | median L2 @{budgets[-1]} | Lemma-1 est. (mean) | certified (mean) |",
             "|---" * (5 + len(budgets)) + "|"]
    for name, r in results.items():
        means = " | ".join(f"{r.l2_mean[str(q)]:.3f}" for q in budgets)
        lemma = f"{r.lemma1['mean']:.3f}" if r.lemma1 else "-"
        cert = f"{r.certified['mean']:.3f}" if r.certified else "-"
        lines.append(f"| `{name}` | {r.clean_acc:.4f} | {means} | {r.l2_median[str(budgets[-1])]:.3f} | {lemma} | {cert} |")
    return "\n".join(lines)


def plot_curves(results: dict[str, EvalResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in results.items():
        ax.plot(r.budgets, [r.l2_mean[str(q)] for q in r.budgets], marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("queries per sample")
    ax.set_ylabel("mean L2 distance ([0,1] pixels)")
    ax.set_title(f"Tangent Attack, {next(iter(results.values())).n_samples} test images per model")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def update_readme(readme: Path, block: str, section: str = "leaderboard") -> None:
    """Replace the text between the README's ``<!-- {section}:start -->`` and ``:end`` markers with ``block``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{block}\n{end}{tail}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repspec-zoo leaderboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="zoo names (default: every bundled model trained on --dataset)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--n", type=int, default=50, help="correctly classified test images attacked per model")
    p.add_argument("--budgets", default="250,500,1000", help="comma-separated query budgets for the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000, help="rows per model call")
    p.add_argument("--out", type=Path, default=Path("results/leaderboard"))
    p.add_argument("--update-readme", type=Path, help="fill this README's leaderboard markers with the table")
    return p


def main(argv=None) -> dict[str, EvalResult]:
    args = build_parser().parse_args(argv)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    models = args.models or bundled_models(args.dataset)
    if not models:
        raise SystemExit(f"no bundled zoo weights for dataset {args.dataset!r}; `repspec-zoo list-pretrained` "
                         "shows what exists, or pass --models NAME ...")
    test = data.load_split(args.dataset, "test")
    x, y = data.as_tensors(test)
    start, results = time.perf_counter(), {}
    for i, name in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {name}")
        model = timm.create_model(name, pretrained=True)
        if hasattr(model, "spectral"):
            model.spectral.remove()
        result = evaluate(NormalizedModel(model).eval(), (x, y), model_name=name, dataset_name=args.dataset,
                          n=args.n, budgets=curve_budgets(budgets), attack="ta", seed=args.seed,
                          batch_size=args.batch_size)
        result.save(args.out / f"{name}.json")
        results[name] = result
    table = markdown_table(results, budgets)
    wall = time.perf_counter() - start
    command = "repspec-zoo leaderboard " + " ".join(argv if argv is not None else [])
    block = (f"{table}\n\nTangent Attack on {args.n} correctly classified {args.dataset} test images per model "
             f"(seed {args.seed}); L2 in [0,1] pixel space; written by `{command.strip()}` "
             f"in {wall:.0f} s.\n\n![mean L2 vs queries]({(args.out / 'distance_vs_queries.png').as_posix()})")
    atomic_write_text(args.out / "leaderboard.md", block + "\n")
    atomic_write_text(args.out / "leaderboard.json", json.dumps(
        {"dataset": args.dataset, "n": args.n, "budgets": budgets, "seed": args.seed, "wall_time_s": wall,
         "models": {name: {"clean_acc": r.clean_acc, "l2_mean": r.l2_mean, "l2_median": r.l2_median,
                           "lemma1_mean": r.lemma1 and r.lemma1["mean"],
                           "certified_mean": r.certified and r.certified["mean"]} for name, r in results.items()}},
        indent=2))
    plot_curves(results, args.out / "distance_vs_queries.png")
    if args.update_readme:
        update_readme(args.update_readme, block)
    print(f"\n{table}\n\n{len(models)} models in {wall:.0f} s; wrote {args.out}/")
    return results
