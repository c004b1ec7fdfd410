"""evaluate(): accuracy, per-budget statistics, Lemma-1 / certified bounds, multi-process, CLI."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import repspec_zoo  # noqa: F401
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.evaluation.bounds import GELU_MAX_SLOPE, certified_radius, lemma1_estimate
from repspec_zoo.evaluation.evaluate import evaluate
from repspec_zoo.spectral.jacobian import jacobian_top_singular
from multiproc import ROOT, launch_two_processes


def self_labelled(model, n=40, seed=0, shape=(1, 28, 28)):
    """Random images labelled by the model itself: every one is classified correctly."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def small_slp(act="gelu", hidden=32, seed=0):
    torch.manual_seed(seed)
    return NormalizedModel(timm.create_model("slp", num_classes=10, hidden_dim=hidden, act_layer=act)).eval()


def test_gelu_max_slope_matches_numerical_maximum():
    z = torch.linspace(-6, 6, 200001, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(z).sum().backward()
    assert float(z.grad.abs().max()) == pytest.approx(GELU_MAX_SLOPE, abs=1e-9)
    assert GELU_MAX_SLOPE == pytest.approx(1.1289, abs=1e-4)


def test_jacobian_power_iteration_matches_svd_of_jacrev():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    sigma, v, u = jacobian_top_singular(net, x, n_iter=500)
    for i in range(3):
        jac = torch.func.jacrev(net)(x[i])
        s = torch.linalg.svdvals(jac)
        assert float(sigma[i]) == pytest.approx(float(s[0]), rel=1e-8)
        torch.testing.assert_close(jac @ v[i], sigma[i] * u[i])


def test_power_iteration_keeps_no_autograd_history(monkeypatch):
    """Parameters that require grad put jv on the autograd graph; a step's vector must not carry it
    into the next step (that chain held every step's activations: 1.4 GB in a 2-model leaderboard)."""
    from repspec_zoo.spectral import jacobian

    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    assert all(p.requires_grad for p in net.parameters())
    seen, real_jvp = [], jacobian.jvp

    def recording_jvp(fn, x, v):
        seen.append(v.grad_fn is None and not v.requires_grad)
        return real_jvp(fn, x, v)

    monkeypatch.setattr(jacobian, "jvp", recording_jvp)
    jacobian_top_singular(net, torch.randn(3, 6), n_iter=4)
    assert seen == [True] * 5


def test_linear_features_lemma1_equals_certified_radius():
    model = small_slp(act="identity")
    x, y = self_labelled(model, n=8)
    local, cert = lemma1_estimate(model, x, y, n_iter=300), certified_radius(model, x, y)
    torch.testing.assert_close(local, cert, rtol=1e-4, atol=0)


def test_certified_radius_below_attack_distance_and_budget_monotone():
    model = small_slp()
    x, y = self_labelled(model, n=12)
    res = evaluate(model, (x, y), n=6, budgets=[200, 600, 1500], attack="ta", seed=0, progress=False)
    assert res.clean_acc == 1.0 and res.n_samples == 6
    l2 = res.per_sample["l2"]
    for j in range(6):
        assert l2["200"][j] >= l2["600"][j] >= l2["1500"][j]
        assert res.certified["per_sample"][j] <= l2["1500"][j] + 1e-6
    means = [res.l2_mean[str(q)] for q in res.budgets]
    assert means == sorted(means, reverse=True)
    assert max(res.per_sample["queries"]["ta"]) <= 1500
    # JSON round trip keeps the numbers
    back = json.loads(res.to_json())
    assert back["l2_mean"]["1500"] == pytest.approx(res.l2_mean["1500"])
    assert "Lemma-1" in res.summary_table()


def test_samples_are_seeded_and_warn_when_pool_too_small():
    model = small_slp()
    x, y = self_labelled(model, n=10)
    y[:4] = (y[:4] + 1) % 10  # 4 wrong labels: pool of 6
    with pytest.warns(UserWarning, match="only 6"):
        res = evaluate(model, (x, y), n=50, budgets=[100], progress=False)
    assert res.n_samples == 6 and res.clean_acc == pytest.approx(0.6)
    assert set(res.per_sample["index"]) == set(range(4, 10))
    again = evaluate(model, (x, y), n=3, budgets=[100], seed=5, progress=False)
    assert again.per_sample == evaluate(model, (x, y), n=3, budgets=[100], seed=5, progress=False).per_sample


@pytest.mark.parametrize("mutate, match", [
    (lambda x: x.masked_fill(x > 0.9, float("nan")), "NaN"),
    (lambda x: x * 3 - 1, r"\[0, 1\]"),
    (lambda x: x.repeat(1, 3, 1, 1), "1-channel"),
    (lambda x: x[:, :, :20, :20], "cannot take images of shape"),
])
def test_bad_images_get_clear_errors(mutate, match):
    model = small_slp()
    x, y = self_labelled(model, n=4)
    with pytest.raises(ValueError, match=match):
        evaluate(model, (mutate(x), y), n=2, budgets=[10], progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attack="fgsm"), "unknown attack 'fgsm'"),
    (dict(budgets=[0]), "budgets must be positive"),
    (dict(n=0), "n must be >= 1"),
    (dict(max_iter=-1), "max_iter must be an int >= 1"),
    (dict(max_iter=0), "0 iterations attack nothing"),
    (dict(seed=-1), "seed must be an int in"),
    (dict(attack=""), "names no attack"),
])
def test_bad_settings_get_clear_errors(kwargs, match):
    model = small_slp()
    x, y = self_labelled(model, n=4)
    with pytest.raises(ValueError, match=match):
        evaluate(model, (x, y), **{"n": 2, "budgets": [10], "progress": False, **kwargs})


EVAL_SETTINGS = dict(n=7, budgets=[150, 400], seed=3, progress=False)


def test_two_processes_give_the_single_process_numbers(tmp_path):
    launch_two_processes(ROOT / "tests" / "workers" / "eval_slp.py", str(tmp_path / "two.json"))
    two = json.loads((tmp_path / "two.json").read_text())
    model = small_slp()
    x, y = self_labelled(model, n=12)
    one = json.loads(evaluate(model, (x, y), **EVAL_SETTINGS).to_json())
    assert two["per_sample"] == one["per_sample"]
    assert two["l2_mean"] == one["l2_mean"] and two["n_samples"] == 7


def test_cli_eval_on_digits_with_checkpoint(tmp_path, capsys):
    from repspec_zoo.cli import main

    net = timm.create_model("slp", num_classes=10)
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    main(["eval", "slp", "--checkpoint", str(tmp_path / "model.safetensors"), "--dataset", "digits",
          "--n", "3", "--budgets", "50,100", "--attack", "ta", "--out", str(tmp_path / "eval.json")])
    out = json.loads((tmp_path / "eval.json").read_text())
    assert out["dataset"] == "digits" and out["n_test"] == 360 and out["budgets"] == [50, 100]
    assert 0.0 <= out["clean_acc"] <= 1.0
    printed = capsys.readouterr().out
    assert "attacking 3 correctly classified images x 100 queries with ta: up to 300 model queries" in printed
    assert "| 100 |" in printed


def test_ensemble_is_the_per_sample_best_and_brackets_the_true_distance():
    from test_starts import NearestPrototype, dataset

    model = NearestPrototype().eval()
    x, y = dataset(per_class=6)
    res = evaluate(model, (x, y), n=12, budgets=[300, 1000], attack="ensemble", seed=0, lemma1=False, progress=False)
    assert res.attacks == ["ta", "cgba", "fmn", "ddn", "alma"] and res.attack == "ta+cgba+fmn+ddn+alma"
    best = torch.tensor(res.per_sample["l2"]["1000"], dtype=torch.float64)
    each = torch.tensor([res.per_sample["l2_by_attack"][a]["1000"] for a in res.attacks], dtype=torch.float64)
    assert torch.equal(best, each.min(0).values)
    index = torch.tensor(res.per_sample["index"])
    true = model.distance(x[index], y[index])
    # every attack returned verified adversarial points in the box (AttackResult.verified) within its
    # budget; none is below the exact distance, and the white-box attacks nail these flat boundaries
    assert (each >= true * (1 - 1e-4)).all()
    assert (best <= 1.02 * true).all()
    assert all(q <= 1000 for a in ("ta", "cgba") for q in res.per_sample["queries"][a])
    # the hard-label curve is reported apart from the white-box distances, which ignore the budget
    assert res.black_box["attacks"] == ["ta", "cgba"]
    assert res.black_box["l2_mean"]["1000"] >= res.l2_mean["1000"]
    assert res.distance["n_samples"] == 12 and res.distance["success_rate"]["estimate"] == 1.0
    low, high = res.distance["l2_mean"]["low"], res.distance["l2_mean"]["high"]
    assert low <= res.l2_mean["1000"] <= high
    assert "best of all" in res.summary_table()


def test_certified_bracket_and_robust_accuracy_follow_the_distances():
    model = small_slp()
    x, y = self_labelled(model, n=12)
    res = evaluate(model, (x, y), n=8, budgets=[300], attack="ta", seed=0, progress=False,
                   dataset_name="fashion_mnist")
    best = torch.tensor(res.per_sample["l2"]["300"])
    cert = torch.tensor(res.certified["per_sample"])
    assert res.bracket["lower"] == "certified" and res.bracket["violations"] == 0
    assert res.bracket["upper_over_certified"]["median"] == pytest.approx(float((best / cert).median()), rel=1e-6)
    assert res.bracket["upper_over_certified"]["max"] == pytest.approx(float((best / cert).max()), rel=1e-6)
    assert (best >= cert).all()
    eps = res.robust_accuracy["eps"]
    assert eps == 1.5
    frac = float((best > eps).float().mean())
    assert res.robust_accuracy["at_eps"]["robust_fraction"]["estimate"] == pytest.approx(frac)
    assert res.robust_accuracy["at_eps"]["robust_accuracy_upper"]["estimate"] == pytest.approx(frac * res.clean_acc)
    curve = [c["robust_fraction"]["estimate"] for c in res.robust_accuracy["curve"]]
    assert curve[0] == 1.0 and curve == sorted(curve, reverse=True)


def test_indices_pick_the_attacked_images_and_reject_misclassified_ones():
    model = small_slp()
    x, y = self_labelled(model, n=10)
    res = evaluate(model, (x, y), indices=[7, 2, 5], budgets=[50], progress=False, lemma1=False)
    assert res.per_sample["index"] == [2, 5, 7] and res.n_requested == 3
    y[3] = (y[3] + 1) % 10
    with pytest.raises(ValueError, match=r"indices \[3\] are misclassified"):
        evaluate(model, (x, y), indices=[3, 4], budgets=[50], progress=False)


def test_one_budget_parser_for_every_command():
    import argparse

    from repspec_zoo.cli import leaderboard
    from repspec_zoo.argtypes import parse_budgets
    from repspec_zoo.cli.eval import build_parser

    assert parse_budgets("5000, 1000,1000,") == [1000, 5000]  # sorted, unique, blanks skipped
    for bad in ("1k,2k", "0,100", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="--budgets"):
            parse_budgets(bad)
    assert build_parser().parse_args(["m", "--budgets", "500,100"]).budgets == [100, 500]
    assert leaderboard.build_parser().parse_args(["--budgets", "500,100"]).budgets == [100, 500]


def test_one_budget_rule_for_the_parser_and_evaluate():
    from repspec_zoo.attacks.oracle import check_budgets

    assert check_budgets((500, 100)) == [100, 500]
    for bad in ([], [0, 100], [-5]):
        with pytest.raises(ValueError, match="budgets must be positive query counts"):
            check_budgets(bad)
    model, x, y = NormalizedModel(timm.create_model("slp", num_classes=10)).eval(), torch.rand(4, 1, 28, 28), torch.zeros(4)
    with pytest.raises(ValueError, match=r"budgets must be positive query counts, got \[0, 100\]"):
        evaluate(model, (x, y.long()), budgets=[100, 0], progress=False)


def test_paper_mode_sets_the_papers_attack_and_explicit_flags_win():
    from repspec_zoo.cli.common import resolve_defaults
    from repspec_zoo.cli.eval import build_parser
    from repspec_zoo.evaluation.evaluate import PAPER

    paper = resolve_defaults(build_parser().parse_args(["slp", "--paper"]))
    assert (paper.attack, paper.max_iter, paper.budgets) == (["ta"], 40, list(PAPER["budgets"]))
    mixed = resolve_defaults(build_parser().parse_args(["slp", "--paper", "--budgets", "500,100", "--attack", "ensemble"]))
    assert (mixed.attack, mixed.max_iter, mixed.budgets) == (["ta", "cgba", "fmn", "ddn", "alma"], 40, [100, 500])
    plain = resolve_defaults(build_parser().parse_args(["slp"]))
    assert (plain.attack, plain.max_iter, plain.budgets) == (["ta"], None, [1000, 5000, 10000])
    from repspec_zoo.cli import UsageError

    with pytest.raises(UsageError, match="argument --attack: unknown attack 'boundary'"):
        build_parser().parse_args(["slp", "--attack", "ta,boundary"])


def test_one_default_of_rows_per_model_call():
    """evaluate, AttackSettings, the oracle, verify, PGD's curve, the probe's features and the CLI share EVAL_BATCH_SIZE."""
    import inspect

    from repspec_zoo.attacks import AttackSettings, HardLabelOracle
    from repspec_zoo.attacks.oracle import EVAL_BATCH_SIZE
    from repspec_zoo.attacks.pgd import robust_accuracy_curve
    from repspec_zoo.attacks.result import verify
    from repspec_zoo.cli.eval import build_parser
    from repspec_zoo.evaluation.linear_probe import extract_features

    defaults = {f.__name__: inspect.signature(f).parameters["batch_size"].default
                for f in (evaluate, HardLabelOracle, verify, robust_accuracy_curve, extract_features)}
    assert defaults == dict.fromkeys(defaults, EVAL_BATCH_SIZE) and EVAL_BATCH_SIZE == 128
    assert AttackSettings().batch_size == build_parser().parse_args(["slp"]).batch_size == EVAL_BATCH_SIZE
