"""NormalizedModel: the one wrapper of a timm model for [0, 1] images (normalization inside, features(),
the fast evaluation forward)."""
from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from torch import nn

__all__ = ["MIN_COMPILED_ROWS", "NormalizedModel", "as_normalized"]

#: smaller batches are padded to this many rows for the compiled forward (one graph per input shape)
MIN_COMPILED_ROWS = 16


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for images ``x`` in [0, 1], (N, C, H, W).

    Every attack distance is then an L2 distance in [0, 1] pixel space, comparable across
    models with different normalizations (the rep-spectral authors reported CIFAR/ImageNet
    distances in normalized space; this wrapper is what avoids that).

    Args:
        model: classifier that expects normalized input.
        mean, std: per-channel statistics (C values each); when both are omitted they come
            from ``data_config`` or, failing that, from the timm pretrained cfg of ``model``
            (``timm.data.resolve_model_data_config``).
        data_config: a timm data config dict with ``mean`` and ``std``.

    Example::

        model = NormalizedModel(timm.create_model("resnet50", pretrained=True)).eval()
        logits = model(images_in_0_1)
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, data_config: dict | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then they come from "
                             "data_config or the model's timm pretrained cfg)")
        if mean is None:
            if data_config is None:
                from timm.data import resolve_model_data_config
                data_config = resolve_model_data_config(model)
            if "mean" not in data_config or "std" not in data_config:
                raise ValueError(f"data_config needs 'mean' and 'std', got keys "
                                 f"{sorted(data_config)}")
            mean, std = data_config["mean"], data_config["std"]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape or (std_t <= 0).any():
            raise ValueError(f"mean and std must have one value per channel and std > 0, got "
                             f"mean={mean_t.tolist()} std={std_t.tolist()}")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self.channels_last = False  # inputs go in channels_last (set by fast_eval for convnets)
        self._compiled = None  # torch.compile'd logits for calls without autograd; None: eager
        self._compiled_inputs: set[tuple] = set()  # (C, H, W, dtype, device) compiled so far
        self._folded = []  # what fast_eval's BatchNorm folding replaced (fold.fold_batchnorm)

    def fast_eval(self, compile: bool = False) -> "NormalizedModel":
        """Make the forward of evaluation the fastest correct one; returns ``self``.

        * every eval-mode BatchNorm that directly follows a convolution is folded into it
          (`fold.fold_batchnorm`, in place: the wrapped model is for evaluation from then on and
          ``train()`` refuses); the logits of two random inputs are compared before and after,
          and a fold that changes them beyond float rounding is undone with one printed line;
        * channels_last memory format for a net with 2-d convolutions (oneDNN's fast layout on
          CPU, tensor cores' on GPU), weights now and every input in `forward`;
        * ``compile``: calls without autograd (the attacks' oracle, accuracy, verification) run
          a ``torch.compile``'d forward under ``torch.inference_mode``, with the batch dimension
          dynamic, so it compiles once per model and input shape (C, H, W) whatever the batch
          size; how long that took is printed once. Calls with autograd (white-box attacks,
          Lemma-1, certified radii) stay eager. If compiling fails, one printed line says why
          and the model stays eager. Off by default: once BatchNorm is folded, the compiled
          forward of the bundled models is no faster on CPU (0.97-1.02x the folded rows/s on the
          small ResNet and the single-hidden-layer net, benchmarks/README.md) and costs seconds
          per model and compiler memory; on a GPU it may pay off (untested).

        Logits agree with the eager float32 forward to about 1e-5 (other summation orders), so
        only points within that of the decision boundary can change label.
        """
        self._fold_batchnorm()
        if any(isinstance(m, nn.Conv2d) for m in self.model.modules()):
            self.to(memory_format=torch.channels_last)
            self.channels_last = True
        self._compiled = None
        if compile:
            # inductor's CPU build looks for a CUDA toolkit and logs "No CUDA runtime is found" on
            # every compile where nvcc is installed without a GPU: not a problem of ours, so quiet it
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            try:
                self._compiled = torch.compile(self._logits)
            except Exception as err:  # noqa: BLE001  (any failure means: stay eager)
                self._fall_back(err)
        return self

    def _fold_batchnorm(self) -> None:
        """`fold.fold_batchnorm` on the wrapped model, checked on two random inputs of its timm
        ``input_size`` (when it has one): logits must agree to 1e-4 of their scale."""
        from .fold import fold_batchnorm, unfold_batchnorm

        if self.training:
            raise ValueError("fast_eval is for evaluation: call .eval() first")
        name = type(self.model).__name__
        size = (getattr(self.model, "pretrained_cfg", None) or {}).get("input_size")
        param = next(self.model.parameters(), None)
        inputs = None if size is None or param is None else torch.rand(
            2, *size, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
        try:
            with torch.no_grad():
                before = None if inputs is None else self._logits(inputs)
                self._folded = fold_batchnorm(self.model)
                if before is not None and self._folded:
                    after = self._logits(inputs)
                    if not torch.allclose(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max())):
                        unfold_batchnorm(self.model, self._folded)
                        self._folded = []
                        print(f"folding BatchNorm into the convolutions of {name} changed its logits by up to "
                              f"{float((after - before).abs().max()):.2g}; evaluating it unfolded", flush=True)
        except Exception as err:  # noqa: BLE001  (a model torch.fx cannot trace stays unfolded)
            if self._folded:  # the check itself failed (e.g. NaN logits): undo the folding, as the note says
                unfold_batchnorm(self.model, self._folded)
                self._folded = []
            print(f"BatchNorm not folded for {name} ({_first_line(err)})", flush=True)

    def train(self, mode: bool = True) -> "NormalizedModel":
        if mode and self._folded:
            raise RuntimeError("this model's BatchNorm was folded into its convolutions by fast_eval (evaluation "
                               "only); load the model again to train it")
        return super().train(mode)

    def _fall_back(self, err: Exception) -> None:
        print(f"torch.compile failed for {type(self.model).__name__} ({_first_line(err)}); evaluating it eagerly",
              flush=True)
        self._compiled = None

    def _compiled_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled forward. Batches below `MIN_COMPILED_ROWS` rows are padded with copies of
        their first row: tracing the batch dimension, torch.compile guards it from below (batch
        sizes 0 and 1 are specialized, CPU convolutions add batch >= 16), and a smaller batch
        would compile a second graph."""
        rows, given = len(x), x
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.inference_mode():  # the graph is traced for inference tensors: a copy made here is one
            if rows < MIN_COMPILED_ROWS:
                x = torch.cat([x, x[:1].expand(MIN_COMPILED_ROWS - rows, *x.shape[1:])])
            x = x.contiguous(memory_format=layout) if x.is_inference() else x.clone(memory_format=layout)
        torch._dynamo.mark_dynamic(x, 0)
        key = (*x.shape[1:], x.dtype, x.device)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self._compiled(x)
        except Exception as err:  # noqa: BLE001  (any failure means: stay eager)
            out = self._logits(given)  # an input the model cannot take raises its own error here
            self._fall_back(err)
            return out
        if key not in self._compiled_inputs:
            self._compiled_inputs.add(key)
            print(f"compiled the evaluation forward of {type(self.model).__name__} for "
                  f"{'x'.join(map(str, x.shape[1:]))} inputs in {time.perf_counter() - start:.1f} s", flush=True)
        return out[:rows]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel for images ``x`` in [0, 1], (N, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"NormalizedModel expects images (N, {self.mean.shape[1]}, H, W) "
                             f"in [0, 1], got shape {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None and len(x) and not torch.is_grad_enabled():
            return self._compiled_logits(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._logits(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features phi(x) (N, num_features) of images ``x`` in [0, 1]: timm's
        ``forward_head(forward_features(.), pre_logits=True)``, so logits = classifier(phi(x))
        (times ``logit_scale`` for a net that scales its logits)."""
        net = self.model
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ValueError(f"{type(net).__name__} has no forward_features/forward_head, so its pre-logit features "
                             "are unknown; features need a timm model")
        return net.forward_head(net.forward_features(self.normalize(x)), pre_logits=True)


def _first_line(err: Exception) -> str:
    """``Type: first line of the message`` (at most 200 characters), for one-line fallback notes."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def as_normalized(model: nn.Module, channels: int) -> NormalizedModel:
    """``model`` itself if it is a NormalizedModel, else a plain model seen as one with the identity
    normalization (mean 0, std 1 on ``channels`` channels): its input already is the [0, 1] image."""
    if isinstance(model, NormalizedModel):
        return model
    return NormalizedModel(model, mean=[0.0] * channels, std=[1.0] * channels)
