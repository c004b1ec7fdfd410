"""Write benchmarks/README.md from the results files the benchmark scripts wrote.

    python benchmarks/render_readme.py

Every number in the README comes from benchmarks/results_*.json; a missing file is listed
as not measured yet, with the command that produces it.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = {
    "spectral": "PYTHONPATH=. python benchmarks/bench_spectral.py --steps 15",
    "attack": "PYTHONPATH=. python benchmarks/bench_attack.py",
    "eval_forward": ("OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_eval_forward.py "
                     "--old OLD_CHECKOUT --demo"),
    "zoo_attacks": ("PYTHONPATH=. python benchmarks/bench_zoo_attacks.py --models slp_baseline.fmnist "
                    "resnet_small_baseline.fmnist --n 20 --workers 1"),
    "zoo_attacks_leaderboard": "PYTHONPATH=. python benchmarks/bench_zoo_attacks.py --from results/leaderboard",
    "recipe": ("OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_recipe.py --epochs 3 --repeats 4 "
               "dataset.train_limit=2560 dataset.test_limit=256 regularizer.burn_in_epochs=1 eval.attack=none"),
    "gpu_check": "benchmarks/gpu_check.sh",
    "image_check": "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_image_check.py",
    "gram": "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_gram.py",
    "whitebox": "PYTHONPATH=. python benchmarks/bench_whitebox.py --previous-commit 8f9329c",
}
GPU_VARIANTS = {"plain": "plain", "every_1": "rep-spectral in the loss, a power update every step",
                "every_n": "same, a power update every {every} steps",
                "direct": "direct step every {every} steps, not in the loss (the ImageNet recipe)"}


def load(name: str) -> dict | None:
    path = HERE / f"results_{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def spectral(r: dict) -> list[str]:
    st, rn, pe = r["step_time"], r["resnet50_224"], r["power_iteration_error"]
    rows = [
        "| measure | result | goal |", "|---|---:|---:|",
        f"| resnet18 32x32 batch 128: step time regularized / plain, every=1 | {st['ratio_every_1']:.3f} | <= 1.10 |",
        f"| same, every=16 | {st['ratio_every_16']:.3f} | <= 1.02 |",
        f"| plain step time (s) | {st['plain_s_per_step']:.3f} | |",
        f"| exact FFT sigma_max of all {rn['n_convs']} ResNet-50 convs at 224 (s) | {rn['fft_all_convs_s']:.1f} | <= 25 |",
        f"| peak resident memory of the process (GB) | {rn['peak_rss_gb']:.2f} | <= 2 |",
        f"| one power step over all ResNet-50 convs (s) | {rn['one_power_step_all_convs_s']:.2f} | |",
    ]
    rows += [f"| power iteration from random vectors, {k} steps: median / max rel. error | "
             f"{v['median']:.2e} / {v['max']:.2e} | |" for k, v in pe.items() if k.startswith("k=")]
    warm = pe["warm_1_step_after_sgd_update"]
    rows.append(f"| one warm-started step after an SGD update: median / max rel. error (why: the Gram section) | "
                f"{warm['median']:.2e} / {warm['max']:.2e} | |")
    return rows


def attack(r: dict) -> list[str]:
    s, b = r["setup"], r["batching"]
    rows = [f"Model: {s['model']}, clean accuracy {s['clean_acc']:.4f}; {s['n_samples']} correctly classified test "
            f"images, batch size {s['batch_size']}, {s['threads']} thread(s).", "",
            "| measure | result | goal |", "|---|---:|---:|",
            f"| batched TA vs one sample at a time, {s['speed_budget']} queries: speed-up | {b['speedup']:.1f}x | >= 10x |",
            f"| fraction of equal distances batched vs one at a time | {b['l2_equal_fraction']:.2f} | 1.00 |"]
    rows += [f"| {name}: wall time / replay of its own queried rows ({o['queries']} queries, {o['model_calls']} "
             f"calls) | {o['ratio']:.2f} | <= 1.5 |" for name, o in r["overhead"].items()]
    rows += ["",
            "| attack | " + " | ".join(f"mean L2 @{q}" for q in r["quality"]["ta"]["l2_mean"]) + " |",
            "|---|" + "---:|" * len(r["quality"]["ta"]["l2_mean"])]
    for name, q in r["quality"].items():
        rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in q["l2_mean"].values()) + " |")
    return rows


def eval_forward(r: dict) -> list[str]:
    from repspec_zoo.evaluation.evaluate import EVAL_BATCH_SIZE  # the evaluation's default batch (torch loads only here)

    s, sizes = r["setup"], [str(b) for b in r["setup"]["batch_sizes"]]
    rows = [f"No-grad logits of the bundled models, {s['threads']} thread, torch {s['torch']}, median of {s['rounds']} "
            "interleaved rounds (load average " + ", ".join(
                f"{v:.1f} at the {k.split('_')[2]} of " + (k.split("_", 3)[3:] or ["the run"])[0]
                for k, v in s.items() if k.startswith("load_avg_")) + "). rows/s (ratio to eager at the same batch size) [peak resident memory of the process, GB]. "
            "`channels_last`: that memory format alone; `folded`: channels_last + BatchNorm folded into the convs "
            "(`fast_eval()`, the default of `repspec-zoo eval`, `probe` and `leaderboard`); `compiled`: folded + "
            "torch.compile (`fast_eval(compile=True)`, `--compile`).", "",
            "| model | variant | compile (s) | max logit diff vs eager | " + " | ".join(f"batch {b}" for b in sizes) + " |",
            "|---|---|---:|---:|" + "---:|" * len(sizes)]
    for name, m in r["forward"].items():
        for variant, table in m["by_variant"].items():
            cells = " | ".join(f"{table[b]['rows_per_s']:.0f} ({table[b]['vs_eager']:.2f}x) [{table[b]['peak_rss_gb']:.2f}]"
                               for b in sizes)
            compile_s = f"{m['compile_s']:.1f}" if variant == "compiled" else ""
            rows.append(f"| {name} | {variant} | {compile_s} | {m['max_logit_diff_vs_eager'][variant]:.1e} | {cells} |")
    g = r["gradient"]
    variants = list(next(iter(g.values()))["by_variant"])
    rows += ["", f"Forward + backward to the input (what FMN and ALMA run; parameters frozen), "
             f"{next(iter(g.values()))['rows']} rows: rows/s (ratio to eager). `compiled` here is torch.compile with "
             "autograd on the folded model (not used: the compile column is its cost per model).", "",
             "| model | compile (s) | " + " | ".join(variants) + " |", "|---|---:|" + "---:|" * len(variants)]
    for name, m in g.items():
        rows.append(f"| {name} | {m['compile_s']:.1f} | " + " | ".join(
            f"{m['by_variant'][v]['rows_per_s']:.0f} ({m['by_variant'][v]['vs_eager']:.2f}x)" for v in variants) + " |")
    a = r["agreement"]
    rows += ["", f"Attacks {a['attack']} at {a['budgets'][-1]} queries on the same images, eager vs `fast_eval()` "
             "(per-sample best distance):", "",
             "| model | n | distance differs | differs by > 1e-3 relative (or success differs) | max rel. change | "
             "mean L2 eager / fast | wall eager / fast incl. set-up (s), one run |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in a["models"].items():
        rows.append(f"| {name} | {m['n']} | {m['changed_fraction']:.2f} | {m['moved_fraction']:.2f} | "
                    f"{m['changed_max_rel']:.1e} | {m['mean_l2']['eager']:.4f} / {m['mean_l2']['fast']:.4f} | "
                    f"{m['wall_s']['eager']:.0f} / {m['wall_s']['fast_incl_setup']:.0f} |")
    t = r["training"]
    rows += ["", "| measure | result |", "|---|---:|"]
    rows += [f"| {name}: rows/s of the default forward (folded, batch {EVAL_BATCH_SIZE}) / the old leaderboard's "
             f"(eager, batch 1000) | {m['by_variant']['folded'][str(EVAL_BATCH_SIZE)]['rows_per_s'] / m['by_variant']['eager']['1000']['rows_per_s']:.2f}x |"
             for name, m in r["forward"].items()]
    rows += [
             f"| training step of {t['model']}, batch {t['batch']} (forward + backward + SGD): compiled / eager time | "
             f"{t['compiled_over_eager']:.2f} |",
             f"| its eager step (s) / compile time (s) | {t['eager_s_per_step']:.3f} / {t['compile_s']:.0f} |"]
    for key in ("leaderboard", "demo"):
        if key in r:
            c = r[key]
            what = f"`repspec-zoo leaderboard {' '.join(c['args'])}`" if c["args"] else "`make demo` (full leaderboard)"
            for label, runs in c["runs"].items():
                rows.append(f"| {what}, {c['threads']} thread(s), {label} code: wall (s) [peak RSS / peak anonymous "
                            "memory, GB] | " + ", ".join(f"{x['wall_s']:.0f} [{x['peak_rss_gb']:.2f} / "
                                                         f"{x['peak_anon_gb']:.2f}]" for x in runs) + " |")
            rows.append(f"| same, wall time old / new | {c['old_over_new_wall']:.2f}x |")
    if "leaderboard" in r:
        rows += ["", "Peak RSS includes the shared libraries' file pages: torch's CUDA build maps 0.4-0.6 GB of them "
                 "on a CPU machine, more while they sit in the page cache (after an install), so it moves between "
                 "machines and runs. Peak anonymous memory (RssAnon, sampled every 5 ms) is what the process "
                 "allocated itself."]
    return rows


def zoo_attacks(r: dict) -> list[str]:
    s = r["setup"]
    budgets, attacks = [str(q) for q in s["budgets"]], s["attacks"]
    source = f" Distances from {s['source']}." if s.get("source") else ""
    rows = [f"The same {s['n']} correctly classified Fashion-MNIST test images for every bundled model and attack "
            f"(seed {s['seed']}).{source} L2 in [0,1] pixels, mean over the broken images / median over all "
            "(unbroken = inf). "
            "Last column: CGBA minus TA, paired on the same images, 95% bootstrap CI of the mean difference and "
            "whether it is beyond noise (CI excludes 0 and Wilcoxon p < 0.05).", "",
            "| model | budget | " + " | ".join(f"{a} mean / median" for a in attacks) + " | CGBA - TA mean [95% CI] |",
            "|---|---:|" + "---:|" * len(attacks) + "---|"]
    for name, m in r["models"].items():
        for q in budgets:
            row = m["by_budget"][q]
            d = row["cgba_vs_ta"]
            diff = d["mean_difference"]
            cells = " | ".join(f"{row[a]['l2_mean']:.3f} / {row[a]['l2_median']:.3f}" for a in attacks)
            rows.append(f"| `{name}` | {q} | {cells} | {diff['estimate']:+.3f} [{diff['low']:+.3f}, "
                        f"{diff['high']:+.3f}] {'beyond noise' if d['beyond_noise'] else 'within noise'} |")
    wins = {a: sum(min(attacks, key=lambda b: m["by_budget"][q][b]["l2_mean"]) == a for m in r["models"].values()
                   for q in budgets) for a in attacks}
    rows += ["", "Lowest mean per (model, budget): " + ", ".join(f"{a} {c}" for a, c in wins.items()) + "."]
    return rows


def recipe(r: dict) -> list[str]:
    return ["| measure | result | goal |", "|---|---:|---:|",
            f"| steps/s recipe / plain PyTorch loop (wall, median) | {r['ratio_wall']:.3f} | >= 0.95 |",
            f"| same on CPU time | {r['ratio_cpu']:.3f} | |"]


def image_check(r: dict) -> list[str]:
    rows = [f"Every image of a local folder is decoded once before training ({r['check_workers']} threads); one "
            f"pass = reading each item of the split once (decode + transform, one thread). Best of {r['repeats']}.",
            "", "| folder | images | check ms/image | one pass ms/image | check / one pass | goal |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {name} | {f['images']} | {f['check_ms_per_image']:.3f} | {f['one_pass_ms_per_image']:.3f} | "
             f"{f['ratio_check_to_one_pass']:.3f} | < 1 |" for name, f in r.items() if isinstance(f, dict)]
    return rows


def _failed(result: dict) -> str | None:
    """Why a section or variant has no numbers (its error, or why it was skipped), else None."""
    return result.get("error") or result.get("skipped")


def gpu_check(r: dict) -> list[str]:
    s, env = r["settings"], r["environment"]
    steps = {p: r[f"train_step_{p}"] for p in ("bf16", "fp32") if r.get(f"train_step_{p}")}
    rows = [f"{s['note']}, on {env['device_name']} (torch {env['torch']}, CUDA {env['cuda']}); "
            f"{r['wall_s']:.0f} s in all.", "",
            f"Train step, batch {s['batch_size']}, device synchronized after each step: ms per optimizer step after "
            f"{s['warmup_steps']} warm-up steps (the mean of {s['timed_steps']}: whole update periods; direct: the "
            "median step plus the median direct step / every), and its ratio to plain.", "",
            "| variant | " + " | ".join(f"{p} ms/step | {p} / plain" for p in steps) + " |",
            "|---|" + "---:|---:|" * len(steps)]
    for name, label in GPU_VARIANTS.items():
        variants = [section.get(name, section) for section in steps.values()]  # a failed section has no variants
        every = next((v["every"] for v in variants if "every" in v), "?")
        cells = [cell for v in variants for cell in ((_failed(v), "") if _failed(v) else
                                                      (f"{v['ms_amortized']:.1f}", f"{v['ratio_vs_plain']:.3f}"))]
        rows.append(f"| {label.format(every=every)} | " + " | ".join(cells) + " |")
    a, f = r["attack"], r["fft_norms"]
    rows += ["", "| measure | result |", "|---|---:|"]
    rows += [f"| Tangent Attack | {_failed(a)} |"] if _failed(a) else [
        f"| Tangent Attack, {a['n']} images x {a['budget']} queries, {a['batch_size']} rows per call: rows/s | "
        f"{a['rows_per_s']:.0f} |",
        f"| forward floor: rows/s of the attack's own rows replayed in the same calls "
        f"({'all' if 'replayed_rows' not in a else 'the first %d' % a['replayed_rows']}) | {a['floor_rows_per_s']:.0f} |",
        f"| attack time / forward floor time | {a['ratio']:.2f} |"]
    rows += [f"| exact FFT norms | {_failed(f)} |"] if _failed(f) else [
        f"| exact FFT sigma_max of all {f['n_convs']} convs ({f['dtype']}): total / slowest layer (s) | "
        f"{f['seconds_total']:.2f} / {f['seconds_max_layer']:.3f} |",
        f"| {f['power_iters']} power steps on the same operators: total (s) | {f['power_seconds_total']:.2f} |",
        f"| their rel. gap below the FFT sigma: median / max | {f['power_rel_gap_median']:.1e} / "
        f"{f['power_rel_gap_max']:.1e} |"]
    peaks = [(name, sec) for name, sec in r.items() if isinstance(sec, dict) and "peak_rss_gb" in sec]
    rows += [f"| peak memory, {name}: GPU allocated / process resident (GB) | "
             f"{sec['peak_gpu_gb'] if 'peak_gpu_gb' in sec else float('nan'):.2f} / {sec['peak_rss_gb']:.2f} |"
             for name, sec in peaks]
    precision = r.get("eval_precision")
    if precision:
        rows += ["", "Evaluation precision against strict float32 (TF32 off): test labels that change, and the paired "
                 "change of the Tangent Attack's mean L2 (same seed and images; 95% bootstrap CI).", ""]
        if _failed(precision):
            rows.append(f"failed: {_failed(precision)}")
        else:
            rows += ["| model | precision | test labels changed | attacked x queries | mean L2 change [95% CI] | "
                     "beyond noise | attack time / float32 |", "|---|---|---:|---:|---|---|---:|"]
            for name, m in precision["models"].items():
                for mode, p in m["modes"].items():
                    if mode != "fp32":
                        rows.append(f"| `{name}` | {mode} | {p['test_labels_changed']} of {m['test_images']} | "
                                    f"{m['attacked']} x {m['budget']} | {_relative_ci(p['relative_l2_change'])} | "
                                    f"{'yes' if p['beyond_noise'] else 'no'} | {p['time_vs_fp32']:.2f} |")
    board = r.get("leaderboard")
    if board:
        rows += ["", f"Published leaderboard: `repspec-zoo leaderboard {' '.join(board.get('args', []))}`"]
        if _failed(board):
            rows.append(f"failed: {_failed(board)}")
        else:
            rows += [f"{board['wall_s_total']:.0f} s in all. Per model: rows/s of each attack (hard-label: queries; "
                     "white-box: forward + backward passes) against the model's no-grad forward floor.", "",
                     "| model | images | wall (s) | forward floor rows/s | per attack: rows/s (wall s) |",
                     "|---|---:|---:|---:|---|"]
            for name, m in board["models"].items():
                parts = ", ".join(f"{a} {p['rows_per_s']:.0f} ({p['wall_s']:.0f})" for a, p in m["attacks"].items()
                                  if p["rows_per_s"])
                wall = sum(p["wall_s"] for p in m["attacks"].values())
                rows.append(f"| `{name}` | {m['n']} | {wall:.0f} | {m['floor_rows_per_s']:.0f} | {parts} |")
    return rows


def gram(r: dict) -> list[str]:
    rows = [f"Every conv of timm ResNet-18 / ResNet-50 (random init, seed 0: random kernels, not trained ones), the "
            f"zero-padded operator timm computes, float32, {r['torch_threads']} thread, methods interleaved layer by "
            f"layer. gram: `estimator=\"gram\"` ({r['gram_iters']} Gram steps), an upper bound on the circular conv "
            "on the grid N >= n + 2p, hence on the layer; fft: that circular norm exactly (what gram converges to); "
            f"power: {r['power_steps']} power steps from a random start, a lower bound (the paper's reference); "
            f"dense: the SVD of the dense operator (float64; layers with <= {r['dense_max']} inputs), the true norm. "
            "Products over all convs as in the paper (its notebook: gram 1.48x power on ResNet-18, on the circular "
            "conv of the layer's own grid, which is not a bound for zero padding: the last product column).", "",
            "| model | convs | gram (s) | gram + backward (s) | fft (s) | power (s) | gram / fft time | "
            "prod gram / power | prod fft / power | prod gram own grid / power | gram / fft per layer: median, max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in r["norms"]:
        t = n["totals"]
        rows.append(f"| {n['model']} {n['size']}x{n['size']} | {t['n_convs']} | {t['gram_s']:.1f} | "
                    f"{t['gram_backward_s']:.1f} | {t['fft_s']:.1f} | {t['power_s']:.1f} | "
                    f"{t['gram_s'] / t['fft_s']:.2f} | {t['product_gram_over_power']:.3f} | "
                    f"{t['product_fft_over_power']:.3f} | {t['product_gram_circular_own_grid_over_power']:.3f} | "
                    f"{t['gram_over_fft_median']:.5f}, {t['gram_over_fft_max']:.5f} |")
    rows += ["", f"The Gram steps' own share ({r['gram_iters']} steps): prod gram / prod fft = " + ", ".join(
        f"{n['totals']['product_gram_over_power'] / n['totals']['product_fft_over_power']:.3f} ({n['model']} "
        f"{n['size']})" for n in r["norms"]) + "; the rest of prod gram / power is power iteration falling short of "
        "the true norms after its steps (it only bounds from below) and, on small inputs, the larger grid N. On this "
        "CPU the exact FFT path (an eigensolver per frequency with Cholesky pruning) is the faster one; Gram iteration "
        "is batched matrix products, what a GPU runs best (the paper's timings are GPU timings; not measured here)."]
    for n in r["norms"]:
        t = n["totals"]
        if t["n_dense"]:
            rows += ["", f"Against the true norm ({n['model']} {n['size']}x{n['size']}, the {t['n_dense']} convs with "
                     f"<= {r['dense_max']} inputs), min / max over layers: gram / dense {t['gram_over_dense_min']:.4f} / "
                     f"{t['gram_over_dense_max']:.4f}, fft / dense {t['fft_over_dense_min']:.4f} / "
                     f"{t['fft_over_dense_max']:.4f}, power / dense {t['power_over_dense_min']:.4f} / "
                     f"{t['power_over_dense_max']:.4f}."]
            worst = max((x for x in n["layers"] if "dense" in x), key=lambda x: x["gram"] / x["dense"])
            rows.append(f"The bound is loose where the input is small next to the kernel: {worst['name']} sees "
                        f"{'x'.join(map(str, worst['in_shape']))} inputs, where the zero-padded operator is far from "
                        f"the circular conv on N >= n + 2p (gram / dense {worst['gram'] / worst['dense']:.2f}; taps "
                        "that never meet the input are cropped, so 1x1 inputs are exact).")
    c = r["convergence"]
    rows += ["", f"Convergence with the number of Gram steps T (Schatten 2^(T+1) norm of each symbol matrix), "
             f"bound / fft - 1 over the {c['model']} {c['size']}x{c['size']} convs (float64):", "",
             "| T | " + " | ".join(c["steps"]) + " |", "|---|" + "---:|" * len(c["steps"]),
             "| median | " + " | ".join(f"{v['median']:.1e}" for v in c["steps"].values()) + " |",
             "| max | " + " | ".join(f"{v['max']:.1e}" for v in c["steps"].values()) + " |"]
    for n in r["norms"]:
        dense = any("dense" in x for x in n["layers"])
        rows += ["", f"<details><summary>per layer: {n['model']} {n['size']}x{n['size']}</summary>", "",
                 "| conv | input | kernel | stride | gram | fft | power | " + ("dense | " if dense else "") +
                 "gram (s) | fft (s) | power (s) |",
                 "|---|---|---|---:|---:|---:|---:|" + ("---:|" if dense else "") + "---:|---:|---:|"]
        for x in n["layers"]:
            cell = (f"{x['dense']:.4f} | " if "dense" in x else "- | ") if dense else ""
            rows.append(f"| {x['name']} | {'x'.join(map(str, x['in_shape']))} | {'x'.join(map(str, x['kernel']))} | "
                        f"{x['stride']} | {x['gram']:.4f} | {x['fft']:.4f} | {x['power']:.4f} | {cell}"
                        f"{x['gram_s']:.3f} | {x['fft_s']:.3f} | {x['power_s']:.3f} |")
        rows += ["", "</details>"]
    return rows + [""] + warm_start(r)


def warm_start(r: dict) -> list[str]:
    default, moving = r["warm_start"]
    c = r["crossing"]
    n = len(default["layers"])
    changed = sorted((x for x in default["layers"] if x["kernel_change"] > 0), key=lambda x: -x["kernel_change"])
    rows = ["### The warm-started power-step outlier", "",
            f"The row \"one warm-started step after an SGD update\" above (bench_spectral.py: ResNet-18, 8 random "
            f"32x32 images, one SGD step at lr 0.05, then one power step from the previous vectors), reproduced: "
            f"median {default['median']:.1e}, max {default['max']:.2f}. Two things hide in it.", "",
            f"* The median measures nothing: timm's ResNet zero-initializes the last BatchNorm of every block "
            f"(`zero_init_last`), so at init the step leaves {default['n_unchanged']} of the {n} convs exactly "
            "unchanged (kernel change: " + ", ".join(f"{x['name']} {x['kernel_change']:.3f}" for x in changed) +
            f"; every other 0). With `zero_init_last=False` every conv moves: median {moving['median']:.1e}, "
            f"max {moving['max']:.2f}.",
            f"* The max is {c['layer']} (kernel {'x'.join(map(str, c['kernel']))}, input "
            f"{'x'.join(map(str, c['in_shape']))}), whose kernel moves by {c['kernel_change']:.0%} of its norm in "
            f"that one step, and the mechanism is a singular value crossing, not a bug: the update alone is an "
            f"operator of norm {c['sigma_of_update_alone']:.3f}, above the old sigma_max "
            f"{c['sigma_before_top4'][0]:.3f}, so its own (near-constant, low-frequency) direction becomes the new "
            f"top (overlap of the new top right singular vector with the update's: "
            f"{c['overlap_new_top_with_update_top']:.3f}; sigma_max {c['sigma_before_top4'][0]:.3f} -> "
            f"{c['sigma_after_top4'][0]:.3f}). The old top vector is almost orthogonal to it (overlaps with the new "
            "top four: " + ", ".join(f"{o:.1e}" for o in c["overlap_old_top_with_new_top4"]) + "), and the new "
            "top four are close (" + ", ".join(f"{x:.3f}" for x in c["sigma_after_top4"]) + "), so power "
            "iteration from it needs tens of steps: relative error after k warm steps " +
            ", ".join(f"k={k}: {v:.1e}" for k, v in c["warm_steps_error"].items()) + ".",
            "* The sweep W0 + s * dW (same warm vector, one step) shows the switch at the crossing: while the old "
            "direction stays on top the one-step error stays small, once the update's direction overtakes it jumps. "
            "tests/test_warm_start.py builds the same crossing with a constant (DC) filter on a small conv. In "
            "training the error decays by one power step per optimizer step; the cure where it matters is more "
            "steps after large updates (warmup_iters, n_power_iter), or `estimator=\"gram\"`, which has no state to go stale.",
            "", "| s | sigma_1 | sigma_2 | overlap of the old top vector with the new | one warm step: rel. error |",
            "|---:|---:|---:|---:|---:|"]
    rows += [f"| {x['s']:.2f} | {x['sigma1']:.4f} | {x['sigma2']:.4f} | {x['overlap_old_top_with_new_top']:.1e} | "
             f"{x['error']:.1e} |" for x in c["sweep"]]
    return rows


def _relative_ci(interval: dict | None) -> str:
    """'+x.xx% [lo, hi]' of a JSON-able Interval of a relative change; '-' without one."""
    if not interval or interval.get("estimate") is None:
        return "-"
    return f"{interval['estimate']:+.2%} [{interval['low']:+.2%}, {interval['high']:+.2%}]"


def _pct_ci(cmp: dict) -> str:
    """'+x.xx% [lo, hi]' of a paired comparison relative to the reference mean."""
    d, m = cmp["difference"], cmp["mean_a"]
    return f"{cmp['relative']:+.2%} [{d['low'] / m:+.2%}, {d['high'] / m:+.2%}]"


def whitebox(r: dict) -> list[str]:
    setup = r["setup"]
    attacks = list(setup["curve_steps"])
    lines = [f"Curves: the first {setup['n_curve']} of the previous leaderboard's images (commit "
             f"`{setup['previous_commit']}`) per model; each attack rerun at each step count (a fresh run: the step "
             "sizes anneal over the run), against the published setting (last count; FMN and ALMA: the previous "
             "leaderboard's own distances; DDN: a 300-step run). Mean L2 change, paired, 95% bootstrap CI.", "",
             "![white-box convergence](whitebox_convergence.png)", ""]
    for a in attacks:
        steps = setup["curve_steps"][a]
        lines += [f"| {a}: model | " + " | ".join(f"{s} steps" for s in steps[:-1]) + f" | mean L2 at {steps[-1]} |",
                  "|---|" + "---:|" * len(steps)]
        for model, curves in r["curves"].items():
            pts = curves[a]
            lines.append(f"| `{model}` | " + " | ".join(_pct_ci(p["vs_longest"]) for p in pts[:-1])
                         + f" | {pts[-1]['l2_mean']:.4f} |")
        lines.append("")
    lines += [f"Ensemble: the current leaderboard (`{setup['current']}`) against the previous one on the images "
              "both attacked; per-sample best distance at the top budget, new - old, paired 95% bootstrap CI "
              "relative to the old mean; white-box passes (forward + backward) per image.", "",
              "| model | images | previous | current | mean L2 previous / current | change [95% CI] | CI half width "
              "| white-box passes per image previous / current |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for model, e in r["ensemble"].items():
        c = e["new_vs_old"]
        lines.append(f"| `{model}` | {e['n_shared']} | {e['previous_attacks']} | {e['current_attacks']} | "
                     f"{c['mean_a']:.4f} / {c['mean_b']:.4f} | {_pct_ci(c)} | {c['half_width_relative']:.2%} | "
                     f"{e['previous_white_box_passes']:.0f} / {e['current_white_box_passes']:.0f} |")
    short = {model: e["shorter"] for model, e in r["ensemble"].items() if "shorter" in e}
    if short:
        steps = ", ".join(f"{a} {n}" for a, n in next(iter(short.values()))["steps"].items())
        lines += ["", f"Shorter white-box attacks ({steps} steps: about a third of today's passes, what `make demo` "
                  "would need to run 2x faster than before): the current leaderboard's hard-label distances with the "
                  "short runs, per-sample best on the curve images, against the leaderboard's own best; paired "
                  "95% bootstrap CI relative to today's mean.", "",
                  "| model | images | mean L2 today / shorter | change [95% CI] | CI includes 0 |", "|---|---:|---:|---:|---|"]
        for model, e in short.items():
            c = e["short_vs_current"]
            lines.append(f"| `{model}` | {e['n']} | {c['mean_a']:.4f} / {c['mean_b']:.4f} | {_pct_ci(c)} | "
                         f"{'yes' if c['ci_includes_zero'] else 'no'} |")
    return lines


def main() -> None:
    parts = ["# Benchmarks", "",
             "Written by `python benchmarks/render_readme.py` from the `results_*.json` files the scripts wrote. "
             "These shared 2-core machines swing 2-7x in speed, so speed is reported as ratios measured within one "
             "run; absolute seconds are indicative only.", ""]
    for name, title, render in (("spectral", "Operator norms and the regularizer", spectral),
                                ("attack", "Batched decision-based attacks", attack),
                                ("eval_forward", "The evaluation forward: eager, channels_last, BatchNorm folded, torch.compile",
                                 eval_forward),
                                ("zoo_attacks", "Hard-label attacks on the zoo models: CGBA vs TA, G-TA, HSJA",
                                 zoo_attacks),
                                ("zoo_attacks_leaderboard", "CGBA vs TA in the published leaderboard", zoo_attacks),
                                ("recipe", "Accelerate recipe overhead", recipe),
                                 ("image_check", "Image folder check before training", image_check),
                                 ("gpu_check", "GPU check: ResNet-50 at 224 on one GPU", gpu_check),
                                 ("gram", "Gram-iteration bound vs exact FFT, power iteration and dense SVD", gram),
                                 ("whitebox", "White-box attacks: steps to convergence and the default ensemble",
                                  whitebox)):
        result = load(name)
        parts += [f"## {title}", "", f"Command: `{COMMANDS[name]}`", ""]
        parts += render(result) if result else ["Not measured yet: run the command above."]
        parts.append("")
    (HERE / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
