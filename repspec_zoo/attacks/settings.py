"""`AttackSettings`: the hyper-parameters every attack takes, in one frozen, validated object.

Setting or data. A setting is chosen once for a whole evaluation and holds for every batch and
every attack in it, the way foolbox 3 keeps an attack's hyper-parameters on the attack object:
the seed, the rows per model call, the iteration cap, the scale of the bisection threshold, the
pixel box and the progress bar. Data belongs to one call and is sized by its batch, so it stays
an argument: the model, the images ``x`` and labels ``y``, the query ``budget`` (an int or one
per sample, validated once by `HardLabelOracle`), the start pool ``starts`` and the per-sample
stream ids ``sample_ids``. A hyper-parameter of a single attack (G-TA's ``ratio``, CGBA's
``variant``, the white-box ``steps``) stays a keyword of that attack: it travels nowhere else.

Example::

    paper = AttackSettings(seed=0, max_iter=40)      # the rep-spectral paper's TA, T = 40
    res = run_attack("ta", model, x, y, 20_000, paper, starts=pool, sample_ids=index)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from .oracle import EVAL_BATCH_SIZE, check_batch_size, check_bounds

__all__ = ["AttackSettings"]


@dataclass(frozen=True)
class AttackSettings:
    """Settings shared by every attack of a run; validated (and normalized) on construction.

    ``theta_scale`` is the constant of HopSkipJump's bisection threshold (Chen, Jordan,
    Wainwright 2020: theta = d^{-3/2} for L2; their reference code scales it as
    theta = gamma / d^{3/2}, and so does the TA code): a bisection between x and an adversarial
    point stops when its bracket, in units of the blend weight, is below
    theta = theta_scale / d^{3/2}, and the query radius of the normal estimate is
    delta_t = sqrt(d) theta dist_{t-1} = (theta_scale / d) dist_{t-1}. It is named for what it
    scales, not after the reference code's ``gamma``, which is unrelated to the regularizer's
    gamma. See `boundary.default_theta_scale`.
    """

    seed: int = 0  # with the sample ids, seeds each sample's random stream (white-box: torch's RNG)
    batch_size: int = EVAL_BATCH_SIZE  # rows per model call (white-box: samples per loop call); changes no result
    max_iter: int | None = None  # hard-label iteration cap (the rep-spectral paper: 40); None: the budget ends a run
    theta_scale: float | None = None  # bisection threshold theta_scale / d^{3/2}; None: default_theta_scale(d)
    bounds: tuple[float, float] = (0.0, 1.0)  # (min, max) pixel values; every query and result lies inside
    progress: bool = False  # tqdm bar of queries (hard-label) or of samples (white-box)

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"seed must be an int in [0, 2**32) (numpy's generators take no other), got {self.seed!r}")
        max_iter = self.max_iter
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1):
            raise ValueError(f"max_iter must be an int >= 1 (0 iterations attack nothing: the distances would be the "
                             f"starting points') or None (no limit), got {max_iter!r}")
        scale = self.theta_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real) or not (scale > 0 and math.isfinite(scale))):
            raise ValueError(f"theta_scale must be a finite number > 0 (bisection threshold theta_scale / d^1.5; "
                             f"1 for MNIST/CIFAR-size inputs, 1000 for ImageNet-size) or None, got {scale!r}")
        # frozen: normalized values are written past the dataclass's __setattr__
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "batch_size", check_batch_size(self.batch_size))
        object.__setattr__(self, "max_iter", None if max_iter is None else int(max_iter))
        object.__setattr__(self, "theta_scale", None if scale is None else float(scale))
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        object.__setattr__(self, "progress", bool(self.progress))
