"""The Accelerate training loop: epochs of accumulated SGD steps with the regularizer's schedule.

Per optimizer step: ``loss = cross_entropy + penalty``. What the regularizer does on a step (the
batch it trains on, the penalty, a step outside the optimizer) is asked of its
:class:`~repspec_zoo.regularizers.steps.RegularizerStep` from the registry
(:mod:`repspec_zoo.regularizers.registry`); it is active from epoch ``burn_in_epochs`` on.

The run directory gets ``checkpoints/`` (see :mod:`.checkpoint`), ``metrics.jsonl`` (one line per
epoch) and ``tensorboard/``. A killed run restarted with the same command continues from its
newest checkpoint, mid-epoch included, and ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import accelerate.optimizer
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from tqdm.auto import tqdm

from ..io import atomic_write_text
from ..runs import CHECKPOINTS_DIR, METRICS_FILE
from .checkpoint import Checkpoints
from .config import TrainConfig, config_to_dict, flatten_config
from .model import lr_factor

__all__ = ["make_accelerator", "TrainState", "MetricsLog", "Trainer"]

_SUMS = ("loss_sum", "correct", "penalty_sum")  # running on the device; images seen are counted on the host

# accelerate 1.15's AcceleratedOptimizer.step() asks `is_lomo_available()` twice per call, an uncached
# importlib.find_spec + metadata lookup (~0.5 ms per optimizer step, 10-25% of a small model's step).
# Whether a package is installed does not change during a run, so caching the answer changes nothing else.
accelerate.optimizer.is_lomo_available = functools.cache(accelerate.optimizer.is_lomo_available)


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """Accelerator for the run: devices, mixed precision, gradient accumulation, torch.compile (``cfg.compile``),
    RUN_DIR/tensorboard.

    Each global micro-batch is split across processes (``split_batches``) and shuffled by a
    sampler seeded with ``cfg.seed + epoch``, so a run sees the same batches on any number of
    processes.
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
        dynamo_backend="inductor" if cfg.compile else "no",  # prepare() compiles the model
        log_with="tensorboard", project_dir=str(run_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=cfg.seed))
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
               for k, v in flatten_config(config_to_dict(cfg)).items()}
    accelerator.init_trackers("tensorboard", config=hparams)
    return accelerator


@dataclasses.dataclass
class TrainState:
    """Where training stands; saved in every checkpoint (``train_state.json``)."""

    epoch: int = 0  # current epoch, 0-based (= epochs completed)
    batches_done: int = 0  # micro-batches of this epoch already trained
    global_step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # this epoch so far, summed over processes: cross-entropy * images
    correct: float = 0.0  # ... correctly classified training images
    seen: float = 0.0  # ... training images
    penalty_sum: float = 0.0  # ... penalty added to the loss * images
    time_s: float = 0.0  # ... seconds of training steps (checkpoints and evaluation excluded)

    def next_epoch(self) -> None:
        self.epoch, self.batches_done = self.epoch + 1, 0
        self.loss_sum = self.correct = self.seen = self.penalty_sum = self.time_s = 0.0


class MetricsLog:
    """``metrics.jsonl``: one JSON line per finished epoch, appended by the main process.

    Fields: ``epoch`` (1-based), ``step`` (optimizer steps so far), ``train_loss`` (mean
    cross-entropy, nats), ``train_acc`` and ``test_acc`` (fractions; the test split limited to
    ``dataset.test_limit`` images), ``penalty`` (mean penalty added to the loss; 0 during burn-in),
    ``penalty_on``, ``lr`` ({param group: lr}), ``sigma_max`` ({layer: latest power-iteration
    estimate}; empty without rep/ll), ``time_s`` (seconds of training steps).

    A line is appended before the checkpoint that covers its epoch; on resume, lines of epochs
    the restored checkpoint does not cover are dropped (they will be trained again).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                continue
        return records

    def truncate(self, epochs_done: int) -> None:
        kept = [r for r in self.records() if r["epoch"] <= epochs_done]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class Trainer:
    """Runs a prepared model/optimizer/loaders for ``cfg.epochs`` epochs with checkpoints and logs.

    Args:
        accelerator: the run's Accelerator (trackers initialized).
        cfg: the resolved recipe config.
        net: the prepared :class:`~repspec_zoo.training.model.TrainingModule`.
        optimizer, train_loader, test_loader: prepared by ``accelerator.prepare``.
        run_dir: where checkpoints/ and metrics.jsonl live.
    """

    def __init__(self, accelerator, cfg: TrainConfig, net, optimizer, train_loader, test_loader, run_dir: Path):
        self.accelerator, self.cfg, self.net, self.optimizer = accelerator, cfg, net, optimizer
        self.train_loader, self.test_loader = train_loader, test_loader
        self.plain = accelerator.unwrap_model(net)  # the TrainingModule: jvp/vjp and PGD need it, not the DDP wrapper
        self.model = self.plain.model  # the timm model
        self.spectral = getattr(self.model, "spectral", None)
        self.regularizer = cfg.regularizer.spec.step(cfg.regularizer, self.model)
        self.checkpoints = Checkpoints(Path(run_dir) / CHECKPOINTS_DIR, cfg.checkpoint.keep)
        self.metrics = MetricsLog(Path(run_dir) / METRICS_FILE)
        self.state = TrainState()
        self.steps_per_epoch = -(-len(train_loader) // cfg.grad_accum_steps)  # optimizer steps
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=accelerator.device)
        self._seen = 0

    # ------------------------------------------------------------------------- resume / save
    def resume(self) -> Path | None:
        """Restore the newest readable checkpoint of the run (``Checkpoints.newest_good``), if any; returns its path."""
        if self.accelerator.is_main_process:
            self.checkpoints.discard_partial()
        self.accelerator.wait_for_everyone()
        latest = self.checkpoints.newest_good(self.accelerator)
        if latest is not None:
            self.state = TrainState(**self.checkpoints.load(self.accelerator, latest))
        if self.accelerator.is_main_process and self.metrics.path.exists():
            self.metrics.truncate(self.state.epoch)
        return latest

    def _commit(self) -> None:
        """Add every process's running sums to the train state (one all-reduce)."""
        local = torch.cat([self._sums, self._sums.new_tensor([self._seen])])
        *totals, seen = self.accelerator.reduce(local, reduction="sum").tolist()
        for name, value in zip(_SUMS, totals):
            setattr(self.state, name, getattr(self.state, name) + value)
        self.state.seen += seen
        self._sums.zero_()
        self._seen = 0

    def _save(self) -> None:
        self.checkpoints.save(self.accelerator, self.state.global_step, dataclasses.asdict(self.state))

    # ------------------------------------------------------------------------- one step
    def _train_step(self, x: torch.Tensor, y: torch.Tensor, penalty_on: bool) -> torch.Tensor:
        """One micro-batch: the regularizer's batch, :meth:`_loss`, its penalty, backward and an (accumulated)
        optimizer step; returns (loss * images, correct, penalty * images), without a host sync."""
        with self.accelerator.accumulate(self.net):
            x = self.regularizer.batch(self.plain, x, y, penalty_on)
            loss, correct, logits, features = self._loss(x, y)
            penalty = self.regularizer.penalty(self.plain, x, logits, features, penalty_on)
            self.accelerator.backward(loss if penalty is None else loss + penalty)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        n = len(y)
        return torch.stack([loss.detach() * n, correct, loss.new_zeros(()) if penalty is None else penalty.detach() * n])

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """The step's forward: (mean cross-entropy, correctly classified images, logits, features or None)."""
        out = self.net(x)
        logits, features = out if isinstance(out, tuple) else (out, None)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), logits, features

    # ------------------------------------------------------------------------- epochs
    def _set_lr(self, epoch: int) -> None:
        factor = lr_factor(self.cfg.optim, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _epoch_loader(self, epoch: int):
        self.train_loader.set_epoch(epoch)  # the sampler's shuffling seed
        if hasattr(self.train_loader.dataset, "set_epoch"):  # the augmentation seed (EpochSeededDataset);
            self.train_loader.dataset.set_epoch(epoch)  # accelerate skips it when a sharded sampler takes the epoch
        if not self.state.batches_done:
            return self.train_loader
        loader = self.accelerator.skip_first_batches(self.train_loader, self.state.batches_done)
        loader.set_epoch(epoch)
        return loader

    def _train_epoch(self, epoch: int, bar: tqdm) -> None:
        penalty_on = epoch >= self.cfg.regularizer.burn_in_epochs
        every_steps, log_every = self.cfg.checkpoint.every_steps, self.cfg.log_every_steps
        self.net.train()
        start = time.perf_counter()
        for x, y in self._epoch_loader(epoch):
            step_sums = self._train_step(x, y, penalty_on)
            self._sums += step_sums
            self._seen += len(y)
            self.state.batches_done += 1
            if not self.accelerator.sync_gradients:
                continue
            self.state.global_step += 1
            self.regularizer.after_optimizer_step(self.state.global_step, penalty_on)
            bar.update()
            if self.state.global_step % log_every == 0:
                loss, penalty = (step_sums[[0, 2]] / len(y)).tolist()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                self.accelerator.log({"train/loss": loss, "train/penalty": penalty}, step=self.state.global_step)
            if every_steps and self.state.global_step % every_steps == 0 and self.state.batches_done < len(self.train_loader):
                self._commit()  # waits for the device, so the time below covers every step so far
                self.state.time_s += time.perf_counter() - start
                self._save()
                start = time.perf_counter()
        self._commit()
        self.state.time_s += time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self) -> float:
        """Accuracy (fraction) on the test loader, over all processes."""
        self.net.eval()
        correct = seen = 0
        for x, y in self.test_loader:
            out = self.net(x)
            logits = out[0] if isinstance(out, tuple) else out
            predictions, labels = self.accelerator.gather_for_metrics((logits.argmax(1), y))
            correct += int((predictions == labels).sum())
            seen += len(labels)
        self.net.train()
        return correct / max(seen, 1)

    def _epoch_record(self, epoch: int, test_acc: float) -> dict:
        s = self.state
        return {
            "epoch": epoch + 1, "step": s.global_step,
            "train_loss": s.loss_sum / s.seen, "train_acc": s.correct / s.seen, "test_acc": test_acc,
            "penalty": s.penalty_sum / s.seen, "penalty_on": epoch >= self.cfg.regularizer.burn_in_epochs,
            "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
            "sigma_max": self.spectral.sigmas() if self.spectral is not None else {},
            "time_s": s.time_s,
        }

    def _log_epoch(self, record: dict) -> None:
        scalars = {f"epoch/{k}": record[k] for k in ("train_loss", "train_acc", "test_acc", "penalty", "time_s")}
        scalars.update({f"lr/{name}": lr for name, lr in record["lr"].items()})
        scalars.update({f"sigma_max/{name}": sigma for name, sigma in record["sigma_max"].items()})
        self.accelerator.log(scalars, step=record["step"])

    def fit(self) -> list[dict]:
        """Train from the current state to ``cfg.epochs``; returns all epoch records of the run."""
        cfg = self.cfg
        bar = tqdm(total=cfg.epochs * self.steps_per_epoch, initial=self.state.global_step, unit="step",
                   desc="train", dynamic_ncols=True, disable=not self.accelerator.is_local_main_process)
        for epoch in range(self.state.epoch, cfg.epochs):
            self._set_lr(epoch)
            self._train_epoch(epoch, bar)
            record = self._epoch_record(epoch, self.evaluate())
            if self.accelerator.is_main_process:
                self.metrics.append(record)
            self._log_epoch(record)
            self.state.next_epoch()
            if self.state.epoch % cfg.checkpoint.every_epochs == 0 or self.state.epoch == cfg.epochs:
                self._save()
        bar.close()
        self.accelerator.wait_for_everyone()
        return self.metrics.records()
