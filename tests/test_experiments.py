"""The experiment drivers (experiments/): shared helpers, the XOR toy end to end, the logistic head refit."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import timm
import torch

import repspec_zoo  # noqa: F401
from experiments import common, slp_fmnist, xor_toy


def test_table_reports_mean_and_sample_std_per_group():
    rows = [dict(mode="a", x=1.0), dict(mode="a", x=2.0), dict(mode="a", x=4.0), dict(mode="b", x=3.0)]
    lines = common.table(rows, ["mode"], {"x": "x"}, digits=3).splitlines()
    assert lines[2] == f"| a | 3 | {statistics.fmean([1, 2, 4]):.3f} ± {statistics.stdev([1, 2, 4]):.3f} |"
    assert lines[3] == "| b | 1 | 3.000 ± 0.000 |"


def _synthetic_results(rng, seeds=(0, 1, 2, 3), heads=("h1", "h2"), n=30):
    """{(arm, head, seed): per-image distances}: the same n images per (head, seed), a few unbroken (+inf)."""
    results = {}
    for head in heads:
        for seed in seeds:
            base = rng.uniform(0.5, 1.5, n)
            for arm, shift in (("none", 0.0), ("rep", 0.05), ("ll", -0.02)):
                d = base + shift + rng.normal(0, 0.1, n)
                d[rng.choice(n, 2, replace=False)] = np.inf
                results[arm, head, seed] = d.tolist()
    return results


def test_seed_level_rows_match_an_independent_t_interval_and_sign_test():
    from scipy import stats as st

    results = _synthetic_results(np.random.default_rng(0))
    rows = common.seed_level_rows(results, "none", 0, 2)
    assert sorted((r["arm"], tuple(r["group"])) for r in rows) == [(a, (h,)) for a in ("ll", "rep") for h in ("h1", "h2")]
    for r in rows:
        head = r["group"][0]
        assert r["seeds"] == [0, 1, 2, 3] and r["n_seeds"] == 4
        a_means, b_means = [], []
        for seed in r["seeds"]:
            a, b = np.array(results["none", head, seed]), np.array(results[r["arm"], head, seed])
            ok = np.isfinite(a) & np.isfinite(b)
            a_means.append(a[ok].mean())
            b_means.append(b[ok].mean())
        np.testing.assert_allclose(r["per_seed_a"], a_means)
        np.testing.assert_allclose(r["per_seed_b"], b_means)
        d = np.array(b_means) - np.array(a_means)
        ci = st.ttest_rel(b_means, a_means).confidence_interval(0.95)
        assert r["mean_difference"]["estimate"] == pytest.approx(d.mean())
        assert (r["mean_difference"]["low"], r["mean_difference"]["high"]) == pytest.approx((ci.low, ci.high))
        assert r["relative_difference"] == pytest.approx(np.mean(b_means) / np.mean(a_means) - 1)
        assert (r["n_positive"], r["n_negative"]) == (int((d > 0).sum()), int((d < 0).sum()))
        assert r["sign_test_p_one_sided"] == pytest.approx(st.binomtest(int((d > 0).sum()), 4, alternative="greater").pvalue)
    rep = next(r for r in rows if r["arm"] == "rep" and r["group"] == ["h1"])
    assert rep["n_positive"] == 4 and rep["sign_test_p_one_sided"] == pytest.approx(1 / 16)


def test_seed_level_rows_pair_only_the_seeds_both_arms_have_and_reject_unequal_images():
    results = {("none", 0): [1.0, 2.0], ("none", 1): [1.0, float("inf")], ("none", 2): [3.0, 3.0],
               ("rep", 0): [1.5, 2.5], ("rep", 1): [2.0, 9.0]}
    (row,) = common.seed_level_rows(results, "none", 0, 1)
    assert row["group"] == [] and row["seeds"] == [0, 1]
    assert row["per_seed_a"] == [1.5, 1.0] and row["per_seed_b"] == [2.0, 2.0]  # seed 1: image 2 is unbroken in a
    assert row["differences"] == [0.5, 1.0]
    with pytest.raises(ValueError, match="same images"):
        common.seed_level_rows({("none", 0): [1.0, 2.0], ("rep", 0): [1.0]}, "none", 0, 1)


def test_seed_table_shows_per_seed_differences_the_t_interval_and_the_sign_test():
    rows = common.seed_level_rows(_synthetic_results(np.random.default_rng(1), heads=("h1",)), "none", 0, 2)
    lines = common.seed_table(rows, ["head"], baseline="none").splitlines()
    assert lines[0].startswith("| arm vs none | head | seeds |") and len(lines) == 2 + len(rows)
    rep = next(r for r in rows if r["arm"] == "rep")
    cells = [c.strip() for c in lines[2 + rows.index(rep)].strip("|").split("|")]
    d = rep["mean_difference"]
    assert cells[:3] == ["rep", "h1", "0, 1, 2, 3"]
    assert cells[5] == ", ".join(f"{v:+.3f}" for v in rep["differences"])
    assert cells[6] == f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    assert cells[8:] == [f"{rep['n_positive']} / {rep['n_negative']}", f"{rep['sign_test_p_one_sided']:.3g}"]


def test_paired_rows_compare_one_network_pair_each_and_pool_nothing():
    from repspec_zoo.evaluation import stats

    results = _synthetic_results(np.random.default_rng(2), seeds=(0, 1), heads=("h1",), n=20)
    rows = common.paired_rows(results, "none", 0)
    assert sorted((r["arm"], *r["group"]) for r in rows) == [(a, "h1", s) for a in ("ll", "rep") for s in (0, 1)]
    row = next(r for r in rows if r["arm"] == "rep" and r["group"] == ["h1", 1])
    expected = stats.paired_comparison(results["none", "h1", 1], results["rep", "h1", 1])
    assert row["n_pairs"] == expected["n_pairs"] == 20
    assert row["mean_difference"]["estimate"] == pytest.approx(expected["mean_difference"].estimate)


def test_checkpoint_at_epoch_finds_the_end_of_that_epoch(tmp_path):
    for step, epoch, done in ((10, 1, 0), (15, 1, 5), (20, 2, 0)):
        folder = tmp_path / "checkpoints" / f"step_{step:07d}"
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text(json.dumps(dict(epoch=epoch, batches_done=done)))
    assert common.checkpoint_at_epoch(tmp_path, 1).name == "step_0000010"
    assert common.checkpoint_at_epoch(tmp_path, 2).name == "step_0000020"
    with pytest.raises(FileNotFoundError, match="no checkpoint at the end of epoch 3"):
        common.checkpoint_at_epoch(tmp_path, 3)


def test_run_all_respects_dependencies_and_the_worker_limit(tmp_path, monkeypatch):
    import threading
    import time

    active, peak, order, lock = [0], [0], [], threading.Lock()

    def fake_execute(run):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            assert all(dep.done for dep in run.after), f"{run.output.name} started before its dependencies"
        time.sleep(0.05)
        run.output.mkdir(parents=True)
        (run.output / "run.json").write_text("{}")
        with lock:
            active[0] -= 1
            order.append(run.output.name)
        return 0.05

    monkeypatch.setattr(common, "_execute", fake_execute)
    roots = [common.PlannedRun("c", tmp_path / f"root{i}") for i in range(3)]
    children = [common.PlannedRun("c", tmp_path / f"child{i}", after=[roots[i]]) for i in range(3)]
    common.run_all([*children, *roots], workers=2)
    assert peak[0] == 2 and sorted(order) == sorted(r.output.name for r in [*roots, *children])
    for i in range(3):
        assert order.index(f"root{i}") < order.index(f"child{i}")
    common.run_all([*roots, *children], workers=2)  # everything done: nothing runs again
    assert len(order) == 6


def test_slp_plan_branches_ll_and_rep_from_the_configured_burn_in(tmp_path):
    runs = slp_fmnist.plan([0, 3], tmp_path, ["regularizer.burn_in_epochs=2", "epochs=3"])
    assert set(runs) == {(s, m) for s in (0, 3) for m in ("none", "ll", "ll_head", "rep")}
    base = runs[3, "none"]
    assert base.branch_from is None and "seed=3" in base.overrides
    assert runs[3, "rep"].branch_from == (base.output, 2) and runs[3, "rep"].after == [base]
    assert runs[3, "ll"].config == runs[3, "ll_head"].config == "fmnist_slp_llspectral"
    assert "regularizer.layers=[head]" in runs[3, "ll_head"].overrides and runs[3, "ll_head"].after == [base]


def test_ssl_plan_branches_rep_and_ll_from_the_baseline_burn_in(tmp_path):
    from experiments import ssl_fmnist

    runs = ssl_fmnist.plan([0, 1], tmp_path, ["epochs=6", "regularizer.burn_in_epochs=4"])
    assert set(runs) == {(s, a) for s in (0, 1) for a in ("none", "rep", "ll")}
    base = runs[1, "none"]
    assert base.branch_from is None and "seed=1" in base.overrides and "eval.attack=none" in base.overrides
    for arm in ("rep", "ll"):
        assert runs[1, arm].branch_from == (base.output, 4) and runs[1, arm].after == [base]
        assert runs[1, arm].config == f"fmnist_simclr_resnet_small_{arm}spectral"


def test_ssl_plateau_check_needs_a_plateau_well_above_random_init_before_the_penalty():
    from experiments import ssl_fmnist

    def curve(seed, accs):
        return [dict(seed=seed, epoch=e, fashion_mnist=a) for e, a in accs.items()]
    rows = (curve(0, {0: 0.70, 2: 0.78, 4: 0.80, 6: 0.81, 9: 0.50})  # fair: +0.11, last step 0.01; epoch 9 ignored
            + curve(1, {0: 0.76, 3: 0.787, 5: 0.785, 7: 0.80})      # plateaued at +0.025: not well above random init
            + curve(2, {0: 0.70, 3: 0.74, 6: 0.80})                 # +0.10 but still climbing (last step 0.06)
            + curve(3, {0: 0.70, 6: 0.80}))                         # one trained epoch recorded: no verdict
    checks = {c["seed"]: c for c in ssl_fmnist.plateau_check(rows, burn_in=6)}
    assert checks[0]["epoch"] == 6 and checks[0]["gain"] == pytest.approx(0.11) and checks[0]["fair"]
    assert checks[1]["epoch"] == 5 and checks[1]["plateaued"] and not checks[1]["well_above"] and not checks[1]["fair"]
    assert checks[2]["well_above"] and not checks[2]["plateaued"] and not checks[2]["fair"]
    assert checks[3]["fair"] is None
    section = ssl_fmnist._plateau_section([checks[0], checks[1]], 6)
    assert "**The comparison is not fair** (seed 1 fails the rule)" in section
    assert "not fair" not in ssl_fmnist._plateau_section([checks[0]], 6)


def test_ssl_attacks_are_cached_per_shared_image_set_and_compared_only_on_shared_images(tmp_path):
    from experiments import ssl_fmnist

    first = ssl_fmnist.attack_cache(tmp_path, 0, "rep", [3, 5, 8])
    assert first == ssl_fmnist.attack_cache(tmp_path, 0, "rep", [3, 5, 8])
    assert first != ssl_fmnist.attack_cache(tmp_path, 0, "rep", [3, 5, 9])  # other images: attacked again
    assert ssl_fmnist.shared_indices([dict(index=[3, 5]), dict(index=[3, 5])]) == [3, 5]
    assert ssl_fmnist.shared_indices([dict(index=[3, 5]), dict(index=[3, 6])]) is None


def test_logistic_head_is_sklearns_fit_on_the_standardized_frozen_features():
    """The network's logits (standardization folded into the head, logit scale undone) equal the
    decision function of sklearn's own scaler + logistic-regression pipeline on the raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    torch.manual_seed(0)
    model = timm.create_model("slp", hidden_dim=16, num_classes=3).eval()
    with torch.no_grad():  # features on very different scales: unstandardized lbfgs would struggle
        model.fc1.weight.mul_(torch.logspace(-2, 2, 16).unsqueeze(1))
    x, y = torch.rand(90, 1, 28, 28), torch.arange(90) % 3
    refit, info = slp_fmnist.logistic_head(model, x, y, seed=0)
    features = model.forward_features(x).detach().double().numpy()
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(features, y.numpy())
    with torch.no_grad():
        logits = refit(x).double().numpy()
    decision = reference.decision_function(features)
    np.testing.assert_allclose(logits, decision, rtol=1e-4, atol=1e-4 * np.abs(decision).max())
    assert torch.equal(refit.fc1.weight, model.fc1.weight)  # the features stay frozen
    assert info["standardized"] and info["converged"] and info["iterations"] == reference[-1].n_iter_.max()
    assert info["train_acc"] == pytest.approx(reference.score(features, y.numpy()))
    assert not slp_fmnist.logistic_head(model, x, y, seed=0, max_iter=2)[1]["converged"]


def test_slp_report_shows_unconverged_and_unstandardized_refits_of_an_old_run():
    old = dict(iterations=1000.0, converged=False, train_acc=0.88, fit_s=400.0)  # an old run's fields
    new = dict(standardized=True, iterations=212, max_iter=5000, converged=True, train_acc=0.89, fit_s=60.0)
    rows = [dict(mode="none", seed=0, head="logreg", logreg_fit=old), dict(mode="rep", seed=0, head="logreg", logreg_fit=new),
            dict(mode="rep", seed=0, head="trained", logreg_fit=new)]
    lines = slp_fmnist._refit_table(rows).splitlines()
    assert len(lines) == 6 and lines[-1].startswith("**1 of the 2 refits did not converge**")
    assert lines[2] == "| none | 0 | raw (unstandardized) | 1000 | **NO** | 0.8800 | 400 |"
    assert lines[3] == "| rep | 0 | standardized | 212 of max 5000 | yes | 0.8900 | 60 |"
    note = slp_fmnist._provenance(dict(command="python -m experiments.slp_fmnist", rows=rows))
    assert "now defaults to 3" in note and "1 of its 2 logistic refits" in note and "1 of 2 did not converge" in note
    rows = [dict(r, seed=s, logreg_fit=new) for r in rows for s in (0, 1, 2)]
    assert slp_fmnist._provenance(dict(command="c", rows=rows)) == ""


def test_volume_element_of_a_linear_feature_map_is_the_product_of_its_singular_values():
    torch.manual_seed(0)
    model = timm.create_model("slp", img_size=(1, 2), in_chans=1, hidden_dim=5, num_classes=2,
                              act_layer="identity").eval()
    points = torch.randn(7, 2)
    expected = torch.linalg.svdvals(model.fc1.weight.detach().double()).prod()
    got = xor_toy.volume_element(model, points)
    torch.testing.assert_close(got.double(), expected.expand(7), rtol=1e-5, atol=1e-6)


def test_xor_toy_end_to_end(tmp_path):
    """A short run writes every output; the Tangent Attack never beats the grid's exact boundary distance
    and (a local search: it may settle on a farther stretch of the boundary) comes close to it on average;
    the arms branch from one network, so their traces share its first steps."""
    out = xor_toy.main(["--seeds", "400", "--widths", "3", "--gammas", "2e-3", "--steps", "2500", "--burn-in", "2000",
                        "--budget", "2000", "--workers", "1", "--out", str(tmp_path)])
    for name in ("results.json", "README.md", "sigma_max.png", "maps.png"):
        assert (tmp_path / name).is_file(), name
    rows = out["rows"]
    assert [r["mode"] for r in rows] == ["none", "ll", "rep", "rep_act"]
    spacing = (xor_toy.BOX[1] - xor_toy.BOX[0]) / 1200
    for row in rows:
        assert row["train_acc"] == 1.0
        for ta, exact in zip(row["ta_l2"], row["grid_l2"]):
            assert ta >= exact - spacing
        assert row["ta_mean"] <= 1.2 * row["grid_mean"]
    traces = out["traces"]["3/400"]
    assert traces["base"][-1][0] == 2000 and traces["rep/0.002"][0][0] == 2050
    assert rows[2]["sigma_w1"] == pytest.approx(traces["rep/0.002"][-1][1])
    assert rows[2]["sigma_w1"] < rows[0]["sigma_w1"]  # the penalty lowers the hidden layer's norm


def test_xor_reproduces_the_authors_unregularized_seed_400_run():
    """Their init, logit scaling and optimizer: seed 400, width 8, 15000 full-batch steps end at the
    sigma_max(W1) their code gives (6.3896, ../shared/ALGORITHMS.md section 4)."""
    torch.set_num_threads(1)
    model = xor_toy.make_model(400, 8)
    xor_toy.train_steps(model, xor_toy._optimizer(model), 15000, record_every=15000)
    assert xor_toy.sigma_max(model.fc1.weight) == pytest.approx(6.3896, abs=5e-4)


@pytest.mark.parametrize("name", ["slp_fmnist", "transfer_digits", "ssl_fmnist", "roth_fmnist", "bn_resnet_fmnist"])
def test_experiments_take_budgets_as_the_cli_does(name, capsys):
    """--budgets is repspec-zoo's comma-separated list (argtypes.parse_budgets), checked before any work."""
    import importlib

    main = importlib.import_module(f"experiments.{name}").main
    for bad, words in (("1000 2000", "comma-separated integers"), ("0,100", "positive query counts")):
        with pytest.raises(SystemExit) as exit_:
            main(["--budgets", bad])
        assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_cached_json_computes_once_and_reads_back(tmp_path):
    """An experiment's per-model cache: the first call computes and writes, a resumed run reads the file."""
    from experiments.common import cached_json

    calls = []

    def compute():
        calls.append(1)
        return {"l2": [0.5, 1.25], "n": 2}

    path = tmp_path / "sub" / "model.json"
    assert cached_json(path, compute) == {"l2": [0.5, 1.25], "n": 2} and path.is_file()
    assert cached_json(path, compute) == {"l2": [0.5, 1.25], "n": 2}
    assert len(calls) == 1


def test_zoo_card_evidence_states_both_heads_of_the_slp_experiment():
    """build_zoo's card sentence for an slp arm gives the seed-level difference with the trained head and with
    the refit head, each from results/experiments/slp_fmnist/results.json."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_zoo", common.ROOT / "recipes" / "build_zoo.py")
    build_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_zoo)
    saved = json.loads((common.RESULTS / "slp_fmnist" / "results.json").read_text())
    rows = {tuple(r["group"]): r for r in saved["seed_level"]["ensemble"] if r["arm"] == "rep"}
    text = build_zoo.evidence("slp_fmnist", "rep")
    trained, refit = text.split("With the head refit")
    assert f"{rows['trained',]['mean_difference']['estimate']:+.3f}" in trained
    assert f"{rows['logreg',]['mean_difference']['estimate']:+.3f}" in refit
    assert f"of {rows['logreg',]['n_seeds']} seeds positive" in refit
    assert build_zoo.evidence("slp_fmnist", "none") is None
