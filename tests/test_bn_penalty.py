"""The BatchNorm-correct rep-spectral penalty (mode 'repbn', SpectralRegularizer(bn_aware=True)) in training.

Ground truth is computed here without the regularizer: the conv's output variance over the batch from a
forward hook of our own, the folded kernel diag(g / sqrt(var + eps)) W, its dense operator and SVD.
"""
import pytest
import timm
import torch
from torch import nn

import repspec_zoo  # noqa: F401  (registers the zoo)
from repspec_zoo.spectral import attach_spectral
from repspec_zoo.training import load_config
from repspec_zoo.training.config import ConfigError

from test_spectral_regularizer import dense_operator, input_shapes

GAMMA = 0.3


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("resnet_small_repspectralbn", num_classes=4, widths=(2, 3, 4), gamma=GAMMA).double()
    with torch.no_grad():  # gains away from 1, so that folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.3, 2.5)
    x = torch.rand(6, 1, 7, 6, dtype=torch.float64)
    return model.train(), x


def folded_dense(model, x):
    """{conv name: dense matrix of BN(train) o conv} from an independent forward with batch statistics."""
    outs, pairs = {}, {}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)) for n, m in convs.items()]
    bn_in = {}
    hooks += [m.register_forward_pre_hook(lambda m, a, n=n: bn_in.__setitem__(n, a[0]))
              for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    model(x)
    for h in hooks:
        h.remove()
    shapes = input_shapes(model, x)
    for bn_name, inp in bn_in.items():
        conv_name = next(n for n, o in outs.items() if o is inp)
        bn, conv = model.get_submodule(bn_name), convs[conv_name]
        var = inp.var(dim=(0, 2, 3), unbiased=False)
        scale = bn.weight / torch.sqrt(var + bn.eps)
        dense = dense_operator(conv, shapes[conv_name])
        pairs[conv_name] = scale.repeat_interleave(dense.shape[0] // conv.out_channels)[:, None] * dense
    return pairs


def exact_penalty(model, x):
    return 0.5 * GAMMA * sum(torch.linalg.matrix_norm(d, ord=2) ** 2 for d in folded_dense(model, x).values())


def set_exact(model, x):
    """Run the training forward and put the dense top singular pair of each folded conv into the state."""
    dense = folded_dense(model, x)
    model(x)
    for name, d in dense.items():
        U, S, Vh = torch.linalg.svd(d.detach())
        state = model.spectral.states[name.replace(".", "__")]
        state.u.copy_(U[:, 0].reshape(state.u.shape))
        state.v.copy_(Vh[0].reshape(state.v.shape))
        state.needs_warmup = False
    return dense


def test_every_conv_is_paired_and_penalty_equals_dense_svd_of_the_batch_folded_operator():
    model, x = tiny_resnet()
    dense = set_exact(model, x)
    assert set(model.spectral.bn_pairs.bn_of) == set(dense) == set(model.spectral.layer_names)  # the fc head has no BN
    penalty = float(model.spectral.penalty())
    assert penalty == pytest.approx(float(exact_penalty(model, x)), rel=1e-9)
    raw = sum(torch.linalg.matrix_norm(dense_operator(model.get_submodule(n), s), ord=2) ** 2
              for n, s in input_shapes(model, x).items() if n in dense)
    assert penalty != pytest.approx(0.5 * GAMMA * float(raw), rel=1e-2)  # the raw kernels' value differs


def without_eps(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-14  # BN itself is scale invariant up to eps; take it out of exact comparisons
    return model


def test_penalty_is_invariant_to_the_scale_of_the_conv_weights_under_batch_statistics():
    model, x = tiny_resnet()
    without_eps(model)
    set_exact(model, x)
    before = float(model.spectral.penalty())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(7.0)
    set_exact(model, x)
    after = model.spectral.penalty()
    assert float(after) == pytest.approx(before, rel=1e-9)
    assert float(after) == pytest.approx(float(exact_penalty(model, x)), rel=1e-9)


def test_penalty_gradient_matches_finite_differences_through_the_batch_variance():
    model, x = tiny_resnet(seed=1)
    set_exact(model, x)
    model.spectral.penalty().backward()
    params = {"conv1.weight": (0, 0, 1, 1), "layer2.0.conv2.weight": (1, 2, 0, 2), "bn1.weight": (1,),
              "layer3.0.bn1.weight": (2,)}
    for name, index in params.items():
        p = model.get_parameter(name)
        h = 1e-6
        with torch.no_grad():
            p[index] += h
            up = float(exact_penalty(model, x))
            p[index] -= 2 * h
            down = float(exact_penalty(model, x))
            p[index] += h
        assert float(p.grad[index]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9), name
    # scale invariance => the gradient is orthogonal to each conv weight: <grad, W> = 0
    model, x = tiny_resnet(seed=1)
    without_eps(model)
    set_exact(model, x)
    model.spectral.penalty().backward()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert float((m.weight.grad * m.weight).sum()) == pytest.approx(0.0, abs=1e-9)


def test_eval_mode_uses_the_running_variance():
    model, x = tiny_resnet()
    model(x)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    bn, conv = model.bn1, model.conv1
    folded = model.spectral._weight("conv1")
    expected = conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None, None, None]
    torch.testing.assert_close(folded, expected)


@pytest.mark.parametrize("arch, img", [("resnet18", 32), ("resnet50", 32), ("mobilenetv3_small_050", 32)])
def test_works_on_timm_models_including_batchnormact(arch, img):
    """resnet18/50 pair every conv with an nn.BatchNorm2d; mobilenetv3 with timm's BatchNormAct2d."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=3).train()
    reg = attach_spectral(model, gamma=1e-3, bn_aware=True)
    x = torch.rand(4, 3, img, img)
    model(x)
    paired = reg.bn_pairs.bn_of
    convs = [n for n in reg.layer_names if isinstance(model.get_submodule(n), nn.Conv2d)]
    if arch.startswith("resnet"):
        assert set(paired) == set(convs)
    else:
        assert any(isinstance(bn, BatchNormAct2d) for bn in paired.values())
    penalty = reg.penalty()
    penalty.backward()
    name = next(iter(paired))
    bn = paired[name]
    assert torch.isfinite(penalty) and bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    # the batch variance, not the running one, is folded in training
    y = {}
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: y.__setitem__("out", o))
    model(x)
    h.remove()
    var = y["out"].var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(reg.bn_pairs.scale(name), bn.weight * (var + bn.eps).rsqrt())


def test_repbn_config_refuses_the_direct_step_and_convwd_penalizes_the_rep_layers():
    with pytest.raises(ConfigError, match="repbn with apply=direct"):
        load_config("recipes/configs/fmnist_resnet_small_repspectral.yaml", ["regularizer.mode=repbn",
                                                                               "regularizer.apply=direct"])
    from repspec_zoo.regularizers.registry import get_spec

    cfg = load_config("recipes/configs/fmnist_resnet_small_baseline.yaml",
                      ["regularizer.mode=convwd", "regularizer.wd_lambda=0.01"])
    model = timm.create_model("resnet_small", num_classes=10)
    step = get_spec("convwd").step(cfg.regularizer, model)
    expected = 0.005 * sum(float(m.weight.square().sum()) for n, m in model.named_modules()
                           if isinstance(m, nn.Conv2d))  # every conv, the fc head excluded
    assert float(step.penalty(model, None, None, None, active=True)) == pytest.approx(expected, rel=1e-6)
    assert step.penalty(model, None, None, None, active=False) is None
