"""Statistics of per-sample minimal adversarial L2 distances: CIs, paired comparison, robust accuracy.

Input everywhere: a 1-D array (numpy, list or torch) of best-found L2 distances, in [0,1] pixel
space, one per *attacked* sample (samples the model classified correctly). ``+inf`` marks a sample
no attack broke: it still counts, as a distance larger than every finite one (in medians,
quantiles, robust accuracy, ranks). NaN, negative values and empty input raise ValueError.
Attacks only find adversarials, so every distance is an *upper bound* on the true minimal one.

Every number comes with its sample count and a ``confidence`` (default 95 %) interval:

- proportions (success rate, robust fraction): exact Clopper-Pearson (``scipy.stats.binomtest``);
- mean distance: ``scipy.stats.bootstrap`` BCa, percentile when BCa degenerates (all values equal);
- median distance: percentile bootstrap (inf-safe: the CI high may be inf);
- two models on the same images: paired bootstrap of the mean difference plus a Wilcoxon
  signed-rank test (:func:`paired_comparison`).

Results are plain dicts holding :class:`Interval` objects; :func:`to_jsonable` turns one into
JSON-able data (inf -> "inf", nan -> None).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Interval", "STANDARD_L2_EPS", "standard_eps", "distance_summary", "paired_comparison",
           "robust_accuracy", "robust_accuracy_curve", "seed_level_comparison", "to_jsonable", "from_jsonable"]


def _scipy_stats():
    """scipy.stats, imported on first use: ``import repspec_zoo`` (every timm user of the zoo's
    models) would otherwise pay about 0.7 s and 60 MB for it."""
    from scipy import stats

    return stats


# Standard L2 radii in [0,1] pixel space, by dataset registry name.
STANDARD_L2_EPS: dict[str, float] = {
    "cifar10": 0.5,  # RobustBench L2 track (Croce et al. 2021), eps = 0.5
    # ImageNet: L2 eps = 3.0 as in the madrylab robust ResNet-50s (robustness library); RobustBench
    # has no ImageNet L2 track (RobustBench's GitHub issue #113).
    "imagenet": 3.0,
    # (Fashion-)MNIST has no benchmark L2 radius; the MNIST L2 literature uses 1.5 (Schott et al. 2019, ABS)
    # or 2.0 (Rony et al. 2019, DDN). OUR CHOICE: 1.5, the smaller one, for the same 28x28x1 [0,1] geometry,
    # since Fashion-MNIST classes lie closer together than MNIST digits (models are typically less robust).
    "mnist": 1.5,
    "fashion_mnist": 1.5,
    # sklearn digits (8x8x1): OUR CHOICE, the MNIST radius scaled by sqrt(64 / 784) = 8/28, i.e. the same
    # per-pixel RMS perturbation (1.5 / 28 = 0.054 per pixel): 1.5 * 8 / 28 = 0.43.
    "digits": 0.43,
}
_EPS_ALIASES = {"imagenet1k": "imagenet", "imagenet-1k": "imagenet", "in1k": "imagenet", "cifar-10": "cifar10",
                "fmnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist"}

_QUANTILES = (0.10, 0.25, 0.75, 0.90)
_BOOTSTRAP_BATCH = 1000  # resamples per vectorized batch: memory ~ 8 bytes * batch * n


def standard_eps(dataset_name: str) -> float | None:
    """The standard L2 radius of :data:`STANDARD_L2_EPS` for a dataset name (aliases such as
    ``imagenet1k`` or ``fmnist`` accepted, case-insensitive), or None when there is none."""
    key = str(dataset_name).strip().lower()
    return STANDARD_L2_EPS.get(_EPS_ALIASES.get(key, key))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its ``confidence`` interval ``[low, high]`` and how it was made."""

    estimate: float  # the statistic on the observed sample
    low: float  # interval bounds; nan when it could not be computed (e.g. n < 2)
    high: float  # may be inf (e.g. a median CI when many samples are unbroken)
    confidence: float  # coverage level, e.g. 0.95
    method: str  # 'clopper-pearson', 'bootstrap-bca', 'bootstrap-percentile', ...

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside ``[low, high]`` (False if the interval is undefined)."""
        return bool(self.low > value or self.high < value)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict: +-inf as the strings "inf"/"-inf", nan as None."""
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _json_float(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def to_jsonable(obj: Any) -> Any:
    """Recursively convert a result of this module (dicts, lists, :class:`Interval`, numpy scalars)
    into JSON-able data: Interval -> :meth:`Interval.as_dict`, inf -> "inf", nan -> None."""
    if isinstance(obj, Interval):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _json_float(float(obj))
    return obj


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable` for numbers: the strings "inf" / "-inf" back to floats (nan stays None)."""
    if isinstance(obj, str) and obj in ("inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- helpers

def _distances(x: Any, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of distances; ValueError naming ``name`` if it is not one."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-sample L2 distances, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: pass at least one per-sample L2 distance")
    if np.isnan(arr).any():
        raise ValueError(f"{name} holds {int(np.isnan(arr).sum())} NaN value(s): pass +inf for samples the "
                         "attacks never broke and drop samples that were not attacked")
    if (arr < 0).any():
        raise ValueError(f"{name} holds negative values (min {arr.min()}): L2 distances are >= 0")
    return arr


def _confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def _quantile(x: np.ndarray, q: float, axis: int = -1) -> np.ndarray:
    """Linear-interpolation quantile (numpy's default, so q=0.5 is the usual median) that treats
    +inf as larger than every finite value: interpolating towards inf gives inf, never nan."""
    s = np.sort(x, axis=axis)
    h = (s.shape[axis] - 1) * q
    lo, hi, t = math.floor(h), math.ceil(h), h - math.floor(h)
    v_lo, v_hi = np.take(s, lo, axis=axis), np.take(s, hi, axis=axis)
    if t == 0:
        return v_lo
    with np.errstate(invalid="ignore"):
        return np.where(v_lo == v_hi, v_lo, v_lo + t * (v_hi - v_lo))


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return _quantile(x, 0.5, axis=axis)


def _proportion(k: int, n: int, confidence: float) -> Interval:
    ci = _scipy_stats().binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return Interval(k / n, float(ci.low), float(ci.high), confidence, "clopper-pearson")


def _bootstrap(data: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int, seed: int,
               paired: bool = False) -> Interval:
    """Bootstrap CI of ``statistic`` (vectorized, ``axis`` keyword): BCa, or percentile when BCa
    degenerates (nan bounds, e.g. all values equal). Undefined (nan) when n < 2."""
    estimate = float(statistic(*data, axis=-1))
    if data[0].size < 2:
        return Interval(estimate, math.nan, math.nan, confidence, "none (n < 2)")
    kwargs = dict(n_resamples=n_resamples, confidence_level=confidence, vectorized=True, paired=paired,
                  batch=_BOOTSTRAP_BATCH)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # DegenerateDataWarning / RuntimeWarning: we check the bounds
            warnings.simplefilter("ignore")
            ci = _scipy_stats().bootstrap(data, statistic, method=method, rng=np.random.default_rng(seed),
                               **kwargs).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return Interval(estimate, float(ci.low), float(ci.high), confidence, f"bootstrap-{method.lower()}")


def _median_interval(x: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Interval:
    """Percentile-bootstrap CI of the median over all samples, inf included: scipy draws the
    resamples, the percentiles of the bootstrap medians use the inf-safe :func:`_quantile`."""
    estimate = float(_median(x))
    if x.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence, "none (n < 2)")
    with warnings.catch_warnings():  # scipy's own percentile step may see inf - inf; we recompute it
        warnings.simplefilter("ignore")
        res = _scipy_stats().bootstrap((x,), _median, n_resamples=n_resamples, confidence_level=confidence,
                            vectorized=True, method="percentile", rng=np.random.default_rng(seed),
                            batch=_BOOTSTRAP_BATCH)
    alpha = 1 - confidence
    dist = res.bootstrap_distribution
    low, high = float(_quantile(dist, alpha / 2)), float(_quantile(dist, 1 - alpha / 2))
    return Interval(estimate, low, high, confidence, "bootstrap-percentile")


# ----------------------------------------------------------------------------------- one model

def distance_summary(l2: Any, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> dict[str, Any]:
    """Summary of per-sample best-found L2 distances (``+inf`` = never broken) of one model.

    Keys (n = all attacked samples, k = those with a finite distance):

    - ``n_samples`` (n), ``n_success`` (k), ``confidence``;
    - ``success_rate``: Interval, k / n with an exact Clopper-Pearson CI (inf counts as failure);
    - ``l2_mean``: Interval or None (k = 0): mean over the k *successful* samples only, with a
      bootstrap BCa CI (percentile when BCa degenerates; bounds nan when k < 2);
    - ``l2_median``: Interval, median over *all* n samples, inf ranked above every finite value
      (so it is inf when >= half the samples are unbroken: an even n averages the two middle
      values), with a percentile-bootstrap CI whose high may be inf;
    - ``l2_quantiles``: ``{"q10", "q25", "q75", "q90"}`` floats over all n samples (inf-safe
      linear interpolation, numpy's default definition).

    Distances are L2 in [0,1] pixel space; ``seed`` makes the bootstrap deterministic.
    """
    x = _distances(l2, "l2")
    confidence = _confidence(confidence)
    finite = x[np.isfinite(x)]
    n, k = int(x.size), int(finite.size)
    mean = _bootstrap((finite,), np.mean, confidence, n_resamples, seed) if k else None
    return {
        "n_samples": n,
        "n_success": k,
        "confidence": confidence,
        "success_rate": _proportion(k, n, confidence),
        "l2_mean": mean,
        "l2_median": _median_interval(x, confidence, n_resamples, seed),
        "l2_quantiles": {f"q{round(q * 100)}": float(_quantile(x, q)) for q in _QUANTILES},
    }


# ---------------------------------------------------------------------------------- two models

def _ratio_minus_one(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(b, axis=axis) / np.mean(a, axis=axis) - 1


def _signed_ranks_input(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d = b - a over pairs with at least one finite distance; inf maps to +-M, M = 2 max|d_finite| + 1."""
    keep = np.isfinite(a) | np.isfinite(b)
    a, b = a[keep], b[keep]
    both = np.isfinite(a) & np.isfinite(b)
    d = np.empty(a.size)
    d[both] = b[both] - a[both]
    big = 2 * float(np.abs(d[both]).max(initial=0.0)) + 1
    d[np.isinf(b)] = big  # only a broken: b > a
    d[np.isinf(a)] = -big  # only b broken: a > b
    return d


def paired_comparison(a: Any, b: Any, confidence: float = 0.95, n_resamples: int = 9999,
                      seed: int = 0) -> dict[str, Any]:
    """Compare two models attacked on the SAME images: ``a`` = baseline, ``b`` = other, aligned.

    d = b - a per image (positive: b needs larger perturbations, i.e. b is more robust).

    Keys:

    - counts: ``n_pairs``, ``n_both_finite``, ``n_only_a_broken`` (a finite, b inf),
      ``n_only_b_broken`` (b finite, a inf), ``n_neither_broken`` (both inf); ``confidence``;
    - ``mean_a``, ``mean_b``: floats (None if no pair is finite), means over the both-finite pairs;
    - ``mean_difference``: Interval or None, mean of d over the both-finite pairs, bootstrap
      (BCa, percentile fallback) of d, i.e. pairs resampled together;
    - ``relative_difference``: Interval or None, mean(b) / mean(a) - 1 over the both-finite pairs,
      paired bootstrap (``scipy.stats.bootstrap(..., paired=True)``) of the ratio of means;
    - ``wilcoxon``: ``{"statistic", "p_value", "n_used"}``, two-sided Wilcoxon signed-rank test
      (``zero_method='wilcox'``: zero differences dropped) over every pair with at least one
      finite distance. Rank mapping: an unbroken side counts as larger than every finite value, so
      d = +M when only a was broken and -M when only b was, M = 2 max|d over both-finite| + 1 >
      every finite |d|; those pairs get the largest ranks (tied among themselves). Pairs where
      both are inf are ties and dropped. ``statistic``/``p_value`` None when no nonzero d is left;
    - ``beyond_noise``: bool, True iff the ``mean_difference`` CI excludes 0 AND the Wilcoxon
      p < 1 - confidence (0.05 by default);
    - ``direction``: "b > a", "b < a" (sign of the mean difference) or None when not beyond noise;
    - ``verdict``: one plain sentence stating the above with the numbers.
    """
    a, b = _distances(a, "a"), _distances(b, "b")
    if a.size != b.size:
        raise ValueError(f"a and b must be aligned per image (same length), got {a.size} and {b.size}")
    confidence = _confidence(confidence)
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    af, bf = a[both], b[both]
    out: dict[str, Any] = {
        "n_pairs": int(a.size), "n_both_finite": int(both.sum()), "n_only_a_broken": int((fa & ~fb).sum()),
        "n_only_b_broken": int((~fa & fb).sum()), "n_neither_broken": int((~fa & ~fb).sum()),
        "confidence": confidence,
        "mean_a": float(af.mean()) if af.size else None, "mean_b": float(bf.mean()) if bf.size else None,
        "mean_difference": None, "relative_difference": None,
    }
    if af.size:
        out["mean_difference"] = _bootstrap((bf - af,), np.mean, confidence, n_resamples, seed)
        if af.mean() > 0:
            out["relative_difference"] = _bootstrap((af, bf), _ratio_minus_one, confidence, n_resamples, seed,
                                                    paired=True)

    d = _signed_ranks_input(a, b)
    n_used = int(np.count_nonzero(d))
    statistic = p_value = None
    if n_used:
        res = _scipy_stats().wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    out["wilcoxon"] = {"statistic": statistic, "p_value": p_value, "n_used": n_used}

    diff = out["mean_difference"]
    alpha = 1 - confidence
    beyond = bool(diff is not None and diff.excludes(0.0) and p_value is not None and p_value < alpha)
    out["beyond_noise"] = beyond
    out["direction"] = ("b > a" if diff.estimate > 0 else "b < a") if beyond else None
    p_txt = "n/a" if p_value is None else f"{p_value:.3g}"
    ci_txt = ("no both-finite pairs" if diff is None else
              f"{confidence:.0%} CI of mean(b - a) [{diff.low:.4g}, {diff.high:.4g}]")
    if beyond:
        out["verdict"] = f"{out['direction']} beyond noise ({ci_txt} excludes 0; Wilcoxon p = {p_txt})"
    else:
        out["verdict"] = f"no difference beyond noise ({ci_txt}; Wilcoxon p = {p_txt})"
    return out


def seed_level_comparison(a: Any, b: Any, confidence: float = 0.95) -> dict[str, Any]:
    """Compare two training methods across seeds: ``a[i]``, ``b[i]`` = one number per seed (e.g. the
    mean distance over the shared images), paired by seed (b branched from the same run as a).

    The seed is the unit of replication of a training method; :func:`paired_comparison` resamples
    images of ONE pair of trained networks and says nothing about another seed.

    Keys: ``n_seeds``; ``differences`` (b - a per seed); ``mean_difference``: Interval, the mean of
    d with a Student-t CI (``n - 1`` degrees of freedom; nan bounds for one seed);
    ``relative_difference``: mean(b) / mean(a) - 1 (no CI); ``n_positive`` / ``n_negative`` /
    ``n_zero``: the sign count; ``sign_test_p_one_sided``: P(at least ``n_positive`` of the nonzero
    signs positive | no effect) = binomial(n_nonzero, 1/2) upper tail (5 of 5 gives 0.031);
    ``sign_test_p_two_sided``; ``ci_excludes_zero``; ``direction``: "b > a" / "b < a" by the mean.
    No verdict: an experiment states its decision rule (from these numbers) before it runs.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be 1-D, one number per seed, aligned by seed; got shapes {a.shape}, {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-seed numbers must be finite (a mean over the broken images, not +inf)")
    confidence = _confidence(confidence)
    st = _scipy_stats()
    d = b - a
    n = int(d.size)
    mean = float(d.mean())
    if n > 1:
        half = float(st.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        interval = Interval(mean, mean - half, mean + half, confidence, "student-t over seeds")
    else:
        interval = Interval(mean, math.nan, math.nan, confidence, "student-t over seeds")
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    nonzero = pos + neg
    p_one = float(st.binomtest(pos, nonzero, 0.5, alternative="greater").pvalue) if nonzero else 1.0
    p_two = float(st.binomtest(pos, nonzero, 0.5).pvalue) if nonzero else 1.0
    return {"n_seeds": n, "differences": d.tolist(), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "mean_difference": interval, "relative_difference": float(b.mean() / a.mean() - 1) if a.mean() else None,
            "n_positive": pos, "n_negative": neg, "n_zero": n - nonzero,
            "sign_test_p_one_sided": p_one, "sign_test_p_two_sided": p_two,
            "ci_excludes_zero": interval.excludes(0.0),
            "direction": "b > a" if mean > 0 else ("b < a" if mean < 0 else None)}


# ----------------------------------------------------------------------------- robust accuracy

def robust_accuracy(l2: Any, eps: float, clean_acc: float | None = None, n_test: int | None = None,
                    confidence: float = 0.95) -> dict[str, Any]:
    """Robust accuracy at L2 radius ``eps`` (in [0,1] pixel space) from per-sample distances.

    A sample is robust at eps iff its best-found distance is > eps (inf: robust at every eps).
    Attacks only upper-bound minimal distances, so every number here is an UPPER bound on the
    true robust accuracy. Keys:

    - ``eps``, ``confidence``, ``n_samples`` (attacked = correctly classified samples), ``n_robust``;
    - ``robust_fraction``: Interval, n_robust / n_samples with an exact Clopper-Pearson CI;
    - ``clean_acc``, ``n_test``: echoed (None when not given);
    - ``robust_accuracy_upper``: Interval or None (no ``clean_acc``): test-set robust accuracy
      bound = clean_acc * robust_fraction. CI: with ``n_test`` None, clean_acc is taken as exact
      and the CI is clean_acc * the robust_fraction CI (method 'clean_acc-fixed x clopper-pearson');
      with ``n_test`` (the test-set size clean_acc was measured on) both factors get a
      Clopper-Pearson CI at level 1 - (1 - confidence)/2 and the bounds multiply (Bonferroni:
      joint coverage >= confidence; method 'bonferroni clopper-pearson product').
    """
    x = _distances(l2, "l2")
    confidence = _confidence(confidence)
    eps = float(eps)
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"eps must be a finite number >= 0 (an L2 radius in [0,1] pixel space), got {eps}")
    if clean_acc is not None and not 0 <= clean_acc <= 1:
        raise ValueError(f"clean_acc must be a fraction in [0, 1], got {clean_acc}")
    if n_test is not None and (clean_acc is None or int(n_test) < 1):
        raise ValueError(f"n_test (got {n_test}) needs clean_acc and must be a positive test-set size")
    n, k = int(x.size), int((x > eps).sum())
    fraction = _proportion(k, n, confidence)
    upper = None
    if clean_acc is not None:
        estimate = float(clean_acc) * fraction.estimate
        if n_test is None:
            upper = Interval(estimate, clean_acc * fraction.low, clean_acc * fraction.high, confidence,
                             "clean_acc-fixed x clopper-pearson")
        else:
            half = 1 - (1 - confidence) / 2
            clean = _proportion(round(clean_acc * int(n_test)), int(n_test), half)
            frac = _proportion(k, n, half)
            upper = Interval(estimate, clean.low * frac.low, clean.high * frac.high, confidence,
                             "bonferroni clopper-pearson product")
    return {"eps": eps, "confidence": confidence, "n_samples": n, "n_robust": k, "robust_fraction": fraction,
            "clean_acc": None if clean_acc is None else float(clean_acc),
            "n_test": None if n_test is None else int(n_test), "robust_accuracy_upper": upper}


def robust_accuracy_curve(l2: Any, eps_grid: Sequence[float], clean_acc: float | None = None,
                          n_test: int | None = None, confidence: float = 0.95) -> list[dict[str, Any]]:
    """:func:`robust_accuracy` at each eps of ``eps_grid`` (same order): non-increasing in eps,
    since the robust set {distance > eps} shrinks as eps grows. Not PGD-based: for the PGD curve
    see :func:`repspec_zoo.attacks.pgd.robust_accuracy_curve`."""
    x = _distances(l2, "l2")
    return [robust_accuracy(x, eps, clean_acc, n_test, confidence) for eps in eps_grid]


def format_interval(part: Mapping | None, digits: int = 4) -> str:
    """'0.7120 [0.6500, 0.7680]' from a JSON-able `repspec_zoo.evaluation.stats.Interval` (inf arrives as the
    string 'inf'); '-' when there is none, 'n/a' for a bound too few samples could give."""
    if not part or part.get("estimate") is None:
        return "-"

    def num(v):
        return "n/a" if v is None else v if isinstance(v, str) else f"{v:.{digits}f}"
    return f"{num(part['estimate'])} [{num(part['low'])}, {num(part['high'])}]"
