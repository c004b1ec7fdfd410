"""Pieces every experiment shares: recipe runs in parallel, models from run folders, tables, box plots.

Training goes through ``recipes/train.py`` (one subprocess per run, ``OMP_NUM_THREADS=1`` each,
``--workers`` at a time); a finished run (its ``run.json`` exists) is skipped and a killed one
resumes from its checkpoint, so re-running an experiment's command continues where it stopped.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from repspec_zoo.runs import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
RESULTS = ROOT / "results" / "experiments"
RUNS = ROOT / "runs" / "experiments"

__all__ = ["ROOT", "RESULTS", "RUNS", "PlannedRun", "run_all", "parallel_map", "split_tensors", "burn_in_epochs", "load_results", "attack_summary", "distance_rule", "checkpoint_at_epoch", "sigma_max",
           "mean_std", "table", "box_plot", "write_json", "paired_rows",
           "paired_table", "seed_level_rows", "seed_table"]


@dataclass
class PlannedRun:
    """One ``recipes/train.py`` run: its config, run folder and overrides."""

    config: str  # recipes/configs/<config>.yaml
    output: Path  # run directory
    overrides: Sequence[str] = ()  # KEY=VALUE
    init: Path | None = None  # fine-tune from this run directory
    branch_from: tuple[Path, int] | None = None  # (run dir, epoch): continue its end-of-epoch checkpoint
    after: list["PlannedRun"] = field(default_factory=list)  # runs that must finish first

    @property
    def done(self) -> bool:
        return (self.output / SUMMARY_FILE).is_file()

    def command(self) -> list[str]:
        """The recipe's command line, with paths relative to ROOT (its working directory): the run
        records it, and published cards must not carry this machine's paths."""
        def rel(path: Path) -> str:
            return os.path.relpath(path, ROOT)

        argv = [sys.executable, "recipes/train.py", "--config", rel(CONFIGS / f"{self.config}.yaml"),
                "--output", rel(self.output), *self.overrides]
        argv += ["--init", rel(self.init)] if self.init else []
        if self.branch_from:  # resolved now: the checkpoint exists once the source run has trained
            argv += ["--branch-from", rel(checkpoint_at_epoch(*self.branch_from))]
        return argv


def _execute(run: PlannedRun) -> float:
    run.output.mkdir(parents=True, exist_ok=True)
    log = run.output.parent / f"{run.output.name}.log"  # not with_suffix: "adv_0.5" has a dot
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(run.command(), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"training run {run.output} failed (exit {code}); log {log}:\n{tail}")
    return time.perf_counter() - start


def run_all(runs: Iterable[PlannedRun], workers: int = 2) -> None:
    """Train every unfinished run, ``workers`` at a time, each as soon as the runs it depends on are done.

    """
    from tqdm.auto import tqdm

    pending = [r for r in runs if not r.done]
    bar = tqdm(total=len(pending), desc="training runs", unit="run", dynamic_ncols=True)
    running: dict = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for run in [r for r in pending if all(d.done for d in r.after)][:workers - len(running)]:
                pending.remove(run)
                running[pool.submit(_execute, run)] = run
            if not running:
                raise RuntimeError(f"runs wait on runs that are not scheduled: {[str(r.output) for r in pending]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                seconds = future.result()  # re-raises a failed run's error
                bar.update()
                bar.write(f"trained {run.output} in {seconds:.0f} s")
    bar.close()


def parallel_map(fn, jobs: list, workers: int, desc: str) -> list:
    """``[fn(job) for job in jobs]`` in ``workers`` spawned processes (one torch thread each), with a
    progress bar; ``fn`` must be importable (a module-level function)."""
    import multiprocessing

    from tqdm.auto import tqdm

    with multiprocessing.get_context("spawn").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(tqdm(pool.imap(fn, jobs), total=len(jobs), desc=desc, unit="model", dynamic_ncols=True))


def attack_summary(result) -> dict:
    """The numbers of an :class:`~repspec_zoo.evaluation.result.EvalResult` an experiment keeps (per-sample included)."""
    return dict(clean_acc=result.clean_acc, n_test=result.n_test, n_samples=result.n_samples,
                l2_mean=result.l2_mean, l2_median=result.l2_median, success_rate=result.success_rate,
                distance=result.distance, start_pool=result.settings.get("start_pool"),
                certified_mean=result.certified["mean"] if result.certified else None,
                wall_time_s=result.wall_time_s, per_sample=result.per_sample)


def distance_rule(summary: dict) -> str:
    """How a saved attack summary's mean and median were taken. Summaries with a ``start_pool``
    come from the evaluation where every sample gets a start (noise, then other-class images); older ones were made
    with noise starts only, and both statistics skipped the samples the attack never broke."""
    if summary.get("start_pool") is not None:
        return ("every attacked image got a start (noise, then other-class test images); mean over the images the "
                "attack broke, median over all of them (an unbroken one counts as +inf)")
    return ("noise starts only (an evaluation from before the start pool): mean and median over the images the "
            "attack broke, the others (1 - success) left out")


@functools.cache
def split_tensors(name: str, split: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``repspec_zoo.data.load_split(name, split, **kwargs)`` stacked to (X, Y), once per worker process
    (every model a worker evaluates reads the same images)."""
    from repspec_zoo.data import as_tensors, load_split

    return as_tensors(load_split(name, split, **kwargs))


def burn_in_epochs(config: str, overrides: Sequence[str]) -> int:
    """``regularizer.burn_in_epochs`` of recipes/configs/<config>.yaml with ``overrides``: the epoch a
    regularized run branches from its unregularized twin."""
    from repspec_zoo.training import load_config

    return load_config(CONFIGS / f"{config}.yaml", list(overrides)).regularizer.burn_in_epochs


def load_results(out: Path) -> dict:
    """An experiment's OUT/results.json (what ``--report-only`` re-renders)."""
    return json.loads((out / "results.json").read_text())


def checkpoint_at_epoch(run_dir: Path, epoch: int) -> Path:
    """The checkpoint of ``run_dir`` saved at the end of ``epoch`` (1-based epochs completed)."""
    from repspec_zoo.training import Checkpoints

    for path in Checkpoints(run_dir / "checkpoints", keep=1).all():
        state = json.loads((path / "train_state.json").read_text())
        if state["epoch"] == epoch and state["batches_done"] == 0:
            return path
    raise FileNotFoundError(f"{run_dir} kept no checkpoint at the end of epoch {epoch}; "
                            "raise checkpoint.keep so that it survives")


def weights_at_epoch(run_dir: Path, epoch: int, module: str = "model.") -> dict[str, torch.Tensor]:
    """The weights of the training wrapper's ``module`` (a key prefix) in the checkpoint at the end of
    ``epoch``, the prefix removed and regularizer buffers dropped: a state dict for the plain model."""
    import safetensors.torch

    from repspec_zoo.runs import WEIGHTS_FILE
    from repspec_zoo.spectral import without_regularizer

    return without_regularizer(safetensors.torch.load_file(checkpoint_at_epoch(run_dir, epoch) / WEIGHTS_FILE), module)


@torch.no_grad()
def sigma_max(weight: torch.Tensor) -> float:
    """Largest singular value of a Linear weight (dense SVD; exact)."""
    return float(torch.linalg.matrix_norm(weight.double(), ord=2))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[dict], group: Sequence[str], metrics: dict[str, str], digits: int = 4) -> str:
    """Markdown table: one line per distinct ``group`` key, each metric as mean ± std over its rows.

    Args:
        rows: one dict per (run, seed) holding the group keys and the metric values.
        metrics: {row key: column title}.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group), []).append(row)
    head = [*group, "seeds", *metrics.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in groups.items():
        cells = [str(k) for k in key] + [str(len(members))]
        for metric in metrics:
            m, s = mean_std([r[metric] for r in members])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def box_plot(panels: dict[str, dict[str, Sequence[float]]], path: Path, title: str) -> Path:
    """One box-plot panel per entry of ``panels`` ({panel title: {box label: values}}) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, boxes) in zip(axes[0], panels.items()):
        ax.boxplot(list(boxes.values()), showmeans=True)
        ax.set_xticks(range(1, len(boxes) + 1), list(boxes), rotation=20, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(path: Path, data) -> Path:
    from repspec_zoo.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=1))


def cached_json(path: Path, compute):
    """``compute()``'s JSON-able result, kept in ``path``: a re-run (a killed experiment resumed) reads it
    back instead of computing it again."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json(path, value)
    return value


def paired_rows(results: dict[tuple, list[float]], baseline: str, position: int) -> list[dict]:
    """Paired comparisons of per-image distances against the baseline arm: one trained network pair each.

    Args:
        results: {key tuple: per-image distances}, all on the same images for equal keys but the arm.
        baseline: the arm every other arm is compared with.
        position: where the arm sits in the key tuple.

    Returns one row per (other arm, rest of the key) with ``stats.paired_comparison``'s numbers
    (b = the arm, a = the baseline; positive = the arm is more robust). The images are resampled,
    the networks are not: a row says nothing about another seed (see :func:`seed_level_rows`).
    """
    from repspec_zoo.evaluation import stats

    groups: dict[tuple, dict[str, list[float]]] = {}
    for key, distances in results.items():
        groups.setdefault(key[:position] + key[position + 1:], {})[key[position]] = distances
    return [dict(arm=arm, group=list(group), **stats.to_jsonable(stats.paired_comparison(arms[baseline], distances)))
            for group, arms in groups.items() if baseline in arms
            for arm, distances in arms.items() if arm != baseline]


def seed_level_rows(results: dict[tuple, list[float]], baseline: str, position: int, seed_position: int) -> list[dict]:
    """Seed-level comparisons against the baseline arm: the seed is the unit of replication.

    Args:
        results: {key tuple: per-image distances}, as for :func:`paired_rows`: equal keys but the
            arm (at ``position``) hold distances on the same images; the seed sits at ``seed_position``.
        baseline: the arm every other arm is compared with.

    Per (other arm, rest of the key without arm and seed) and per seed that has both arms: the mean
    distance of each arm over the images finite in both (an unbroken image, +inf, is left out of
    both). These per-seed means, paired by seed, go to ``stats.seed_level_comparison(a = baseline,
    b = arm)`` (mean difference with a Student-t CI over seeds, sign count, sign-test p). Each row
    also holds ``arm``, ``group`` (the rest of the key), ``seeds``, ``per_seed_a``, ``per_seed_b``.
    """
    from repspec_zoo.evaluation import stats

    if position == seed_position:
        raise ValueError("the arm and the seed must sit at different positions of the key")
    groups: dict[tuple, dict[str, dict]] = {}
    for key, distances in results.items():
        rest = tuple(k for i, k in enumerate(key) if i not in (position, seed_position))
        groups.setdefault(rest, {}).setdefault(key[position], {})[key[seed_position]] = distances
    rows = []
    for group, arms in groups.items():
        for arm, by_seed in arms.items():
            if arm == baseline or baseline not in arms:
                continue
            seeds, means_a, means_b = [], [], []
            for seed in sorted(set(by_seed) & set(arms[baseline])):
                a, b = (torch.as_tensor([float(v) for v in d], dtype=torch.float64)
                        for d in (arms[baseline][seed], by_seed[seed]))
                if a.shape != b.shape:
                    raise ValueError(f"{arm} and {baseline} of seed {seed} ({list(group)}): {len(b)} vs {len(a)} "
                                     "distances; they must be on the same images")
                finite = a.isfinite() & b.isfinite()
                if finite.any():
                    seeds.append(seed)
                    means_a.append(float(a[finite].mean()))
                    means_b.append(float(b[finite].mean()))
            if seeds:
                rows.append(dict(arm=arm, group=list(group), seeds=seeds, per_seed_a=means_a, per_seed_b=means_b,
                                 **stats.to_jsonable(stats.seed_level_comparison(means_a, means_b))))
    return rows


def seed_table(rows: list[dict], group_names: Sequence[str], baseline: str = "baseline") -> str:
    """Markdown table of :func:`seed_level_rows`: per-seed differences b - a, their mean with the
    Student-t CI over seeds, the relative change mean(b) / mean(a) - 1, the sign count and the
    one-sided sign-test p (P(at least this many seeds positive | no effect))."""
    head = [f"arm vs {baseline}", *group_names, "seeds", "per-seed mean a", "per-seed mean b", "per-seed b - a",
            "mean b - a [95% t-CI]", "relative", "signs + / -", "sign test p (one-sided)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def signed(v):
        return "n/a" if v is None else f"{v:+.3f}"
    for r in rows:
        d, rel = r["mean_difference"], r["relative_difference"]
        lines.append("| " + " | ".join([
            r["arm"], *map(str, r["group"]), ", ".join(map(str, r["seeds"])),
            ", ".join(f"{v:.3f}" for v in r["per_seed_a"]), ", ".join(f"{v:.3f}" for v in r["per_seed_b"]),
            ", ".join(signed(v) for v in r["differences"]),
            f"{signed(d['estimate'])} [{signed(d['low'])}, {signed(d['high'])}]",
            "-" if rel is None else f"{rel:+.1%}", f"{r['n_positive']} / {r['n_negative']}",
            f"{r['sign_test_p_one_sided']:.3g}"]) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict], group_names: Sequence[str]) -> str:
    """Markdown table of `paired_rows`: mean difference with its CI, Wilcoxon p and the verdict."""
    from repspec_zoo.evaluation.stats import format_interval

    head = ["arm vs baseline", *group_names, "pairs", "mean a", "mean b", "mean b - a [95% CI]", "Wilcoxon p",
            "beyond noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["wilcoxon"]["p_value"]
        lines.append("| " + " | ".join([r["arm"], *map(str, r["group"]), str(r["n_pairs"]),
                                        "-" if r["mean_a"] is None else f"{r['mean_a']:.3f}",
                                        "-" if r["mean_b"] is None else f"{r['mean_b']:.3f}",
                                        format_interval(r["mean_difference"], 3), "-" if p is None else f"{p:.2g}",
                                        (r["direction"] if r["beyond_noise"] else "no")]) + " |")
    return "\n".join(lines)
