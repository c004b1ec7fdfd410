"""`repspec-zoo demo`: the main job as it stands.

Trains the small 28x28 ResNet on a Fashion-MNIST subset twice, for the same wall-clock
budget and the same batches: once plain, once with rep-spectral (gamma/2 * sum sigma^2 over
every conv, head excluded). Prints test accuracy and a per-layer sigma_max table, and writes
both to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data
from .io import atomic_write_text


def train_for(arch: str, train_x, train_y, seconds: float, gamma: float, batch_size: int, seed: int):
    """SGD (lr 0.05, momentum 0.9) on shuffled mini-batches until ``seconds`` have passed."""
    torch.manual_seed(seed)
    kwargs = dict(gamma=gamma) if arch.endswith("spectral") else {}
    model = timm.create_model(arch, num_classes=10, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start, steps = time.perf_counter(), 0
    bar = tqdm(desc=arch, unit="step", leave=False)
    model.train()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
        if hasattr(model, "spectral"):
            loss = loss + model.spectral.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model, steps


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def layer_sigmas(model, x) -> dict[str, float]:
    """Converged sigma_max of every conv/linear of the representation (rep mode, head excluded)."""
    from .spectral import SpectralRegularizer

    reg = SpectralRegularizer(model, gamma=0.0, mode="rep")
    model.eval()
    with torch.no_grad():
        model(x[:1])
    sigmas = reg.refresh(n_iter=100)
    reg.remove()
    return sigmas


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="repspec-zoo demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget per model")
    parser.add_argument("--gamma", type=float, default=1e-2, help="rep-spectral strength (paper convention)")
    parser.add_argument("--train-size", type=int, default=20000, help="Fashion-MNIST training subset")
    parser.add_argument("--test-size", type=int, default=5000, help="Fashion-MNIST test subset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo/demo.json"))
    args = parser.parse_args(argv)

    train_x, train_y = data.as_tensors(data.load_split("fashion_mnist", "train", limit=args.train_size, seed=args.seed))
    test_x, test_y = data.as_tensors(data.load_split("fashion_mnist", "test", limit=args.test_size, seed=args.seed))
    results = {}
    for arch, gamma in [("resnet_small", 0.0), ("resnet_small_repspectral", args.gamma)]:
        model, steps = train_for(arch, train_x, train_y, args.seconds, gamma, args.batch_size, args.seed)
        results[arch] = dict(gamma=gamma, steps=steps, clean_acc=accuracy(model, test_x, test_y),
                             sigma_max=layer_sigmas(model, test_x))

    names = list(results["resnet_small"]["sigma_max"])
    print(f"\nFashion-MNIST ({args.train_size} train / {args.test_size} test images, {args.seconds:.0f} s "
          f"of training each, batch {args.batch_size})")
    print(f"{'model':28s} {'gamma':>7s} {'steps':>6s} {'clean_acc':>9s} {'sum sigma^2':>12s}")
    for arch, r in results.items():
        print(f"{arch:28s} {r['gamma']:7.0e} {r['steps']:6d} {r['clean_acc']:9.4f} "
              f"{sum(s ** 2 for s in r['sigma_max'].values()):12.2f}")
    print(f"\n{'layer':24s} {'sigma_max plain':>16s} {'rep-spectral':>13s}")
    for name in names:
        print(f"{name:24s} {results['resnet_small']['sigma_max'][name]:16.3f} "
              f"{results['resnet_small_repspectral']['sigma_max'][name]:13.3f}")
    atomic_write_text(args.out, json.dumps(dict(settings=vars(args) | {"out": str(args.out)}, results=results),
                                           indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
