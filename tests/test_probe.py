"""Linear probe (repspec_zoo.evaluation.linear_probe) and `repspec-zoo probe`: the fit against scikit-learn, chance, trained vs random."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import repspec_zoo  # noqa: F401
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.cli import main as cli_main
from repspec_zoo.data import as_tensors, load_split
from repspec_zoo.evaluation.linear_probe import ProbeError, fit_probe
from repspec_zoo.loader import load_model


@pytest.fixture(scope="module")
def fmnist():
    """1000 training and 500 test Fashion-MNIST images (embedded, seeded class-stratified subsets)."""
    return (as_tensors(load_split("fashion_mnist", "train", limit=1000, seed=0)),
            as_tensors(load_split("fashion_mnist", "test", limit=500, seed=0)))


def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model(split[0]).argmax(1) == split[1]).float().mean())


def test_logistic_probe_is_sklearns_logistic_regression_on_standardized_features(fmnist):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = fmnist
    backbone = timm.create_model("resnet_small", num_classes=0).eval()
    probe = fit_probe(backbone, train, C=0.5)
    assert not any(m.training for m in backbone.modules())  # the backbone's modes are left as found
    wrapped = NormalizedModel(backbone)
    with torch.no_grad():
        phi_train, phi_test = wrapped.features(train[0]).double().numpy(), wrapped.features(test[0]).double().numpy()
        got = torch.softmax(probe.model(test[0]).double(), 1).numpy()
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000)).fit(phi_train, train[1].numpy())
    want = reference.predict_proba(phi_test)
    assert np.abs(got - want).max() < 2e-3  # float32 head vs sklearn's float64
    assert probe.n_train == 1000 and probe.train_acc == pytest.approx(reference.score(phi_train, train[1].numpy()), abs=2e-3)


def test_probe_on_random_features_is_chance_and_a_trained_backbone_scores_clearly_more(fmnist):
    train, test = fmnist
    random_init = timm.create_model("resnet_small", num_classes=0)
    trained = load_model("resnet_small_baseline.fmnist")  # supervised Fashion-MNIST weights; its head is replaced
    shuffled = (train[0], train[1][torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(0))])
    # labels independent of the images: no probe can beat chance (10 classes) on the test split
    assert _accuracy(fit_probe(random_init, shuffled).model, test) < 0.2
    random_acc = _accuracy(fit_probe(random_init, train).model, test)
    trained_acc = _accuracy(fit_probe(trained, train).model, test)
    linear_acc = _accuracy(fit_probe(trained, train, method="linear").model, test)
    # random conv features are far from useless on Fashion-MNIST (measured ~0.74 vs ~0.83 at 2000 images)
    assert 0.3 < random_acc < trained_acc - 0.04
    assert abs(linear_acc - trained_acc) < 0.04


def test_probe_rejects_bad_inputs(fmnist):
    train, _ = fmnist
    backbone = timm.create_model("resnet_small", num_classes=0)
    with pytest.raises(ProbeError, match="at least two classes"):
        fit_probe(backbone, (train[0][:10], torch.zeros(10, dtype=torch.long)))
    broken = timm.create_model("resnet_small", num_classes=0).eval()
    broken.bn1.running_var.fill_(float("nan"))
    with pytest.raises(ProbeError, match="non-finite features"):
        fit_probe(broken, train)
    with pytest.raises(ProbeError, match="choose one of"):
        fit_probe(backbone, train, method="svm")


def test_probe_command_fits_and_evaluates_backbone_plus_probe(tmp_path, capsys):
    out = tmp_path / "probe.json"
    cli_main(["probe", "resnet_small_baseline.fmnist", "--dataset", "fashion_mnist", "--train-limit", "300",
              "--limit", "100", "--n", "2", "--budgets", "40", "--attack", "ta", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["n_test"] == 100 and 0.5 < saved["clean_acc"] <= 1.0 and saved["attack"] == "ta"
    assert saved["settings"]["probe"]["method"] == "logistic" and saved["settings"]["probe"]["n_train"] == 300
    assert "linear probe (logistic" in capsys.readouterr().out
