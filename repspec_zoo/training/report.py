"""What a finished run leaves behind: final weights, a quick evaluation, a summary.

* ``model.safetensors``: plain timm state dict (regularizer buffers stripped), written atomically;
  loads with ``timm.create_model(arch, num_classes=..., checkpoint_path=...)``.
* ``eval.json``: :func:`quick_eval` (clean accuracy on the test split).
* ``run.json``: model name, base arch, regularizer settings and their convention, dataset,
  epochs, final metrics, command line, wall time, number of processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import safetensors.torch
import torch
from accelerate.utils import gather_object
from torch import nn

from .. import data
from ..models.normalize import NormalizedModel
from ..io import atomic_write_bytes, atomic_write_text
from ..models.registry import zoo_model_name
from ..runs import EVAL_FILE
from .config import TrainConfig
from .loaders import recipe_split, toy_spec
from .model import plain_state_dict

__all__ = ["save_weights", "quick_eval", "regularizer_summary", "run_summary", "unsynced_tensors", "summary_table"]


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the plain timm state dict of ``model`` (no ``spectral.*`` keys) as safetensors, atomically."""
    payload = safetensors.torch.save(plain_state_dict(model), metadata={"format": "pt"})
    return atomic_write_bytes(path, payload)


def quick_eval(model: nn.Module, cfg: TrainConfig, run_dir: str | os.PathLike) -> dict:
    """Quick evaluation of the final model -> ``RUN_DIR/eval.json``; returns what it wrote.

    Clean accuracy (fraction 0..1) on the test split (``dataset.test_limit`` images) and, unless
    ``eval.attack`` is 'none' or ``eval.n`` is 0, the attack on ``eval.n`` correctly classified
    test images at budget ``eval.budget``: an ``EvalResult`` (L2 in [0,1] pixel space, the
    normalization inside ``NormalizedModel``). ``repspec-zoo eval`` runs the full benchmark.
    Runs on the calling process only.
    """
    test_set = recipe_split(cfg, model, "test")
    device = next(model.parameters()).device
    return write_quick_eval(NormalizedModel(model).to(device).eval(), test_set, cfg, run_dir, _model_name(cfg))


def write_quick_eval(classifier: nn.Module, test_set, cfg: TrainConfig, run_dir: str | os.PathLike,
                     model_name: str, **settings) -> dict:
    """Evaluate ``classifier`` (images in [0, 1]) as the recipes' quick evaluation -> ``RUN_DIR/eval.json``
    (``settings`` added to the EvalResult's); returns what it wrote."""
    from ..evaluation.evaluate import evaluate

    # a toy problem's inputs are points, not images in the [0,1] box the attacks search
    attack = None if cfg.eval.attack == "none" or cfg.eval.n == 0 or toy_spec(cfg) else cfg.eval.attack
    result = evaluate(classifier, test_set, model_name=model_name, dataset_name=cfg.dataset.name,
                      n=max(cfg.eval.n, 1), budgets=[cfg.eval.budget], attack=attack, seed=cfg.seed,
                      batch_size=cfg.micro_batch_size, lemma1=False, progress=False)
    result.settings.update(settings)
    atomic_write_text(Path(run_dir) / EVAL_FILE, result.to_json())
    return json.loads(result.to_json())


def regularizer_summary(cfg: TrainConfig) -> dict:
    """The regularizer settings of a run, with the strength convention spelled out (the registry's summary)."""
    return cfg.regularizer.spec.summary(cfg.regularizer)


def _model_name(cfg: TrainConfig) -> str:
    """The zoo name for (arch, regularizer, dataset) if the zoo has one and the run read the dataset's own data
    (no --data-dir), else a descriptive name."""
    try:
        if cfg.dataset.data_dir is None:
            return zoo_model_name(cfg.model, cfg.regularizer.mode, cfg.dataset.name, cfg.ssl.method)
    except ValueError:
        pass
    return cfg.model if cfg.regularizer.spec.baseline else f"{cfg.model}+{cfg.regularizer.mode}"


def _class_names(cfg: TrainConfig) -> list[str] | None:
    """The class names of the data the run trained on (a --data-dir folder's own), None where unknown."""
    if toy_spec(cfg):
        return None
    names = data.dataset_info(cfg.dataset.name, cfg.dataset.data_dir).class_names
    return list(names) if names else None


def run_summary(cfg: TrainConfig, records: list[dict], evaluation: dict, command: list[str], wall_time_s: float,
                num_processes: int, unsynced: list[str]) -> dict:
    """The content of ``run.json``; ``class_names`` and ``data_dir`` say what the run trained on (export names the
    run by them, hub/provenance.py)."""
    final = records[-1] if records else {}
    return {
        "model_name": _model_name(cfg), "arch": cfg.model, "num_classes": cfg.num_classes, "init": cfg.init,
        "regularizer": regularizer_summary(cfg), "dataset": cfg.dataset.name, "data_dir": cfg.dataset.data_dir,
        "class_names": _class_names(cfg), "epochs": cfg.epochs,
        "steps": final.get("step", 0), "batch_size": cfg.batch_size, "final": final, "eval": evaluation,
        "command": shlex.join(command), "num_processes": num_processes,
        "mixed_precision": cfg.mixed_precision, "wall_time_s": wall_time_s,
        "train_time_s": sum(r["time_s"] for r in records), "ranks_in_sync": not unsynced,
        **({"unsynced_tensors": unsynced} if unsynced else {}),
    }


def unsynced_tensors(accelerator, model: nn.Module) -> list[str]:
    """Names of state-dict tensors (weights and regularizer buffers) that differ between processes.

    Every process hashes its tensors; BN running statistics count too (DDP broadcasts them from
    rank 0 at every forward, and the last forward of a run is the test evaluation).
    """
    if accelerator.num_processes == 1:
        return []
    digests = {name: hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
               for name, t in model.state_dict().items()}
    everyone = gather_object([digests])
    return sorted(name for name in digests if any(d.get(name) != everyone[0][name] for d in everyone[1:]))


def summary_table(records: list[dict], evaluation: dict, max_rows: int = 12) -> str:
    """A short text table of the epochs (evenly thinned to ``max_rows``) and the final evaluation."""
    if not records:
        return f"no epochs trained; clean_acc {evaluation['clean_acc']:.4f} on {evaluation['n_test']} test images"
    stride = -(-len(records) // max_rows)
    shown = records[::stride] + ([records[-1]] if (len(records) - 1) % stride else [])
    lines = [f"{'epoch':>6} {'step':>8} {'train_loss':>10} {'train_acc':>9} {'test_acc':>8} {'penalty':>9} "
             f"{'lr(head)':>9} {'time_s':>7}"]
    for r in shown:
        lines.append(f"{r['epoch']:>6} {r['step']:>8} {r['train_loss']:>10.4f} {r['train_acc']:>9.4f} "
                     f"{r['test_acc']:>8.4f} {r['penalty']:>9.2e} {r['lr'].get('head', 0.0):>9.2e} {r['time_s']:>7.1f}")
    sigmas = records[-1]["sigma_max"]
    if sigmas:
        lines.append(f"sigma_max over {len(sigmas)} layers: max {max(sigmas.values()):.3f}, "
                     f"sum of squares {sum(s * s for s in sigmas.values()):.2f}")
    lines.append(f"final: clean_acc {evaluation['clean_acc']:.4f} on {evaluation['n_test']} test images")
    return "\n".join(lines)
