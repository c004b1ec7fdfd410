"""Jacobian analyses (repspec_zoo.evaluation.analysis) and the `repspec-zoo analyze` command."""
import json

import pytest
import timm
import torch
from torch import nn

from repspec_zoo.evaluation import analysis
from repspec_zoo import cli
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.models.tiny import SingleHiddenLayerNet


def small_cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 5))
    return NormalizedModel(net, mean=[0.5], std=[0.25]).double().eval()


def affine_net() -> nn.Module:
    """phi(x) = W1 x + b1 (identity activation), logits = W2 phi + b2: exactly affine."""
    net = SingleHiddenLayerNet(num_classes=4, in_chans=1, img_size=3, hidden_dim=6, act_layer="identity")
    return NormalizedModel(net, mean=[0.0], std=[1.0]).double().eval()


def test_jacobian_matrix_equals_jacrev():
    model, x = small_cnn(), torch.rand(3, 1, 4, 4, dtype=torch.float64)
    jac = analysis.jacobian_matrix(model, x)
    for i in range(len(x)):
        expected = torch.func.jacrev(model)(x[i:i + 1]).reshape(5, 16)
        torch.testing.assert_close(jac[i], expected, rtol=1e-12, atol=1e-12)


def test_full_svd_equals_svdvals_and_topk_iteration_equals_its_top():
    model, x = small_cnn(), torch.rand(3, 1, 4, 4, dtype=torch.float64)
    s, v, method = analysis.jacobian_svd(model, x, method="full")
    assert method == "full" and s.shape == (3, 5) and v.shape == (3, 5, 16)
    torch.testing.assert_close(s, torch.linalg.svdvals(analysis.jacobian_matrix(model, x)))
    top_s, top_v, method = analysis.jacobian_svd(model, x, k=3, method="topk", iters=100,
                                                 generator=torch.Generator().manual_seed(0))
    assert method == "topk"
    torch.testing.assert_close(top_s, s[:, :3], rtol=1e-8, atol=0)
    cos = (top_v * v[:, :3]).sum(-1).abs()  # singular vectors agree up to sign
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=1e-6, atol=0)


def test_auto_picks_topk_above_the_size_limit(monkeypatch):
    model, x = small_cnn(), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    monkeypatch.setattr(analysis, "FULL_SVD_MAX_ENTRIES", 16 * 5 - 1)
    assert analysis.jacobian_svd(model, x, k=2)[2] == "topk"


def test_affine_model_is_exactly_linear_with_constant_sigma():
    model, x = affine_net(), torch.rand(3, 1, 3, 3, dtype=torch.float64)
    phi = model.features
    norms = [0.0, 0.5, 2.0, 8.0]
    deviation, sigma = analysis.linearity_profile(phi, model, x, torch.randn_like(x), norms, power_iters=100)
    assert deviation.abs().max() < 1e-12
    net = model.model
    top = torch.linalg.svdvals(net.head.weight.detach() @ net.fc1.weight.detach())[0]
    torch.testing.assert_close(sigma, top.expand(3, 4), rtol=1e-9, atol=0)


def test_nonlinear_model_deviates_from_linearity():
    model, x = small_cnn(), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    phi = lambda z: model.model[:3]((z - 0.5) / 0.25)  # noqa: E731  (tanh features)
    deviation, _ = analysis.linearity_profile(phi, model, x, torch.randn_like(x), [0.0, 1.0], power_iters=5)
    assert deviation[:, 0].abs().max() < 1e-12 and (deviation[:, 1] > 1e-3).all()


def test_alignment_by_rank():
    v = torch.linalg.qr(torch.randn(2, 16, 4, dtype=torch.float64)).Q.transpose(1, 2)  # (2, 4, 16) orthonormal rows
    delta = 3.0 * v[:, 1].reshape(2, 1, 4, 4)
    torch.testing.assert_close(analysis.alignment_by_rank(delta, v),
                               torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 2, dtype=torch.float64))


def test_analyze_all_and_robust_curve_is_non_increasing():
    net = SingleHiddenLayerNet(num_classes=5, in_chans=1, img_size=4, hidden_dim=6)
    model = NormalizedModel(net, mean=[0.5], std=[0.25]).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 5, (6,))
    with torch.no_grad():
        y[:3] = model(x[:3]).argmax(1)  # some correctly classified points
    result = analysis.analyze(model, x, y, eps_list=[0.0, 0.5, 0.1, 2.0], attack_eps=0.5, pgd_steps=3,
                              norms=[0.0, 1.0], power_iters=3, batch_size=4, progress=False)
    assert set(result) == set(analysis.ANALYSES)
    assert result["spectrum"]["method"] == "full" and len(result["spectrum"]["per_sample"]) == 6
    acc = dict(zip(result["robustness"]["eps"], result["robustness"]["accuracy"]))
    ordered = [acc[e] for e in sorted(acc)]
    assert ordered[0] >= 0.5 and all(a >= b for a, b in zip(ordered, ordered[1:]))
    assert result["alignment"]["ranks"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kwargs, match", [(dict(analyses=["spectrum", "hessian"]), "hessian"),
                                           (dict(analyses=[]), "choose from"),
                                           (dict(attack_eps=0.0), "attack_eps"),
                                           (dict(eps_list=[-1.0]), "eps_list"),
                                           (dict(norms=[]), "norms")])
def test_analyze_rejects_bad_settings(kwargs, match):
    model, x = small_cnn(), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        analysis.analyze(model, x, torch.zeros(2, dtype=torch.long), progress=False, **kwargs)


def test_analyze_rejects_empty_input_and_bad_rank_or_method():
    model, x = small_cnn(), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="N must be >= 1"):
        analysis.analyze(model, x[:0], torch.zeros(0, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="k=6"):
        analysis.jacobian_svd(model, x, k=6)
    with pytest.raises(ValueError, match="method"):
        analysis.jacobian_svd(model, x, method="lanczos")


@pytest.fixture
def tiny_local_model(tmp_path):
    """A local-dir: export of slp (8x8 digits, 8 hidden units)."""
    from timm.models._hub import save_for_hf

    model = timm.create_model("slp", num_classes=10, in_chans=1, img_size=8, hidden_dim=8)
    folder = tmp_path / "slp_tiny"
    save_for_hf(model, str(folder), model_args=dict(num_classes=10, in_chans=1, img_size=8, hidden_dim=8),
                safe_serialization=True)
    return f"local-dir:{folder}"


def test_analyze_cli_end_to_end(tiny_local_model, tmp_path, capsys):
    out = tmp_path / "analysis"
    cli.main(["analyze", tiny_local_model, "--dataset", "digits", "--n", "4", "--top-k", "3", "--pgd-steps", "2",
              "--power-iters", "3", "--eps-list", "0,1,2", "--norms", "0,1", "--out", str(out)])
    result = json.loads((out / "analysis.json").read_text())
    assert result["n"] == 4 and result["dataset"] == "digits"
    assert len(result["spectrum"]["median"]) == 3 and result["robustness"]["eps"] == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in out.glob("*.png")) == ["alignment.png", "linearity.png", "robustness.png",
                                                         "spectrum.png"]
    printed = capsys.readouterr().out
    assert "PGD accuracy" in printed and "analysis.json" in printed
    function = result["function"]
    assert function["lipschitz_upper"] > 0 and len(function["layers"]) == 1
    assert f"features {function['feature_lipschitz_upper']:.4g}" in printed and "certified L2 radius" in printed


@pytest.mark.parametrize("args, match", [(["--analyses", "spectrum,curvature"], "curvature"),
                                         (["--n", "0"], "--n"), (["--eps-list", "0,-1"], "--eps-list")])
def test_analyze_cli_rejects_bad_input(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "slp", "--out", str(tmp_path), *args])
    assert match in capsys.readouterr().err
