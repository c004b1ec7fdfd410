"""SpectralRegularizer: selection, penalty value and gradient vs dense SVD, state, errors."""
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import repspec_zoo  # noqa: F401  (registers the zoo)
from repspec_zoo import SpectralRegularizer, attach_spectral, select_layers
from repspec_zoo.models import PretrainedWeightsUnavailable


def dense_operator(module: nn.Module, in_shape, weight=None) -> torch.Tensor:
    """Matrix of the layer's linear part (no bias) on one sample, built from basis vectors.

    Independent of repspec_zoo.spectral: uses torch.nn.functional directly (differentiable in weight).
    """
    weight = module.weight if weight is None else weight
    n = int(torch.tensor(in_shape).prod())
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *in_shape)
    if isinstance(module, nn.Linear):
        return weight
    conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
    out = conv(basis, weight, None, module.stride, module.padding, module.dilation, module.groups)
    return out.reshape(n, -1).T


def input_shapes(model, x):
    shapes = {}

    def record(name, module, args):
        shapes.setdefault(name, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: record(name, m, a))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


SELECTION_MODELS = {
    "resnet18": dict(),
    "resnet50": dict(),
    "mobilenetv3_small_050": dict(),          # depthwise convs
    "vit_tiny_patch16_224": dict(img_size=32),  # Linear layers + patch-embedding conv
}


@pytest.mark.parametrize("arch", list(SELECTION_MODELS))
def test_rep_excludes_head_ll_includes_it(arch):
    model = timm.create_model(arch, num_classes=7, **SELECTION_MODELS[arch])
    head = model.get_classifier()
    rep, ll = select_layers(model, "rep"), select_layers(model, "ll")
    assert all(m is not head for m in rep.values())
    assert any(m is head for m in ll.values())
    assert set(ll) - set(rep) == {n for n, m in model.named_modules() if m is head}
    if arch.startswith("mobilenet"):
        assert any(m.groups == m.in_channels > 1 for m in rep.values() if isinstance(m, nn.Conv2d))
    if arch.startswith("vit"):
        assert sum(isinstance(m, nn.Linear) for m in rep.values()) == 4 * 12  # qkv, proj, fc1, fc2 per block


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", "vit_tiny_patch16_224"])
def test_regularizer_runs_on_depthwise_and_vit(arch):
    model = timm.create_model(arch, num_classes=3, **SELECTION_MODELS[arch])
    reg = attach_spectral(model, gamma=1e-2, mode="rep", every=1)
    x = torch.rand(2, 3, 32, 32)
    loss = model(x).sum() + reg.penalty()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(s > 0 for s in reg.sigmas().values())


def small_double_model(mode="rep", **kw):
    model = timm.create_model({"rep": "resnet_small_repspectral", "repbn": "resnet_small_repspectralbn",
                               "ll": "resnet_small_llspectral"}[mode], num_classes=4, widths=(2, 3, 4), gamma=0.3,
                              **kw).double().eval()
    x = torch.rand(2, 1, 7, 6, dtype=torch.float64)  # odd, non-square input
    return model, x


def set_exact_vectors(model, shapes):
    """Put the dense operator's top singular pair into the regularizer state; return sigma_1 per layer.

    Convergence speed is tested in test_power.py; here we check the wiring exactly: with the
    exact singular vectors, power steps are a fixed point and the penalty equals the dense value.
    """
    exact = {}
    for name in model.spectral.layer_names:
        dense = dense_operator(model.get_submodule(name), shapes[name]).detach()
        U, S, Vh = torch.linalg.svd(dense)
        state = model.spectral.states[name.replace(".", "__")]
        state.u.copy_(U[:, 0].reshape(state.u.shape))
        state.v.copy_(Vh[0].reshape(state.v.shape))
        exact[name] = float(S[0])
    return exact


def test_sigmas_match_dense_svd_and_penalty_value():
    model, x = small_double_model()
    shapes = input_shapes(model, x)
    model(x)
    exact = set_exact_vectors(model, shapes)
    sigmas = model.spectral.refresh(n_iter=3)  # a fixed point of the power step
    for name, true in exact.items():
        assert sigmas[name] == pytest.approx(true, rel=1e-9), name
    expected = 0.5 * 0.3 * sum(s ** 2 for s in exact.values())
    assert float(model.spectral.penalty()) == pytest.approx(expected, rel=1e-9)


def test_power_updates_converge_to_dense_sigma():
    model, x = small_double_model()
    shapes = input_shapes(model, x)
    model(x)
    sigmas = model.spectral.refresh(n_iter=300)
    for name in ["layer2.0.downsample.0", "layer3.0.downsample.0"]:  # well-separated spectra
        true = torch.linalg.svdvals(dense_operator(model.get_submodule(name), shapes[name]))[0]
        assert sigmas[name] == pytest.approx(float(true), rel=1e-6), name


def test_penalty_gradient_matches_dense_norm_gradient():
    model, x = small_double_model()
    shapes = input_shapes(model, x)
    model(x)
    set_exact_vectors(model, shapes)
    model.spectral.penalty().backward()
    for name in model.spectral.layer_names:
        module = model.get_submodule(name)
        w = module.weight.detach().clone().requires_grad_(True)
        sigma = torch.linalg.matrix_norm(dense_operator(module, shapes[name], w), ord=2)
        (0.5 * 0.3 * sigma ** 2).backward()
        torch.testing.assert_close(module.weight.grad, w.grad, rtol=1e-7, atol=1e-10)


def test_head_gets_penalty_gradient_only_in_ll_mode():
    for mode, expect in [("rep", False), ("ll", True)]:
        model, x = small_double_model(mode)
        model(x)
        model.spectral.penalty().backward()
        assert (model.fc.weight.grad is not None) == expect, mode


def test_bn_aware_norm_is_norm_of_bn_after_conv():
    model, x = small_double_model("repbn")  # eval mode: the running variance
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 3.0)
    shapes = input_shapes(model, x)
    model(x)
    conv, bn = model.conv1, model.bn1
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    dense = dense_operator(conv, shapes["conv1"]).detach()
    n_out_per_ch = dense.shape[0] // conv.out_channels
    composite = scale.detach().repeat_interleave(n_out_per_ch)[:, None] * dense
    U, S, Vh = torch.linalg.svd(composite)
    state = model.spectral.states["conv1"]
    state.u.copy_(U[:, 0].reshape(state.u.shape))
    state.v.copy_(Vh[0].reshape(state.v.shape))
    sigmas = model.spectral.refresh(n_iter=3)
    assert sigmas["conv1"] == pytest.approx(float(S[0]), rel=1e-9)
    assert sigmas["conv1"] != pytest.approx(float(torch.linalg.svdvals(dense)[0]), rel=1e-3)


def test_state_dict_round_trip_dtype_and_remove():
    a = timm.create_model("resnet_small_repspectral", num_classes=10, gamma=1e-2)
    x = torch.rand(4, 1, 28, 28)
    a.train()
    a(x)
    a.spectral.penalty().backward()
    sd = a.state_dict()
    assert any(k.startswith("spectral.states.") and k.endswith(".u") for k in sd)
    b = timm.create_model("resnet_small_repspectral", num_classes=10, gamma=1e-2)
    b.load_state_dict(sd)  # strict, before b has seen any input
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    a.eval(), b.eval()
    assert float(a.spectral.penalty()) == float(b.spectral.penalty())
    assert b.spectral._step == a.spectral._step == 1

    b = b.to(torch.float64)
    assert b.spectral.states["conv1"].u.dtype == torch.float64
    plain = timm.create_model("resnet_small", num_classes=10)
    b.spectral.remove()
    assert set(b.state_dict()) == set(plain.state_dict())
    assert not hasattr(b, "spectral")
    # plain timm weights load strictly into a regularized model (fresh regularizer state)
    c = timm.create_model("resnet_small_repspectral", num_classes=10)
    c.load_state_dict(plain.state_dict())


def test_without_regularizer_leaves_the_plain_models_keys():
    """The one strip of the regularizer's buffers: a regularized model's state -> the plain model's keys,
    also inside a wrapper's state under a prefix (as a training checkpoint holds it)."""
    from repspec_zoo.spectral import without_regularizer

    model = timm.create_model("resnet_small_repspectral", num_classes=10)
    model(torch.rand(2, 1, 28, 28))
    plain = set(timm.create_model("resnet_small", num_classes=10).state_dict())
    state = model.state_dict()
    assert any(k.startswith("spectral.") for k in state) and set(without_regularizer(state)) == plain
    wrapped = {**{f"model.{k}": v for k, v in state.items()}, "projector.weight": torch.zeros(1)}
    stripped = without_regularizer(wrapped, "model.")
    assert set(stripped) == plain and all(stripped[k] is state[k] for k in plain)


def test_penalty_is_float32_under_autocast():
    model = timm.create_model("resnet_small_repspectral", num_classes=10)
    x = torch.rand(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        pen = model.spectral.penalty()
    assert pen.dtype == torch.float32
    assert model.spectral.states["conv1"].u.dtype == torch.float32


def test_training_with_penalty_lowers_sigma():
    def train(gamma):
        torch.manual_seed(0)
        model = timm.create_model("resnet_small_repspectral", num_classes=10, gamma=gamma)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            x, y = torch.rand(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
            loss = F.cross_entropy(model(x), y) + model.spectral.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.spectral.refresh(50)

    plain, regularized = train(0.0), train(0.1)
    assert sum(regularized.values()) < 0.9 * sum(plain.values())
    assert sum(regularized[n] < plain[n] for n in plain) >= 0.8 * len(plain)


def test_ll_mode_follows_reset_classifier():
    model = timm.create_model("resnet_small_llspectral", num_classes=10)
    model(torch.rand(2, 1, 28, 28))
    model.reset_classifier(3)
    model.spectral.penalty().backward()
    assert model.fc.weight.grad is not None and model.spectral.states["fc"].u.shape == (3,)
    model.reset_classifier(0)  # Identity head: nothing left to regularize there
    assert "fc" not in model.spectral.sigmas()
    model.spectral.penalty()


def test_fft_estimator_is_exact_circular_norm():
    from dataclasses import replace

    from repspec_zoo.spectral import ConvGeometry, conv_fft_sigma

    model = timm.create_model("resnet_small_repspectral", num_classes=10, estimator="fft")
    x = torch.rand(2, 1, 16, 16)
    shapes = input_shapes(model, x)
    model(x)
    sigmas = model.spectral.refresh(n_iter=1)
    conv = model.layer2[0].conv1
    geom = replace(ConvGeometry.from_module(conv, shapes["layer2.0.conv1"]), padding_mode="circular")
    assert sigmas["layer2.0.conv1"] == pytest.approx(float(conv_fft_sigma(conv.weight, geom)[0]), rel=1e-5)


def test_every_amortizes_power_updates():
    model = timm.create_model("resnet_small_repspectral", num_classes=10, every=4)
    model.train()
    model(torch.rand(2, 1, 28, 28))
    ran = [model.spectral.step() for _ in range(9)]
    assert ran == [True, False, False, False, True, False, False, False, True]


def test_input_size_change_warns_once_and_reinitializes():
    model = timm.create_model("resnet_small_repspectral", num_classes=10)
    model(torch.rand(1, 1, 28, 28))
    with pytest.warns(UserWarning, match="changed from"):
        model(torch.rand(1, 1, 16, 16))
    assert model.spectral.states["conv1"].u.shape == (16, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(1, 1, 16, 16))


def test_pretrained_true_raises_clear_error():
    with pytest.raises(PretrainedWeightsUnavailable, match="pretrained=False"):
        timm.create_model("resnet18_repspectral", pretrained=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="banana"), "unknown mode 'banana'"),
    (dict(layers=[]), "selects nothing"),
    (dict(layers=["layer9.conv"]), "'layer9.conv' does not exist"),
    (dict(layers=["bn1"]), "BatchNorm2d"),
    (dict(gamma=-1.0), "gamma=-1.0 must be >= 0"),
    (dict(every=0), "every=0 must be an integer >= 1"),
    (dict(estimator="svd"), "unknown estimator 'svd'"),
])
def test_bad_arguments_name_the_input(kwargs, match):
    model = timm.create_model("resnet_small", num_classes=10)
    with pytest.raises(ValueError, match=match):
        SpectralRegularizer(model, **kwargs)


def test_input_too_small_for_conv_is_named():
    model = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2, 2))
    SpectralRegularizer(model, mode="ll")
    with pytest.raises(ValueError, match="3, 3"):
        model(torch.rand(1, 1, 3, 3))


def test_rep_mode_needs_a_head():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="get_classifier"):
        SpectralRegularizer(model, mode="rep")


# ----------------------------------------------------------------------------- the authors' variants
def test_direct_step_is_w_minus_2_lam_sigma_u_vT():
    """The authors' ResNet update W <- W - lam * grad sigma^2 equals the hand-computed W - 2 lam sigma u v^T."""
    torch.manual_seed(0)
    model = timm.create_model("slp", img_size=(1, 6), in_chans=1, hidden_dim=5, num_classes=3)
    reg = attach_spectral(model, mode="rep", gamma=0.2)  # lam = gamma / 2 = 0.1
    w = model.fc1.weight.detach().double().clone()
    u, s, vh = torch.linalg.svd(w)
    before = reg.direct_step(n_iter=300)
    expected = w - 2 * 0.1 * s[0] * torch.outer(u[:, 0], vh[0])
    assert before["fc1"] == pytest.approx(float(s[0]), rel=1e-6)
    torch.testing.assert_close(model.fc1.weight.double(), expected, atol=1e-6, rtol=0)
    assert model.head.weight.grad is None and model.fc1.weight.grad is None  # no optimizer state touched
    new = torch.linalg.svdvals(model.fc1.weight.detach().double())
    assert float(new.max()) == pytest.approx(max((1 - 0.2) * float(s[0]), float(s[1])), rel=1e-5)


def test_direct_step_on_a_conv_follows_the_gradient_of_the_dense_sigma_squared():
    """On a conv the step is -lam * d sigma_max^2 / dW of the dense (zero-padded) operator matrix."""
    torch.manual_seed(1)

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Linear(3 * 25, 2)

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.fc(self.conv(x).relu().flatten(1))

    model = ConvNet().double()
    conv = model.conv
    reg = attach_spectral(model, mode="rep", gamma=0.1)
    model(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    kernel = conv.weight.detach().clone().requires_grad_()
    basis = torch.eye(2 * 25, dtype=torch.float64).view(-1, 2, 5, 5)
    dense = F.conv2d(basis, kernel, padding=1).flatten(1).T  # (out, in): column k = conv(e_k)
    sigma = torch.linalg.matrix_norm(dense, 2)
    grad, = torch.autograd.grad(sigma ** 2, kernel)
    before = reg.direct_step(n_iter=500)["conv"]
    assert before == pytest.approx(float(sigma.detach()), rel=1e-6)
    step = 0.05 * grad  # lam = gamma / 2; the power iteration leaves u, v converged to ~1e-6
    torch.testing.assert_close(conv.weight.detach(), kernel.detach() - step, atol=1e-3 * float(step.abs().max()), rtol=0)


def test_activation_term_adds_mean_max_squared_slope():
    """eig-ub: penalty = gamma/2 * (sigma^2 + mean_x max_j gelu'(z_j)^2), z = W1 x + b1, with a gradient in b1."""
    torch.manual_seed(2)
    model = timm.create_model("slp", img_size=(1, 2), in_chans=1, hidden_dim=8, num_classes=2).train()
    reg = attach_spectral(model, mode="rep", gamma=1.0, activation_term=True, warmup_iters=500)
    x = torch.randn(6, 1, 1, 2)
    model(x)
    penalty = reg.penalty()
    z = model.fc1(x.flatten(1)).detach().requires_grad_()
    slope = torch.autograd.grad(F.gelu(z).sum(), z)[0]  # gelu' written out independently of the hook
    sigma = torch.linalg.matrix_norm(model.fc1.weight.detach().double(), 2)
    assert float(penalty) == pytest.approx(0.5 * float(sigma ** 2 + slope.square().amax(1).mean()), rel=1e-5)
    penalty.backward()
    assert model.fc1.bias.grad.abs().sum() > 0  # only the data term depends on b1
    reg.remove()
    assert not any(m._forward_hooks for m in model.modules())  # the activation hooks go with it
    with pytest.raises(ValueError, match="no smooth activation"):
        attach_spectral(timm.create_model("resnet_small"), mode="rep", activation_term=True)


def test_small_init_and_logit_scaling_are_the_authors_mlp():
    torch.manual_seed(3)
    model = timm.create_model("slp", hidden_dim=2000, init_std=0.01, scale_logits=True)
    for p in (model.fc1.weight, model.fc1.bias, model.head.weight):  # head.bias: 10 draws, too few for a std
        assert float(p.std()) == pytest.approx(0.01, rel=0.1) and abs(float(p.mean())) < 2e-3
    assert float(model.head.bias.abs().max()) < 0.05
    x = torch.rand(3, 1, 28, 28)
    raw = model.head(model.forward_features(x))
    torch.testing.assert_close(model(x), raw / 2000 ** 0.5)


def test_one_default_gamma_for_the_regularizer_the_zoo_and_the_recipes():
    import inspect

    from repspec_zoo.spectral import DEFAULT_GAMMA
    from repspec_zoo.training.config import RegularizerConfig

    signature = inspect.signature(SpectralRegularizer).parameters["gamma"].default
    zoo = timm.create_model("resnet_small_repspectral", num_classes=10).spectral.gamma
    assert signature == zoo == RegularizerConfig().gamma == DEFAULT_GAMMA == 1e-3
