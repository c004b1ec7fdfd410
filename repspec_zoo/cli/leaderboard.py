"""`repspec-zoo leaderboard`: the bundled zoo models side by side on the same test images.

Tables, per-model EvalResult JSON and plots into ``--out`` (see :mod:`repspec_zoo.evaluation.leaderboard`);
``--report-only`` re-renders them from the JSON files; a killed run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import data
from ..evaluation.evaluate import resolve_attacks
from ..evaluation.result import EvalResult, EvalResultError
from ..evaluation.leaderboard import (LeaderboardError, bundled_models, check_readme, common_indices, evaluate_job,
                                      finished, load_zoo_model, report)
from ..argtypes import parse_attacks, parse_budgets, positive_int, seed_int
from . import Parser, UsageError
from .common import add_forward_arguments


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="repspec-zoo leaderboard", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="zoo names (default: every bundled classifier trained on --dataset); a "
                   "headless self-supervised backbone (*.fmnist_simclr) is evaluated with a linear probe")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--n", type=positive_int, default=50,
                   help="test images attacked per model (the same for every model)")
    p.add_argument("--budgets", type=parse_budgets, default=[250, 500, 1000], help="comma-separated query budgets")
    p.add_argument("--attack", type=parse_attacks, default=resolve_attacks("ensemble"),
                   help="attack name, comma-separated list or 'ensemble' (default)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="models evaluated in parallel processes, one torch thread each (default 1: one process)")
    add_forward_arguments(p)
    p.add_argument("--out", type=Path, default=Path("results/leaderboard"))
    p.add_argument("--update-readme", type=Path, help="fill this README's leaderboard markers with the tables")
    p.add_argument("--report-only", action="store_true",
                   help="re-render tables, plots, README block and cards from the JSON files in --out")
    p.add_argument("--update-cards", action="store_true",
                   help="write each model's evaluation into repspec_zoo/weights/<name>/ (eval.json, config.json, README.md "
                        "card re-rendered)")
    return p


def _saved(out: Path) -> tuple[dict[str, EvalResult], dict]:
    """The per-model results and the meta data of a finished leaderboard in ``out`` (--report-only)."""
    summary = out / "leaderboard.json"
    again = "run the leaderboard without --report-only to (re)compute it"
    if not summary.is_file():
        raise LeaderboardError(f"--report-only: {summary} does not exist, so --out {out} holds no finished "
                               f"leaderboard; {again}")
    try:
        meta = json.loads(summary.read_text())
        names = list(meta.pop("models"))
        meta.pop("paired_vs_baseline", None)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as err:
        raise LeaderboardError(f"--report-only: {summary} is not a leaderboard summary (truncated or damaged: "
                               f"{err!r}); {again}") from err
    try:
        return {name: EvalResult.load(out / f"{name}.json") for name in names}, meta
    except EvalResultError as err:
        raise LeaderboardError(f"--report-only: {err}; {again}") from err


def _update_cards(results: dict[str, EvalResult], deltas: dict[str, dict], meta: dict) -> None:
    """--update-cards: each bundled model's config.json, eval.json and card take this run's evaluation,
    with its paired comparison against its family baseline (``deltas``, from `report`)."""
    from ..hub.exporting import update_bundled_evaluation

    for name, result in results.items():
        result.settings["command"] = meta["command"]
        if name in deltas:  # the card states the paired comparison with its family baseline
            result.settings["paired_vs_baseline"] = deltas[name]
        print(f"updated {update_bundled_evaluation(name, json.loads(result.to_json()))}")


def main(argv=None) -> dict[str, EvalResult]:
    args = build_parser().parse_args(argv)
    if args.update_readme:
        check_readme(args.update_readme)
    if args.report_only:
        results, meta = _saved(args.out)
        tables, deltas = report(results, args.out, meta, args.update_readme)
        if args.update_cards:
            _update_cards(results, deltas, meta)
        print(tables)
        return results
    if not args.attack:
        raise UsageError("--attack none leaves nothing to rank; name an attack")
    names = args.models or bundled_models(args.dataset)
    if not names:
        raise UsageError(f"no bundled zoo weights for dataset {args.dataset!r}; `repspec-zoo list-pretrained` "
                         "shows what exists, or pass --models NAME ...")
    x, y = data.as_tensors(data.load_split(args.dataset, "test"))
    start = time.perf_counter()
    models = {name: load_zoo_model(name, compile=args.compile, images=x[:8], seed=args.seed) for name in names}
    index = common_indices(models, x, y, args.n, args.seed, args.batch_size).tolist()
    print(f"attacking the same {len(index)} test images (classified correctly by all {len(models)} models) "
          f"with {'+'.join(args.attack)}")
    settings = dict(dataset=args.dataset, index=index, budgets=args.budgets, attacks=args.attack, seed=args.seed,
                    batch_size=args.batch_size, out=args.out, compile=args.compile)
    done = {}
    for name in names:
        try:
            if kept := finished(args.out / f"{name}.json", settings):
                done[name] = kept
                print(f"{name}: kept {args.out / f'{name}.json'} (same images, budgets, attacks and seed)")
        except EvalResultError as err:  # e.g. a file torn by a full disk: evaluate that model again
            print(f"repspec-zoo leaderboard: warning: {err}; evaluating {name} again", file=sys.stderr)
    todo = [name for name in names if name not in done]
    if args.workers > 1 and len(todo) > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(min(args.workers, len(todo))) as pool:
            for name in pool.imap_unordered(evaluate_job, [dict(settings, name=n) for n in todo]):
                print(f"done: {name}", flush=True)
    else:
        for i, name in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {name}")
            evaluate_job(dict(settings, name=name), models[name], (x, y))
    results = {name: done.get(name) or EvalResult.load(args.out / f"{name}.json") for name in names}
    command = ("repspec-zoo leaderboard " + " ".join(argv if argv is not None else sys.argv[2:])).strip()
    meta = dict(dataset=args.dataset, index=index, budgets=args.budgets, attacks=args.attack, seed=args.seed,
                wall_time_s=time.perf_counter() - start, command=command)
    tables, deltas = report(results, args.out, meta, args.update_readme)
    if args.update_cards:
        _update_cards(results, deltas, meta)
    print(f"\n{tables}\n\n{len(models)} models ({len(todo)} attacked now) in {meta['wall_time_s']:.0f} s; "
          f"wrote {args.out}/")
    return results
