"""Experiment 1 (the paper's App. F.1, Figs. 3-4): the XOR toy problem at the authors' settings.

    python -m experiments.xor_toy     # widths 3, 8 x gammas 1e-4, 2e-3 x 10 seeds: 23 min on 2 shared cores

The 4 points x in {-1, +1}^2 (label: the signs differ) and the authors' network and training
(Pehlevan-Group/rep-spectral: src/train_reg.py, src/model/architectures/MLP.py, commands/train_xor.sh):
the zoo's ``slp`` with 2 inputs, GELU hidden units, every weight and bias drawn from N(0, 0.01^2)
and the logits scaled by 1/sqrt(width); full-batch SGD, lr 1.0, momentum 0.9, weight decay 1e-4,
15000 steps, the penalty from step 10500. Their seeds 400, 500, ... draw the same initial weights
here (same torch generator, same order of draws), so their unregularized seed-400 width-8 run is
reproduced exactly (sigma_max(W1) = 6.3896). Arms, all branched from the same unregularized
network at step 10500 (optimizer state included):
* none; ll (both layers); rep (the hidden layer; their ``eig-ub-pure``); rep_act (rep plus the
  data term mean_x max_j gelu'(z_j)^2 of their ``eig-ub``, which the XOR scripts ran);
* gamma 1e-4 (the paper's text) and 2e-3 (= 2 x the scripts' lam 1e-3), penalty gamma/2 * sum;
* hidden width 3 (the scripts) and 8 (the paper's text).
Power iteration: 10 steps per training step (their --max-update 10), 100 at the branch.
Trained in a plain full-batch loop rather than through ``recipes/train.py``: a recipe epoch of one
4-point step is all overhead, and the branches need the exact sigma_max of both layers.

Outputs in results/experiments/xor_toy/:
* results.json: per width, seed and arm the final sigma_max(W1), sigma_max(W2), train accuracy, the
  exact distance of each point to the decision boundary (a fine grid, spacing 0.005) and the
  paper-mode Tangent Attack distance (40 iterations, box [-3, 3]^2);
* README.md: the table (mean ± std over seeds), seeds whose margin grew, paired comparisons;
* sigma_max.png: sigma_max(W1) during training per arm (mean over seeds); maps.png: decision regions
  and the top singular value of J = d phi / dx, the hidden representation's Jacobian (the volume
  element s_1 s_2 of the paper's Fig. 3 is ~1e-8 here: the features are nearly rank one), for the
  first width and seed.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

import repspec_zoo  # noqa: F401  (registers the zoo archs with timm)

from .common import RESULTS, paired_rows, paired_table, parallel_map, sigma_max, table, write_json

POINTS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
LABELS = (POINTS[:, 0] * POINTS[:, 1] < 0).long()
BOX = (-3.0, 3.0)  # the attack's search box and the maps' extent, input-plane units
MODES = ("ll", "rep", "rep_act")  # regularized arms; "none" is the baseline
SEEDS = tuple(range(400, 1400, 100))  # the authors' seed convention (400, 500, ...)


def make_model(seed: int, hidden: int) -> torch.nn.Module:
    """The authors' XOR net: N(0, 0.01^2) init, logits / sqrt(width); same draws as their seed."""
    torch.manual_seed(seed)
    return timm.create_model("slp", img_size=(1, 2), in_chans=1, hidden_dim=hidden, num_classes=2,
                             init_std=0.01, scale_logits=True)


def _optimizer(model: torch.nn.Module, state: dict | None = None) -> torch.optim.SGD:
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-4)
    if state is not None:
        opt.load_state_dict(state)
    return opt


def train_steps(model, opt, steps: int, reg=None, record_every: int = 50, offset: int = 0) -> list[tuple]:
    """Full-batch steps (penalty added when ``reg`` is given); (step, sigma W1, sigma W2, loss) every few."""
    x = POINTS.view(4, 1, 1, 2)
    trace = []
    for step in range(offset, offset + steps):
        loss = F.cross_entropy(model(x), LABELS)
        if reg is not None:
            loss = loss + reg.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % record_every == 0:
            trace.append((step + 1, sigma_max(model.fc1.weight), sigma_max(model.head.weight), loss.item()))
    return trace


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axis = torch.linspace(*BOX, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    return axis, gx, gy


@torch.no_grad()
def boundary_distance(model, resolution: int = 1201) -> torch.Tensor:
    """Distance from each of the 4 points to the nearest grid point labelled otherwise (exact to the
    grid spacing, 6/1200 = 0.005 by default): an attack-free reference for the Tangent Attack."""
    _, gx, gy = grid(resolution)
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)
    labels = model(plane.view(-1, 1, 1, 2)).argmax(1)
    out = []
    for point, label in zip(POINTS, LABELS):
        other = plane[labels != label]
        out.append(float((other - point).norm(dim=1).min()) if len(other) else float("inf"))
    return torch.tensor(out)


def jacobian_singular_values(model, points: torch.Tensor) -> torch.Tensor:
    """Both singular values (N, 2), largest first, of J = d phi(x) / d x (hidden x 2), the feature map's
    Jacobian, at each point; in float64."""
    model = copy.deepcopy(model).double()

    def phi(p):
        return model.forward_features(p.view(1, 1, 1, 2)).flatten()

    jac = torch.func.vmap(torch.func.jacrev(phi))(points.double())  # (N, hidden, 2)
    return torch.linalg.svdvals(jac)


def volume_element(model, points: torch.Tensor) -> torch.Tensor:
    """sqrt(det(J^T J)) = s_1 s_2 at each point. With the authors' small init the trained features are
    nearly rank one, so this is ~1e-8 and noise; the maps show s_1, the stretch rep-spectral bounds
    (s_1 <= max|gelu'| sigma_max(W1))."""
    return jacobian_singular_values(model, points).prod(1)


def attack_distances(model, budget: int, seed: int) -> list[float]:
    """Paper-mode Tangent Attack (40 iterations) distance of each of the 4 points, input-plane L2."""
    from repspec_zoo.attacks import AttackSettings, run_attack
    from repspec_zoo.evaluation.evaluate import PAPER

    settings = AttackSettings(seed=seed, bounds=BOX, max_iter=PAPER["max_iter"])
    res = run_attack("ta", model, POINTS.view(4, 1, 1, 2), LABELS, budget, settings)
    return res.l2_at_budgets([budget])[:, 0].tolist()


def measure(model, budget: int, seed: int) -> dict:
    """Accuracy, layer norms, exact (grid) and attack distances of the 4 points."""
    model.eval()
    with torch.no_grad():
        acc = float((model(POINTS.view(4, 1, 1, 2)).argmax(1) == LABELS).float().mean())
    grid_l2 = boundary_distance(model).tolist()
    return dict(train_acc=acc, sigma_w1=sigma_max(model.fc1.weight), sigma_w2=sigma_max(model.head.weight),
                grid_l2=grid_l2, margin=min(grid_l2), ta_l2=attack_distances(model, budget, seed),
                vol_at_points=volume_element(model, POINTS).tolist())


def run_seed(job: tuple) -> dict:
    """Worker: the unregularized run of one (width, seed) and every arm branched from its step ``burn_in``."""
    from repspec_zoo.spectral import attach_spectral

    width, seed, steps, burn_in, gammas, budget = job
    model = make_model(seed, width)
    opt = _optimizer(model)
    base_trace = train_steps(model, opt, burn_in)
    arms = [("none", None)] + [(mode, gamma) for gamma in gammas for mode in MODES]
    rows, traces, states = [], {}, {}
    for mode, gamma in arms:
        branch = copy.deepcopy(model)
        branch_opt = _optimizer(branch, copy.deepcopy(opt.state_dict()))  # momentum continues
        reg = None if mode == "none" else attach_spectral(
            branch, mode=mode.removesuffix("_act"), gamma=gamma, activation_term=mode.endswith("_act"),
            n_power_iter=10, warmup_iters=100)
        trace = train_steps(branch, branch_opt, steps - burn_in, reg, offset=burn_in)
        if reg is not None:
            reg.remove()
        rows.append(dict(width=width, seed=seed, mode=mode, gamma=gamma, final_loss=trace[-1][3],
                         **measure(branch, budget, seed)))
        traces[f"{mode}/{gamma}"] = [row[:3] for row in trace]
        states[f"{mode}/{gamma}"] = branch.state_dict()
    return dict(rows=rows, base_trace=[row[:3] for row in base_trace], traces=traces, states=states)


def plot_sigma(outputs: list[dict], path: Path, burn_in: int, widths, gammas) -> None:
    """sigma_max(W1) during training: one panel per (width, gamma), one line per arm (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(widths), len(gammas), figsize=(4.5 * len(gammas), 3.4 * len(widths)), squeeze=False)
    for i, width in enumerate(widths):
        mine = [o for o in outputs if o["rows"][0]["width"] == width]
        for j, gamma in enumerate(gammas):
            ax = axes[i, j]
            for arm in ["none/None", *(f"{m}/{gamma}" for m in MODES)]:
                curves = np.array([[r[1] for r in o["base_trace"] + o["traces"][arm]] for o in mine])
                steps = [r[0] for r in mine[0]["base_trace"] + mine[0]["traces"][arm]]
                ax.plot(steps, curves.mean(0), label=arm.split("/")[0])
            ax.axvline(burn_in, color="gray", ls=":", lw=1)
            ax.set_title(f"width {width}, gamma {gamma:g}: sigma_max(W1)", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"XOR, authors' init: hidden-layer norm, mean over {len(mine)} seeds (dotted: penalty on)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_maps(models: dict, path: Path, resolution: int = 161) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis, gx, gy = grid(resolution)
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)
    vols = {mode: jacobian_singular_values(model, plane)[:, 0].view(resolution, resolution).detach().numpy()
            for mode, model in models.items()}
    vmax = max(v.max() for v in vols.values())  # one color scale: the arms' stretches compare directly
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models), 6.6))
    for col, (mode, model) in enumerate(models.items()):
        with torch.no_grad():
            logits = model(plane.view(-1, 1, 1, 2))
        margin = (logits[:, 1] - logits[:, 0]).view(resolution, resolution).numpy()
        vol = vols[mode]
        extent = [*BOX, *BOX]
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(margin > 0, origin="lower", extent=extent, cmap="coolwarm", alpha=0.6)
        top.contour(axis, axis, margin, levels=[0], colors="k", linewidths=1)
        top.scatter(POINTS[:, 0], POINTS[:, 1], c=LABELS, cmap="coolwarm", edgecolors="k", s=50)
        top.set_title(f"{mode}: decision regions", fontsize=9)
        im = bottom.imshow(vol, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax)
        bottom.contour(axis, axis, margin, levels=[0], colors="w", linewidths=1)
        bottom.scatter(POINTS[:, 0], POINTS[:, 1], c="w", s=12)
        bottom.set_title(f"{mode}: top singular value of d phi / dx", fontsize=9)
        fig.colorbar(im, ax=bottom, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(saved: dict, out: Path) -> str:
    """README.md from results.json: the table, margin gains per seed, paired comparisons."""
    rows, settings = saved["rows"], saved["settings"]
    for r in rows:
        r["ta_mean"], r["grid_mean"] = float(np.mean(r["ta_l2"])), float(np.mean(r["grid_l2"]))
        r["arm"] = r["mode"] if r["gamma"] is None else f"{r['mode']} (gamma {r['gamma']:g})"
    text = table(rows, ["width", "arm"], {"train_acc": "train acc", "sigma_w1": "sigma_max(W1)",
                                          "sigma_w2": "sigma_max(W2)", "margin": "margin (grid, min of 4)",
                                          "grid_mean": "grid distance (mean of 4)",
                                          "ta_mean": f"paper TA L2 (mean of 4) @{settings['budget']}"}, digits=3)
    base = {(r["width"], r["seed"]): r for r in rows if r["mode"] == "none"}
    gains = ["| width | arm | seeds whose margin grew by > 0.01 | seeds whose margin shrank by > 0.01 |",
             "|---|---|---|---|"]
    for width in settings["widths"]:
        for arm in sorted({r["arm"] for r in rows if r["mode"] != "none" and r["width"] == width}):
            mine = [r for r in rows if r["arm"] == arm and r["width"] == width]
            up = sum(r["margin"] > base[width, r["seed"]]["margin"] + 0.01 for r in mine)
            down = sum(r["margin"] < base[width, r["seed"]]["margin"] - 0.01 for r in mine)
            gains.append(f"| {width} | {arm} | {up} of {len(mine)} | {down} of {len(mine)} |")
    distances = {}  # per arm: each seed's mean grid distance of the 4 points (the seeds are the replicates)
    for r in sorted(rows, key=lambda r: r["seed"]):
        gammas = settings["gammas"] if r["mode"] == "none" else [r["gamma"]]
        for gamma in gammas:  # the baseline is the comparison of every gamma
            distances.setdefault((r["mode"], r["width"], f"{gamma:g}"), []).append(r["grid_mean"])
    paired = paired_rows(distances, "none", 0)
    saved["paired_grid_distance"] = paired
    check = next((r for r in rows if (r["width"], r["seed"], r["mode"]) == (8, 400, "none")), None)
    check_line = (f"Reproduction check: the authors' unregularized width-8 seed-400 run ends at sigma_max(W1) = 6.3896; "
                  f"here {check['sigma_w1']:.4f}.\n\n" if check else "")
    readme = (f"# Experiment 1: XOR toy problem, the authors' settings\n\nWritten by `{saved['command']}`. "
              f"{len(settings['seeds'])} seeds ({', '.join(map(str, settings['seeds']))}); distances in input-plane L2 "
              f"units (the points are 2 apart, so no margin exceeds 1); arms branched from the same unregularized "
              f"network at step {settings['burn_in']}.\n\n{check_line}{text}\n\n## Margin per seed\n\n"
              + "\n".join(gains) +
              f"\n\n## Paired comparison against none: mean grid distance of the 4 points, one pair per seed "
              f"({len(settings['seeds'])} seeds)\n\n{paired_table(paired, ['width', 'gamma'])}\n\n"
              f"![sigma_max](sigma_max.png)\n\n![maps](maps.png)\n")
    (out / "README.md").write_text(readme)
    return readme


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.xor_toy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--widths", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1e-4, 2e-3],
                        help="penalty = gamma/2 * sum sigma_max^2 (the scripts' lam = gamma/2)")
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--burn-in", type=int, default=10500, help="steps before the penalty is switched on")
    parser.add_argument("--budget", type=int, default=20000, help="Tangent Attack query cap per point")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--out", type=Path, default=RESULTS / "xor_toy")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md from results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        from .common import load_results

        print(report(load_results(args.out), args.out))
        return {}
    command = ("python -m experiments.xor_toy " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(width, seed, args.steps, args.burn_in, args.gammas, args.budget)
            for width in args.widths for seed in args.seeds]
    outputs = parallel_map(run_seed, jobs, args.workers, "width x seed")
    rows = [row for o in outputs for row in o["rows"]]
    plot_sigma(outputs, args.out / "sigma_max.png", args.burn_in, args.widths, args.gammas)
    first = outputs[0]  # the first width and seed: decision regions of the strongest gamma's arms
    maps = {}
    for arm in ["none/None", *(f"{m}/{max(args.gammas)}" for m in MODES)]:
        model = make_model(args.seeds[0], args.widths[0])
        model.load_state_dict(first["states"][arm])
        maps[arm.replace("/None", "")] = model.eval()
    plot_maps(maps, args.out / "maps.png")
    settings = dict(seeds=args.seeds, widths=args.widths, gammas=args.gammas, steps=args.steps, burn_in=args.burn_in,
                    budget=args.budget)
    saved = dict(command=command, settings=settings, rows=rows,
                 traces={f"{o['rows'][0]['width']}/{o['rows'][0]['seed']}": dict(base=o["base_trace"], **o["traces"])
                         for o in outputs})
    readme = report(saved, args.out)
    write_json(args.out / "results.json", saved)
    print(readme)
    return saved


if __name__ == "__main__":
    main()
