"""Experiment 1 (the paper's App. F.1, Figs. 3-4): the XOR toy problem, none / ll / rep x seeds.

    python -m experiments.xor_toy                 # 5 seeds, about a minute on one core

The 4 points x in {-1, +1}^2 (label: the signs differ), the zoo's ``slp`` with 2 inputs and 8 GELU
hidden units (``recipes/configs/xor_toy.yaml``: full-batch GD, lr 1.0, momentum 0.9, weight decay
1e-4, 15000 steps, penalty from step 10500, gamma 1e-4). Trained here in a plain full-batch loop
rather than through ``recipes/train.py`` because Fig. 4 needs the exact sigma_max of *both*
layers every few steps for every mode, and a recipe epoch of one 4-point step is all overhead.
The penalty is the library's :class:`~repspec_zoo.spectral.SpectralRegularizer` (power iteration).

Outputs in results/experiments/xor_toy/:
* results.json: per seed and mode the final sigma_max(W1), sigma_max(W2), train accuracy, the
  Tangent Attack distance of each of the 4 points (input-plane L2, box [-3, 3]^2) and the exact
  distance to the decision boundary read off a fine grid (an independent check of the attack);
* sigma_max.png: sigma_max of both layers during training, mean and range over seeds (Fig. 4);
* maps.png: decision regions and the volume element sqrt(det g), g = J^T J with J = d phi / d x
  the Jacobian of the hidden representation, over the input plane for seed 0 (Fig. 3);
* README.md: the table (mean ± std over seeds).
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
from tqdm.auto import tqdm

from .common import RESULTS, box_plot, sigma_max, table, write_json

POINTS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
LABELS = (POINTS[:, 0] * POINTS[:, 1] < 0).long()
BOX = (-3.0, 3.0)  # the attack's search box and the maps' extent, input-plane units
MODES = ("none", "ll", "rep")


def make_model(seed: int, hidden: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("slp", img_size=(1, 2), in_chans=1, hidden_dim=hidden, num_classes=2)


def train(mode: str, seed: int, steps: int, burn_in: int, gamma: float, hidden: int, record_every: int):
    """Full-batch GD on the 4 points; returns the model and sigma_max of (W1, W2) every ``record_every`` steps."""
    from repspec_zoo.spectral import attach_spectral

    model = make_model(seed, hidden)
    reg = attach_spectral(model, mode=mode, gamma=gamma) if mode != "none" else None
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-4)
    x = POINTS.view(4, 1, 1, 2)
    trace = []
    for step in range(steps):
        loss = F.cross_entropy(model(x), LABELS)
        if reg is not None:
            if step >= burn_in:
                loss = loss + reg.penalty()
            else:
                reg.step()  # keep the power iteration warm during burn-in, as the recipe does
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % record_every == 0 or step == steps - 1:
            trace.append((step + 1, sigma_max(model.fc1.weight), sigma_max(model.head.weight), loss.item()))
    if reg is not None:
        reg.remove()
    return model.eval(), trace


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


def volume_element(model, points: torch.Tensor) -> torch.Tensor:
    """sqrt(det(J^T J)) at each point, J = d phi(x) / d x (hidden x 2) the feature map's Jacobian.

    In float64: the trained features are nearly rank one, so det(J^T J) is a small difference of
    large products that float32 turns into visible noise."""
    model = copy.deepcopy(model).double()

    def phi(p):
        return model.forward_features(p.view(1, 1, 1, 2)).flatten()

    jac = torch.func.vmap(torch.func.jacrev(phi))(points.double())  # (N, hidden, 2)
    return torch.linalg.det(jac.transpose(1, 2) @ jac).clamp_min(0).sqrt()


def attack_distances(model, budget: int, seed: int) -> list[float]:
    from repspec_zoo.attacks import run_attack

    res = run_attack("ta", model, POINTS.view(4, 1, 1, 2), LABELS, budget=budget, seed=seed, bounds=BOX)
    return res.l2_at_budgets([budget])[:, 0].tolist()


def plot_sigma(traces: dict, path: Path, burn_in: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for layer, ax in zip((1, 2), axes):
        for mode in MODES:
            runs = np.array([[row[layer] for row in trace] for trace in traces[mode]])  # (seeds, points)
            steps = [row[0] for row in traces[mode][0]]
            line, = ax.plot(steps, runs.mean(0), label=mode)
            ax.fill_between(steps, runs.min(0), runs.max(0), color=line.get_color(), alpha=0.2)
        ax.axvline(burn_in, color="gray", ls=":", lw=1)
        ax.set_title(f"sigma_max(W{layer})" + (" (hidden layer)" if layer == 1 else " (readout)"), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(title="regularizer", fontsize=8)
    fig.suptitle("XOR: spectral norms during training (mean, min-max over seeds; dotted: penalty on)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_maps(models: dict, path: Path, resolution: int = 161) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis, gx, gy = grid(resolution)
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)
    vols = {mode: volume_element(model, plane).view(resolution, resolution).detach().numpy()
            for mode, model in models.items()}
    vmax = max(v.max() for v in vols.values())  # one color scale: the modes' volume elements compare directly
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
        bottom.set_title(f"{mode}: sqrt(det g) of the features", fontsize=9)
        fig.colorbar(im, ax=bottom, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.xor_toy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--burn-in", type=int, default=10500, help="steps before the penalty is switched on")
    parser.add_argument("--gamma", type=float, default=1e-4, help="penalty = gamma/2 * sum sigma_max^2")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--budget", type=int, default=2000, help="Tangent Attack queries per point")
    parser.add_argument("--out", type=Path, default=RESULTS / "xor_toy")
    args = parser.parse_args(argv)
    command = "python -m experiments.xor_toy " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    rows, traces, maps = [], {m: [] for m in MODES}, {}
    for seed in tqdm(args.seeds, desc="seeds"):
        for mode in MODES:
            model, trace = train(mode, seed, args.steps, args.burn_in, args.gamma, args.hidden,
                                 record_every=max(args.steps // 300, 1))
            with torch.no_grad():
                acc = float((model(POINTS.view(4, 1, 1, 2)).argmax(1) == LABELS).float().mean())
            ta = attack_distances(model, args.budget, seed)
            exact = boundary_distance(model).tolist()
            rows.append(dict(seed=seed, mode=mode, train_acc=acc, sigma_w1=trace[-1][1], sigma_w2=trace[-1][2],
                             final_loss=trace[-1][3], ta_l2=ta, grid_l2=exact,
                             ta_mean=float(np.mean(ta)), grid_mean=float(np.mean(exact)),
                             vol_at_points=volume_element(model, POINTS).tolist()))
            traces[mode].append(trace)
            if seed == args.seeds[0]:
                maps[mode] = model
    plot_sigma(traces, args.out / "sigma_max.png", args.burn_in)
    plot_maps(maps, args.out / "maps.png")
    box_plot({"TA distance per point": {m: [d for r in rows if r["mode"] == m for d in r["ta_l2"]] for m in MODES},
              "sigma_max(W1)": {m: [r["sigma_w1"] for r in rows if r["mode"] == m] for m in MODES}},
             args.out / "boxplots.png", "XOR toy, all seeds")
    text = table(rows, ["mode"], {"train_acc": "train acc", "sigma_w1": "sigma_max(W1)", "sigma_w2": "sigma_max(W2)",
                                  "ta_mean": f"mean TA L2 @{args.budget}", "grid_mean": "grid distance"}, digits=3)
    write_json(args.out / "results.json", dict(command=command.strip(), settings=vars(args) | {"out": str(args.out)},
                                                rows=rows, traces=traces))
    (args.out / "README.md").write_text(
        f"# Experiment 1: XOR toy problem\n\nWritten by `{command.strip()}`. {len(args.seeds)} seeds; distances in "
        f"input-plane L2 units (the points are 2 apart).\n\n{text}\n\n![sigma_max](sigma_max.png)\n\n"
        f"![maps](maps.png)\n\n![box plots](boxplots.png)\n")
    print(text)
    return dict(rows=rows, traces=traces)


if __name__ == "__main__":
    main()
