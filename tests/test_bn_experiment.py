"""experiments.bn_resnet_fmnist: its plan and the convwd calibration; bn_resnet_report: the seed-level decision rule."""
from __future__ import annotations

import math

import pytest

from experiments import bn_resnet_fmnist as exp
from experiments import bn_resnet_report as rep


def test_plan_branches_every_arm_from_the_seed_run_at_epoch_6(tmp_path):
    runs = exp.plan([0, 1], tmp_path, wd_lambda=3e-3, sweep=[5e-4], sweep_seeds=[0])
    assert set(runs) == {(s, a) for s in (0, 1) for a in exp.ARMS} | {(0, "repbn_g0.0005")}
    for (seed, arm), run in runs.items():
        assert f"seed={seed}" in run.overrides
        if arm == "none":
            assert run.branch_from is None
        else:
            assert run.branch_from == (runs[seed, "none"].output, 6) and run.after == [runs[seed, "none"]]
    assert "regularizer.wd_lambda=0.003" in runs[0, "convwd"].overrides
    assert "regularizer.mode=repbn" in runs[0, "repbn"].overrides
    assert "convwd" not in {a for _, a in exp.plan([0], tmp_path, None, [], [])}  # not before the calibration
    zoo = exp.plan([0, 1], tmp_path, 3e-3, [], [], zoo_seed=0)
    assert {k for k in zoo if k[1] in exp.ZOO_ARMS} == {(0, "ll"), (0, "ddsnr")}


def test_interpolate_log_hits_the_target_on_a_power_law():
    values = {wd: 100.0 * wd ** -0.5 for wd in (5e-4, 2e-3, 8e-3)}  # raw sum falls as a power of wd_lambda
    assert exp._interpolate_log(values, 100.0 * 1e-3 ** -0.5) == pytest.approx(1e-3)
    assert exp._interpolate_log(values, 100.0 * 2e-2 ** -0.5) == pytest.approx(2e-2)  # extrapolated


def _rows(diffs: list[float]) -> dict:
    rows = {}
    for seed, d in enumerate(diffs):
        base = [0.5 + 0.01 * i for i in range(6)]
        rows[exp.model_key(seed, "none")] = dict(seed=seed, arm="none", l2=base, l2_ta=base)
        rows[exp.model_key(seed, "repbn")] = dict(seed=seed, arm="repbn", l2=[v + d for v in base],
                                                  l2_ta=[v + d for v in base])
    return rows


def test_decision_rule_needs_every_seed_positive_and_the_t_interval_above_zero():
    accepted = rep.seed_level(_rows([0.05, 0.04, 0.06, 0.05, 0.03]), list(range(5)))
    h1 = next(c for c in accepted if (c["b"], c["a"]) == ("repbn", "none"))
    assert h1["per_seed_b"][0] - h1["per_seed_a"][0] == pytest.approx(0.05)
    assert h1["n_positive"] == 5 and h1["accepted"]
    one_negative = rep.seed_level(_rows([0.05, 0.04, 0.06, 0.05, -0.001]), list(range(5)))[0]
    assert one_negative["mean_difference"]["low"] > 0 and not one_negative["accepted"]


def test_per_seed_means_drop_images_unbroken_in_any_arm():
    rows = _rows([0.1])
    rows["seed0_none"]["l2"][0] = math.inf
    means = rep.per_seed_means(rows, [0], ["none", "repbn"])
    assert means["none"] == [pytest.approx(sum(0.5 + 0.01 * i for i in range(1, 6)) / 5)]


def test_a_shared_image_the_model_misclassifies_counts_as_distance_zero():
    assert exp._aligned([0.5, 0.7], [True, False, True]) == [0.5, 0.0, 0.7]
