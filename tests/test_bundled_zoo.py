"""The zoo's bundled models load offline with pretrained=True and reproduce their cards."""
import json

import pytest
import timm

import repspec_zoo  # noqa: F401
from repspec_zoo import data
from repspec_zoo.models import pretrained
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.evaluation.evaluate import evaluate
from repspec_zoo.models.registry import ARCHS, TAGS

BUNDLED = sorted(p.name for p in pretrained.WEIGHTS_DIR.iterdir() if (p / pretrained.WEIGHTS_FILE).is_file())
CLASSIFIERS = [name for name in BUNDLED if TAGS[name.split(".")[1]].num_classes]  # headless: tests/test_ssl_zoo.py
FAMILIES = {base for base, _ in ARCHS.values() if base in ("slp", "resnet_small")}


def test_every_cpu_family_ships_baseline_ll_and_rep_weights():
    shipped = {name.split(".")[0] for name in BUNDLED}
    assert {f"{base}_{kind}" for base in FAMILIES for kind in ("baseline", "llspectral", "repspectral")} <= shipped


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_config_marks_the_fixed_input_size_the_arch_has(name):
    """slp flattens its 28x28 input (fixed_input_size in tiny.py); resnet_small pools any size."""
    published = json.loads((pretrained.WEIGHTS_DIR / name / "config.json").read_text())["pretrained_cfg"]
    base = ARCHS[name.split(".")[0]][0]
    assert published["fixed_input_size"] == timm.get_pretrained_cfg(name).fixed_input_size == (base == "slp")


@pytest.fixture(scope="module")
def fmnist_test():
    return data.as_tensors(data.load_split("fashion_mnist", "test"))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_bundled_model_reproduces_its_card_clean_accuracy(name, fmnist_test):
    card = json.loads((pretrained.WEIGHTS_DIR / name / "eval.json").read_text())
    model = timm.create_model(name, pretrained=True)
    if hasattr(model, "spectral"):
        model.spectral.remove()
    result = evaluate(NormalizedModel(model), fmnist_test, attack=None, batch_size=1000)
    assert result.n_test == card["n_test"] == 10000
    assert result.clean_acc == card["clean_acc"]
    # the model card's metadata carries the same number
    assert f"{card['clean_acc']:.4f}"[:5] in (pretrained.WEIGHTS_DIR / name / "README.md").read_text()
