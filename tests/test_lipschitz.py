"""Global Lipschitz bounds (repspec_zoo.evaluation.lipschitz), the certified radius built on them (repspec_zoo.evaluation.bounds) and
analysis.function_report, against dense SVDs of the layer operators and empirical difference quotients."""
import copy
import json
import math

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

import repspec_zoo  # noqa: F401
from repspec_zoo import data
from repspec_zoo.evaluation.analysis import function_report
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.evaluation.bounds import GELU_MAX_SLOPE, VACUOUS_FRACTION, bracket, certified_radius
from repspec_zoo.evaluation.evaluate import evaluate
from repspec_zoo.spectral.jacobian import jacobian_top_singular
from repspec_zoo.evaluation.lipschitz import feature_lipschitz, function_bound, try_feature_lipschitz

from spectral_cases import F64, dense_of, top_sigma


def randomize_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval-mode BatchNorm statistics and gains (timm zero-inits some gains)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.2)
                m.weight.copy_(torch.randn(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return net.eval()


def small_resnet(padding_mode: str = "zeros", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = timm.create_model("resnet_small", num_classes=5, widths=(2, 3, 4))
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            m.padding_mode = padding_mode
    return randomize_bn(net, seed)


def conv_inputs(net: nn.Module, in_shape) -> dict:
    """Input shape (no batch dim) of every conv in one forward."""
    shapes = {}

    def record(name):
        def hook(module, args):
            shapes[name] = tuple(args[0].shape[1:])
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, *in_shape))
    for h in hooks:
        h.remove()
    return shapes


def dense_sigma(module: nn.Module, in_shape, after: nn.Module | None = None) -> float:
    """sigma_max of the dense matrix of ``after o module`` (constant removed), float64 copies."""
    f = copy.deepcopy(nn.Sequential(module, after or nn.Identity())).double().eval()
    with torch.no_grad():
        offset = f(torch.zeros(1, *in_shape, dtype=F64))[0]
        return top_sigma(dense_of(lambda b: f(b) - offset, in_shape))


def quotient_max(phi, x: torch.Tensor, radius: float = 0.05, pairs: int = 8, seed: int = 0) -> float:
    """max of ||phi(x) - phi(x')|| / ||x - x'|| over random x' within ``radius`` of each x."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    with torch.no_grad():
        base = phi(x)
        for _ in range(pairs):
            d = torch.randn(x.shape, generator=gen)
            d = radius * d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            best = max(best, float(((phi(x + d) - base).flatten(1).norm(dim=1) / radius).max()))
    return best


def layer_map(bound) -> dict:
    return {layer.name: layer for layer in bound.layers}


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_layer_norms_bound_the_dense_conv_and_fold_the_batchnorm(padding_mode):
    """Every conv's raw bound >= the dense SVD of its operator at its input size, the folded bound >= that of
    BN o conv; on circular 8x8 grids (block-circulant) both equal the dense SVDs."""
    net, in_shape = small_resnet(padding_mode), (1, 8, 8)
    bound = feature_lipschitz(net, in_shape)
    shapes, modules = conv_inputs(net, in_shape), dict(net.named_modules())
    assert set(layer_map(bound)) == set(shapes)
    for name, layer in layer_map(bound).items():
        conv = modules[name]
        bn = modules[name[:-len("conv1")] + "bn1"] if name.endswith("conv1") else \
            modules[name[:-len("conv2")] + "bn2"] if name.endswith("conv2") else modules[name[:-1] + "1"]
        raw, folded = dense_sigma(conv, shapes[name]), dense_sigma(conv, shapes[name], bn)
        assert raw <= layer.raw_sigma * (1 + 1e-9) and folded <= layer.folded_sigma * (1 + 1e-9), name
        if padding_mode == "circular" or conv.kernel_size == (1, 1):
            assert (layer.raw_sigma, layer.folded_sigma) == pytest.approx((raw, folded), rel=1e-9)


def test_circular_resnet_bound_is_the_composition_of_dense_norms():
    """L = s(stem) * prod_blocks (s(shortcut) + s(conv1) s(conv2)) / sqrt(H W at the pool) / min(std), each s the
    dense SVD of its BN-folded operator: the walk composes exactly the rules it states."""
    net, in_shape = small_resnet("circular"), (1, 8, 8)
    std = torch.tensor([0.5])
    shapes, m = conv_inputs(net, in_shape), dict(net.named_modules())

    def s(conv, bn):
        return dense_sigma(m[conv], shapes[conv], m[bn])

    expected = s("conv1", "bn1")
    for stage in ("layer1.0", "layer2.0", "layer3.0"):
        shortcut = s(f"{stage}.downsample.0", f"{stage}.downsample.1") if f"{stage}.downsample.0" in m else 1.0
        expected *= shortcut + s(f"{stage}.conv1", f"{stage}.bn1") * s(f"{stage}.conv2", f"{stage}.bn2")
    expected /= math.sqrt(2 * 2) * 0.5  # 8 -> 4 -> 2 at the global pool; std 0.5
    model = NormalizedModel(net, mean=[0.3], std=std.tolist()).eval()
    assert feature_lipschitz(model, in_shape).features == pytest.approx(expected, rel=1e-9)


def _check_sound(model, x, bound):
    phi = model.features
    sigma, _, _ = jacobian_top_singular(phi, x, n_iter=20, generator=torch.Generator().manual_seed(0))
    assert float(sigma.max()) <= bound
    assert quotient_max(phi, x) <= bound * (1 + 1e-5)
    return float(sigma.max())


def _batchnorm_act_resnet() -> nn.Module:
    """A BasicBlock ResNet whose norm layers are timm BatchNormAct2d (BN + ReLU in one module). The ReLU of each
    block's bn2 is dropped (the block adds the shortcut to bn2's output in place, which autograd cannot do after
    a ReLU); every other BatchNormAct2d keeps its ReLU, and no ReLU acts in place."""
    net = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=7, channels=(4, 6, 8, 8), stem_width=4,
                 norm_layer=BatchNormAct2d)
    for m in net.modules():
        if isinstance(m, BasicBlock):
            m.bn2.act = nn.Identity()
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net


NETS = {
    "resnet_small": lambda: timm.create_model("resnet_small", num_classes=7, widths=(3, 4, 5)),
    "resnet18": lambda: timm.create_model("resnet18", num_classes=7),
    "basic-BatchNormAct2d": _batchnorm_act_resnet,
    "bottleneck-deep-stem-avg-down-avgmax": lambda: ResNet(
        Bottleneck, (1, 2, 1, 1), num_classes=7, channels=(2, 3, 4, 4), stem_width=4, stem_type="deep",
        avg_down=True, drop_path_rate=0.1, drop_block_rate=0.1, global_pool="avgmax"),
}


@pytest.mark.parametrize("name", list(NETS))
def test_global_bound_is_above_jacobian_and_difference_quotients(name):
    torch.manual_seed(0)
    net = randomize_bn(NETS[name]())
    in_shape = (1, 12, 12) if name == "resnet_small" else (3, 16, 16)
    model = NormalizedModel(net, mean=[0.4] * in_shape[0], std=[0.3] * in_shape[0]).eval()
    bound = feature_lipschitz(model, in_shape)
    x = torch.rand(4, *in_shape, generator=torch.Generator().manual_seed(1))
    jac = _check_sound(model, x, bound.features)
    assert jac > 0 and len(bound.layers) == sum(isinstance(mod, nn.Conv2d) for mod in net.modules())
    if name == "basic-BatchNormAct2d":
        norms = [mod for mod in net.modules() if isinstance(mod, nn.BatchNorm2d)]
        assert norms and all(isinstance(mod, BatchNormAct2d) for mod in norms)


def test_slp_bound_and_certified_radius_are_the_single_layer_formula():
    torch.manual_seed(0)
    net = timm.create_model("slp", num_classes=10, hidden_dim=32)
    model = NormalizedModel(net, mean=[0.1], std=[0.7]).eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    lip = float(torch.linalg.matrix_norm(net.fc1.weight.detach().double(), ord=2)) * GELU_MAX_SLOPE
    lip /= float(model.std.min())  # 0.7 in float32
    w = net.head.weight.detach()
    expected = torch.stack([min((logits[i, y[i]] - logits[i, k]) / (w[y[i]] - w[k]).norm()
                                for k in range(10) if k != y[i]) for i in range(6)]) / lip
    assert feature_lipschitz(model, (1, 28, 28)).features == lip
    torch.testing.assert_close(certified_radius(model, x, y), expected.to(logits.dtype))
    _check_sound(model, x, lip)


def test_fast_eval_folded_model_has_the_same_bound_and_layer_norms():
    net = small_resnet()
    model = NormalizedModel(net, mean=[0.0], std=[1.0]).eval()
    before = feature_lipschitz(model, (1, 8, 8))
    model.fast_eval()
    assert model._folded, "fast_eval folded nothing: the test would not test the folded path"
    after = feature_lipschitz(model, (1, 8, 8))
    assert after.features == pytest.approx(before.features, rel=1e-6)
    for a, b in zip(before.layers, after.layers):
        assert (a.name, a.raw_sigma) == (b.name, pytest.approx(b.raw_sigma, rel=1e-9))
        assert a.folded_sigma == pytest.approx(b.folded_sigma, rel=1e-5)


def test_bound_without_raw_norms_is_the_same_bound():
    net = small_resnet()
    full, lean = feature_lipschitz(net, (1, 8, 8)), feature_lipschitz(net, (1, 8, 8), raw=False)
    assert lean.features == full.features
    assert [layer.folded_sigma for layer in lean.layers] == [layer.folded_sigma for layer in full.layers]
    assert all(layer.raw_sigma is None for layer in lean.layers)  # every conv of the net has a BatchNorm after it


def test_pooling_bounds_are_sound_and_max_pool_attains_its_overlap():
    """resnet18's stem max pool (3x3, stride 2) is bounded by ceil(3/2) = 2 in L2; a dense 4x4 check of the
    average over n positions: its operator norm is 1/sqrt(n)."""
    pool = nn.MaxPool2d(3, 2, 1)
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 3, 3] = 1.0  # lies in 4 windows: the quotient reaches sqrt(4) = 2
    assert float(pool(x).norm() / x.norm()) == pytest.approx(2.0)
    avg = dense_of(lambda b: b.mean((-2, -1)), (1, 4, 4))
    assert top_sigma(avg) == pytest.approx(1 / math.sqrt(16))


def test_unsupported_architectures_are_refused_and_have_no_certificate():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(32, 5))
    model = NormalizedModel(net, mean=[0.5], std=[0.25]).eval()
    with pytest.raises(ValueError, match="no Lipschitz bound for a Sequential"):
        feature_lipschitz(model, (1, 4, 4))
    assert try_feature_lipschitz(model, (1, 4, 4)) is None
    se = NormalizedModel(timm.create_model("seresnet18", num_classes=3)).eval()
    with pytest.raises(ValueError, match=r"layer1\.0\.se"):
        feature_lipschitz(se, (3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    assert certified_radius(se, x, torch.zeros(2, dtype=torch.long)) is None
    bound = function_bound(model, (1, 4, 4))  # no Lipschitz bound, layer norms all the same
    assert bound.features is None and "Sequential" in bound.reason
    assert [layer.name for layer in bound.layers] == ["0", "4"]
    assert bound.layers[0].folded_sigma >= dense_sigma(net[0], (1, 4, 4), net[1])
    assert bound.layers[1].folded_sigma == pytest.approx(top_sigma(net[4].weight.detach().double()), rel=1e-12)
    with pytest.raises(ValueError, match="eval"):
        feature_lipschitz(small_resnet().train(), (1, 8, 8))


def test_bracket_labels_a_vacuous_certificate():
    upper = torch.tensor([1.0, 2.0, math.inf])
    assert not bracket(upper, torch.tensor([0.5, 0.1, 0.3]), None)["vacuous"]
    tiny = torch.full((3,), 0.5 * VACUOUS_FRACTION)
    out = bracket(upper, tiny, None)
    assert out["vacuous"] and out["violations"] == 0


def test_function_report_numbers_are_consistent_and_json_able():
    torch.manual_seed(0)
    net = randomize_bn(timm.create_model("resnet18", num_classes=4))
    model = NormalizedModel(net).eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one misclassified point
    report = function_report(model, x, y, jacobian_points=3)
    json.dumps(report, allow_nan=False)
    raw = [layer["raw_sigma"] for layer in report["layers"]]
    folded = [layer["folded_sigma"] for layer in report["layers"]]
    assert len(raw) == 20 and report["raw_sum_sq"] == pytest.approx(sum(r * r for r in raw))
    assert report["folded_sum_sq"] == pytest.approx(sum(f * f for f in folded))
    assert report["folded_prod"] == pytest.approx(math.prod(folded))
    assert report["lipschitz_upper"] == pytest.approx(
        report["feature_lipschitz_upper"] * float(torch.linalg.matrix_norm(net.fc.weight.double(), 2)))
    assert report["n_correct"] == 5 and report["jacobian_points"] == 3
    assert 0 < report["jacobian_median"] <= report["feature_lipschitz_upper"]
    cert = certified_radius(model, x[1:], y[1:])
    assert report["certified_median"] == pytest.approx(float(cert.median()))
    assert report["certified_mean"] == pytest.approx(float(cert.mean()))
    assert isinstance(report["vacuous"], bool) and report["estimator"]
    no_data = function_report(NormalizedModel(small_resnet()).eval())  # at the timm input_size, no certificate
    assert no_data["input_shape"] == [1, 28, 28] and "certified_median" not in no_data


@pytest.fixture(scope="module")
def fmnist_few():
    x, y = data.as_tensors(data.load_split("fashion_mnist", "test", limit=40, seed=0))
    return x, y


@pytest.mark.parametrize("name", ["resnet_small_baseline.fmnist", "slp_baseline.fmnist"])
def test_bundled_models_certificate_never_exceeds_an_attack_distance(name, fmnist_few):
    model = NormalizedModel(timm.create_model(name, pretrained=True)).eval().fast_eval()
    res = evaluate(model, fmnist_few, n=4, budgets=[300], attack="fmn", seed=0, progress=False, lemma1=False)
    assert res.bracket["lower"] == "certified" and res.bracket["violations"] == 0
    cert, l2 = res.certified["per_sample"], res.per_sample["l2"]["300"]
    assert all(0 < c <= d for c, d in zip(cert, l2))
    assert isinstance(res.bracket["vacuous"], bool)
