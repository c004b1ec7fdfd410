"""Every registered zoo model: create, forward, backward, features, head reset, pretrained weights."""
import json

import pytest
import safetensors.torch
import timm
import torch

import repspec_zoo
from repspec_zoo import cli
from repspec_zoo.models import pretrained
from repspec_zoo.models import ARCHS, PretrainedWeightsUnavailable
from repspec_zoo.models.registry import BASE_TAGS, TAGS, arch_tags, zoo_model_name
from repspec_zoo.models.zoo import UnknownModelError
from repspec_zoo.regularizers.registry import SPECTRAL_MODES

TINY = ("slp", "resnet_small")
MODELS = [*ARCHS, *TINY]
ROTH_BASELINES = {"resnet_small_advtrained": "adv", "resnet_small_ddsnr": "ddsnr"}  # plain timm models
ZOO_PATTERNS = ["*_repspectral*", "*_llspectral*", "*_baseline*", "*_advtrained*", "*_ddsnr*"]


def input_shape(model) -> tuple[int, ...]:
    """(C, H, W) small enough to keep the test fast: ResNet-18/50 at 32x32, tiny archs at their size."""
    c, h, w = model.pretrained_cfg["input_size"]
    return (c, 32, 32) if h > 32 else (c, h, w)


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """An empty bundled-weights folder and an empty HF cache, offline."""
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "weights"


def bundle(folder, name: str, model: torch.nn.Module) -> dict:
    """Ship ``model``'s plain weights as bundled weights of ``name``; returns the state dict."""
    state_dict = {k: v for k, v in model.state_dict().items() if not k.startswith("spectral.")}
    payload = safetensors.torch.save(state_dict)
    config = {"architecture": ARCHS[name.split(".")[0]][0], "num_classes": model.num_classes,
              "pretrained_cfg": {"classifier": model.pretrained_cfg["classifier"]},
              pretrained.SHA_KEY: pretrained.sha256_hex(payload)}
    (folder / name).mkdir(parents=True)
    (folder / name / pretrained.WEIGHTS_FILE).write_bytes(payload)
    (folder / name / pretrained.HUB_CONFIG_FILE).write_text(json.dumps(config))
    return state_dict


def default_name(arch: str) -> str:
    return f"{arch}.{BASE_TAGS[ARCHS[arch][0]][0]}"


def forward_backward(model, x) -> None:
    """Output shape right, and every parameter gets a finite gradient (penalty included)."""
    out = model(x)
    assert out.shape == (2, model.num_classes)
    (out.square().mean() + (model.spectral.penalty() if hasattr(model, "spectral") else 0)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()] == []


@pytest.mark.parametrize("arch", list(ARCHS))
def test_zoo_model(arch, bundled):
    """create, forward, backward; its weights bundled -> pretrained=True loads them; reset_classifier."""
    name = default_name(arch)
    model = timm.create_model(arch)
    assert model.pretrained_cfg["architecture"] == arch and model.pretrained_cfg["tag"] == name.split(".")[1]
    assert hasattr(model, "spectral") == (ARCHS[arch][1] in SPECTRAL_MODES)
    x = torch.rand(2, *input_shape(model))
    forward_backward(model, x)
    expected = bundle(bundled, name, model)
    loaded = timm.create_model(arch, pretrained=True)
    state = {k: v for k, v in loaded.state_dict().items() if not k.startswith("spectral.")}
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    loaded.reset_classifier(3)
    assert loaded(x).shape == (2, 3)


@pytest.mark.parametrize("name", TINY)
def test_tiny_model(name):
    model = timm.create_model(name)
    x = torch.rand(2, *input_shape(model))
    forward_backward(model, x)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("name", [n
                                  for n in MODELS])
def test_features_only(name):
    model = timm.create_model(name, features_only=True)
    features = model(torch.rand(2, *input_shape(model)))
    assert [f.shape[1] for f in features] == model.feature_info.channels()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pretrained_without_weights_is_a_clear_error(arch, bundled):
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        timm.create_model(arch, pretrained=True)
    message = str(err.value)
    for part in (default_name(arch), "HF_HUB_OFFLINE=1", "recipes/train.py", "checkpoint_path=", "pretrained=False"):
        assert part in message


def test_pretrained_features_only_loads_backbone(bundled):
    name = "resnet18_baseline.cifar10"
    expected = bundle(bundled, name, timm.create_model(name))
    model = timm.create_model(name, pretrained=True, features_only=True, out_indices=(2, 3))
    assert torch.equal(model.layer2[0].conv1.weight, expected["layer2.0.conv1.weight"])
    assert len(model(torch.rand(2, 3, 32, 32))) == 2


def test_other_num_classes_reinitializes_head_with_a_warning(bundled):
    name = "resnet_small_repspectral.fmnist"
    expected = bundle(bundled, name, timm.create_model(name))
    with pytest.warns(UserWarning, match=r"has 10 classes and num_classes=4 was asked: its classifier 'fc'"):
        model = timm.create_model(name, pretrained=True, num_classes=4)
    assert model.fc.out_features == 4
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])


def test_inconsistent_checkpoint_head_is_refused(bundled):
    name = "slp_baseline.fmnist"
    bundle(bundled, name, timm.create_model(name, num_classes=7))  # head of 7, config says 7 ...
    config_path = bundled / name / pretrained.HUB_CONFIG_FILE
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "num_classes": 10}))  # ... now 10
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"'head' has 7 outputs but config.json says num_classes=10"):
        timm.create_model(name, pretrained=True)


def test_tampered_bundled_weights_are_refused(bundled):
    name = "resnet_small_llspectral.digits"
    bundle(bundled, name, timm.create_model(name))
    weights = bundled / name / pretrained.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"sha256 .* does not match .* corrupted or was modified"):
        timm.create_model(name, pretrained=True)


def test_truncated_bundled_weights_are_refused(bundled):
    name = "resnet_small_llspectral.digits"
    bundle(bundled, name, timm.create_model(name))
    weights, config_path = bundled / name / pretrained.WEIGHTS_FILE, bundled / name / pretrained.HUB_CONFIG_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                       pretrained.SHA_KEY: pretrained.sha256_hex(weights.read_bytes())}))
    with pytest.raises(pretrained.PretrainedWeightsError, match="not a valid safetensors file"):
        timm.create_model(name, pretrained=True)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean resnet50_repspectral"):
        repspec_zoo.create_model("resnet50_repspectrall")


def test_unknown_tag_lists_the_tags():
    with pytest.raises(UnknownModelError, match=r"unknown pretrained tag 'in22k'.*resnet_small_repspectral.fmnist, "
                                                r"resnet_small_repspectral.digits"):
        timm.create_model("resnet_small_repspectral.in22k")
    with pytest.raises(UnknownModelError, match="unknown pretrained tag"):
        repspec_zoo.create_model("resnet_small_repspectral.in22k")


def test_every_zoo_model_has_pretrained_cfgs_under_one_namespace():
    names = timm.list_pretrained(ZOO_PATTERNS)
    assert sorted(names) == sorted(f"{a}.{t}" for a in ARCHS for t in arch_tags(a))
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        tag = TAGS[name.split(".")[1]]
        assert cfg.hf_hub_id == f"repspec-zoo/{name}"
        assert (cfg.num_classes, cfg.input_size, cfg.mean) == (tag.num_classes, tag.input_size, tag.mean)
        assert "arXiv:2405.17181" in cfg.paper_ids and cfg.license == "apache-2.0"
    assert {a for a, (_, mode) in ARCHS.items() if mode == "none"} == {a for a in ARCHS if a.endswith("_baseline")}


@pytest.mark.parametrize("arch", list(ROTH_BASELINES))
def test_roth_baselines_are_plain_timm_models(arch):
    """adv/ddsnr models carry no regularizer: the plain base model's weights load strictly."""
    model = timm.create_model(arch, num_classes=10)
    assert ARCHS[arch] == ("resnet_small", ROTH_BASELINES[arch]) and not hasattr(model, "spectral")
    plain = timm.create_model("resnet_small", num_classes=10).state_dict()
    model.load_state_dict(plain, strict=True)
    assert model.state_dict().keys() == plain.keys()
    assert "Roth et al. 2020" in model.pretrained_cfg["description"]


@pytest.mark.parametrize("mode, arch", [("adv", "resnet_small_advtrained"), ("ddsnr", "resnet_small_ddsnr")])
def test_zoo_model_name_of_roth_baselines(mode, arch):
    assert zoo_model_name("resnet_small", mode, "fashion_mnist") == f"{arch}.fmnist"
    with pytest.raises(ValueError, match=rf"no arch for model='slp' with regularizer mode='{mode}'"):
        zoo_model_name("slp", mode, "fashion_mnist")


def test_cli_list_names_every_regularizer(capsys):
    cli.main(["list"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(ARCHS)
    assert "regularizer=adv (L2-PGD)" in lines["resnet_small_advtrained"]
    assert "regularizer=ddsnr" in lines["resnet_small_ddsnr"]
    assert "regularizer=rep-spectral" in lines["slp_repspectral"]
    assert "regularizer=none (baseline)" in lines["slp_baseline"]


def test_every_arch_has_one_greppable_entrypoint_in_zoo_py():
    """Each ARCHS name is a ``def NAME`` under ``@zoo_model`` in models/zoo.py (no generated names), registered in
    timm with its spec's docstring."""
    import ast
    import inspect

    from repspec_zoo.models import zoo
    from repspec_zoo.regularizers.registry import REGULARIZERS

    tree = ast.parse(inspect.getsource(zoo))
    decorated = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                 and any(isinstance(d, ast.Name) and d.id == "zoo_model" for d in node.decorator_list)]
    assert sorted(decorated) == sorted(ARCHS) and len(set(decorated)) == len(decorated)
    for name, (base, mode) in ARCHS.items():
        entrypoint = timm.models.model_entrypoint(name)
        assert entrypoint is getattr(zoo, name) and entrypoint.__doc__ == REGULARIZERS[mode].doc.format(base=base)
