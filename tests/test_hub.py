"""Export, model card, publish to a loopback Hub, load back offline from the HF cache; bad inputs."""
import json
import time

import pytest
import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

import repspec_zoo
from repspec_zoo import cli
from repspec_zoo.hub import exporting
from repspec_zoo.models import pretrained
from repspec_zoo.models.registry import HF_ORG
from repspec_zoo.spectral import select_layers

from hub_server import HubServer

NAME = "resnet_small_repspectral.fmnist"
EVAL = {"clean_acc": 0.8125, "attack": "ta", "budgets": [300, 1000], "l2_mean": {"300": 2.5, "1000": 1.25},
        "l2_median": {"300": 2.25, "1000": 1.125}, "n_samples": 64, "per_sample": {"index": [3, 5]}}
FILES = ["README.md", "config.json", "eval.json", "model.safetensors"]
COMMAND = "accelerate launch recipes/train.py --config recipes/configs/fmnist_resnet_small_rep.yaml"
ARCH_OF_MODE = {"rep": "resnet_small_repspectral", "repbn": "resnet_small_repspectralbn", "ll": "resnet_small_llspectral",
                "none": "resnet_small_baseline",
                "adv": "resnet_small_advtrained", "ddsnr": "resnet_small_ddsnr"}
ZOO_PATTERNS = ["*_repspectral*", "*_llspectral*", "*_baseline*", "*_advtrained*", "*_ddsnr*"]


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch):
    """HF_HOME in tmp_path (cache, token), offline, no bundled weights: nothing outside tmp_path is touched."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for key, value in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_TOKEN_PATH": home / "token",
                       "HF_STORED_TOKENS_PATH": home / "stored_tokens"}.items():
        monkeypatch.setattr(pretrained.hf_constants, key, str(value))
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    return home


def go_online(monkeypatch, endpoint: str) -> None:
    """As HF_HUB_OFFLINE=0 HF_ENDPOINT=endpoint would at import time."""
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained.hf_constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(pretrained.hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def make_run(path, mode="rep", num_classes=10, evaluation=EVAL):
    """A training run directory as recipes/train.py writes it; returns (run_dir, plain weights)."""
    model = timm.create_model(ARCH_OF_MODE[mode], num_classes=num_classes)
    if hasattr(model, "spectral"):  # fills the regularizer's buffers, which export must strip
        model(torch.rand(2, 1, 28, 28))
        model.spectral.penalty()
    path.mkdir(parents=True)
    safetensors.torch.save_file(model.state_dict(), path / "model.safetensors")
    regularizer = dict(mode=mode, gamma=1e-3, every=1, estimator="power", bn_aware=False, burn_in_epochs=2,
                       ddsnr_lambda=0.01, ddsnr_eps=0.5, ddsnr_iters=10, pgd_eps=0.5, pgd_steps=10)
    config = dict(model="resnet_small", num_classes=10, dataset="fashion_mnist", regularizer=regularizer, epochs=3)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "eval.json").write_text(json.dumps(evaluation))
    (path / "run.json").write_text(json.dumps({"command": COMMAND, "epochs": 3}))
    return path, {k: v for k, v in model.state_dict().items() if not k.startswith("spectral.")}


def plain_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("spectral.")}


def assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def metrics(card: ModelCard) -> dict:
    return {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}


@pytest.mark.parametrize("mode, name", [("rep", NAME), ("repbn", "resnet_small_repspectralbn.fmnist"),
                                        ("none", "resnet_small_baseline.fmnist")])
def test_export_writes_a_hub_folder_with_card(tmp_path, capsys, mode, name):
    run, weights = make_run(tmp_path / "run", mode)
    out = tmp_path / "export" / name
    cli.main(["export", str(run), "--to", str(out)])
    assert f"exported {name}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == FILES

    assert_same(safetensors.torch.load_file(out / "model.safetensors"), weights)
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("resnet_small", 10, 64)
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28] and "hf_hub_id" not in config["pretrained_cfg"]
    assert config["zoo_name"] == name and config["dataset"] == "fashion_mnist"
    assert config["weights_sha256"] == pretrained.sha256_hex((out / "model.safetensors").read_bytes())
    assert config["eval"] == {k: v for k, v in EVAL.items() if k != "per_sample"}
    assert json.loads((out / "eval.json").read_text()) == EVAL
    assert config["recipe"]["epochs"] == 3 and config["training"]["command"] == COMMAND
    assert config["repspec_zoo_version"] == repspec_zoo.__version__
    regularizer = config["regularizer"]
    if mode in ("rep", "repbn"):  # repbn penalizes rep's layers, each with its BatchNorm folded in
        layers = list(select_layers(timm.create_model("resnet_small"), "rep"))
        assert (regularizer["gamma"], regularizer["layers"], regularizer["burn_in_epochs"]) == (1e-3, layers, 2)
    else:
        assert (regularizer["mode"], regularizer["gamma"], regularizer["layers"]) == ("none", 0.0, [])

    card = ModelCard.load(out / "README.md")
    assert metrics(card) == {("accuracy", None): 0.8125, ("ta_l2_mean", "queries=300"): 2.5,
                             ("ta_l2_median", "queries=300"): 2.25, ("ta_l2_mean", "queries=1000"): 1.25,
                             ("ta_l2_median", "queries=1000"): 1.125}
    assert (card.data.license, card.data.library_name) == ("apache-2.0", "timm")
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert {"rep": "rep-spectral", "repbn": "rep-spectral-bn", "none": "baseline"}[mode] in card.data.tags
    assert COMMAND in card.text and f"hf-hub:{HF_ORG}/{name}" in card.text
    assert_same(timm.create_model(f"local-dir:{out}", pretrained=True).state_dict(), weights)  # plain timm


def test_card_without_finite_attack_stats_has_accuracy_only(tmp_path):
    run, _ = make_run(tmp_path / "run", "ll", evaluation={"clean_acc": 0.5, "l2_mean": {"100": float("inf")}})
    exported = exporting.export(run, tmp_path / "out", repo_id="me/x")
    card = ModelCard.load(exported.folder / "README.md")
    assert metrics(card) == {("accuracy", None): 0.5} and "hf-hub:me/x" in card.text
    assert "| TA mean (broken samples) L2 @ 100 queries | inf |" in card.text
    assert "ll-spectral" in card.data.tags


def test_publish_then_load_offline_from_cache(tmp_path, monkeypatch, capsys):
    run, weights = make_run(tmp_path / "run")
    repo = f"{HF_ORG}/{NAME}"  # the zoo's own hf_hub_id, published to the loopback Hub
    with HubServer() as server:
        go_online(monkeypatch, server.url)
        cli.main(["publish", str(run), "--endpoint", server.url, "--private"])
        commit = capsys.readouterr().out.strip().rsplit("/", 1)[-1]
        info = HfApi(endpoint=server.url).model_info(repo)
        assert info.sha == commit and info.private
        assert sorted(s.rfilename for s in info.siblings) == FILES
        assert_same(plain_state(timm.create_model(NAME, pretrained=True)), weights)  # downloads to the cache
        assert_same(timm.create_model(f"hf-hub:{repo}", pretrained=True).state_dict(), weights)
        exporting.publish(run, repo_id=f"fork/{NAME}", endpoint=server.url)
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=f"fork/{NAME}"))
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    served = len(server.requests)

    model = timm.create_model(NAME, pretrained=True)
    assert_same(plain_state(model), weights)
    assert model.spectral.gamma == 1e-3
    plain = timm.create_model(f"hf-hub:{repo}", pretrained=True)
    assert type(plain).__name__ == "ResNetSmall" and not hasattr(plain, "spectral")
    assert_same(plain.state_dict(), weights)
    assert plain.pretrained_cfg["label_names"][0] == "T-shirt/top"
    fork = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=f"fork/{NAME}"))
    assert_same(plain_state(fork), weights)
    row = next(r for r in repspec_zoo.list_pretrained() if r.name == NAME)
    summary = (row.source, row.gamma, row.clean_acc, row.l2_mean, row.queries)
    assert summary == ("hf-cache", 1e-3, 0.8125, 1.25, 1000)
    assert len(server.requests) == served


def test_refused_upload_is_a_clear_error_and_leaves_nothing_locally(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with HubServer(refuse_uploads=True) as server:
        go_online(monkeypatch, server.url)
        with pytest.raises(exporting.PublishError, match=rf"{server.url} refused to publish {NAME} to me/{NAME}.*403"):
            exporting.publish(run, repo_id=f"me/{NAME}", endpoint=server.url)
    assert server.repos == {}
    assert list(scratch.iterdir()) == [] and sorted(p.name for p in run.iterdir()) == before


def test_publish_offline_is_refused_before_any_work(tmp_path):
    with pytest.raises(exporting.PublishError, match="HF_HUB_OFFLINE=1 is set"):
        exporting.publish(tmp_path / "no-such-run", endpoint="http://127.0.0.1:9")


def test_offline_without_cache_fails_at_once(monkeypatch):
    with HubServer() as server:
        monkeypatch.setattr(pretrained.hf_constants, "ENDPOINT", server.url)
        start = time.monotonic()
        with pytest.raises(pretrained.PretrainedWeightsUnavailable, match=r"offline \(HF_HUB_OFFLINE=1\) and not in"):
            timm.create_model(NAME, pretrained=True)
        assert time.monotonic() - start < 2.0
    assert server.requests == []


def test_list_pretrained_reads_bundled_weights(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run", "none")
    exporting.export(run, pretrained.WEIGHTS_DIR / "resnet_small_baseline.fmnist")
    rows = {r.name: r for r in repspec_zoo.list_pretrained()}
    assert set(rows) == set(timm.list_pretrained(ZOO_PATTERNS))
    row = rows["resnet_small_baseline.fmnist"]
    summary = (row.source, row.dataset, row.gamma, row.clean_acc, row.l2_mean)
    assert summary == ("bundled", "fashion_mnist", 0.0, 0.8125, 1.25)
    assert (rows[NAME].source, rows[NAME].clean_acc, rows[NAME].hf_hub_id) == ("hub", None, f"{HF_ORG}/{NAME}")
    cli.main(["list-pretrained"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(row.name))
    assert line.split()[1:] == ["fashion_mnist", "0e+00", "0.8125", "1.2500", "-", "1000", "bundled", "TA"]


ROTH_EXPORTS = {  # mode: (zoo name, config.json's regularizer, what the card says, card tag)
    "adv": ("resnet_small_advtrained.fmnist", {"mode": "adv", "pgd_eps": 0.5, "pgd_steps": 10},
            "L2-PGD adversarial training", "adversarial-training"),
    "ddsnr": ("resnet_small_ddsnr.fmnist", {"mode": "ddsnr", "ddsnr_lambda": 0.01, "ddsnr_eps": 0.5, "ddsnr_iters": 10},
              "data-dependent spectral norm regularization", "data-dependent-spectral-norm"),
}


@pytest.mark.parametrize("mode", list(ROTH_EXPORTS))
def test_export_of_a_roth_baseline_run(tmp_path, mode):
    """adv/ddsnr runs export as plain models: their settings instead of gamma, a card that names the method."""
    name, settings, text, tag = ROTH_EXPORTS[mode]
    run, weights = make_run(tmp_path / "run", mode)
    exported = exporting.export(run, pretrained.WEIGHTS_DIR / name)
    assert exported.name == name
    config = json.loads((exported.folder / "config.json").read_text())
    assert config["regularizer"] == {**settings, "layers": [], "burn_in_epochs": 2}
    card = ModelCard.load(exported.folder / "README.md")
    assert text in card.text and "Roth et al. 2020" in card.text and "gamma=" not in card.text
    assert tag in card.data.tags and "baseline" not in card.data.tags
    assert metrics(card)[("accuracy", None)] == 0.8125
    model = timm.create_model(name, pretrained=True)
    assert not hasattr(model, "spectral")
    assert_same(model.state_dict(), weights)
    row = next(r for r in repspec_zoo.list_pretrained() if r.name == name)
    assert (row.source, row.gamma, row.clean_acc) == ("bundled", None, 0.8125)
    edit_config(run, regularizer={"mode": mode, "gamma": 1e-3})
    missing = ", ".join(f"regularizer.{key}" for key in settings if key != "mode")
    with pytest.raises(exporting.ExportError, match=rf"{missing} missing for mode='{mode}'"):
        exporting.export(run, tmp_path / "cards" / name)


def edit_config(run, **changes) -> None:
    """Rewrite the run's config.yaml with ``changes``; a value of None deletes the key."""
    config = {**yaml.safe_load((run / "config.yaml").read_text()), **changes}
    (run / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))


def truncate_weights(run) -> None:
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])


BAD_RUNS = {  # case: (how the run is broken, what the error must say)
    "truncated weights": (truncate_weights, "not a valid safetensors file"),
    "wrong num_classes": (lambda run: edit_config(run, num_classes=7),
                          r"(?s)does not fit timm 'resnet_small' with num_classes=7.*size mismatch for fc.weight"),
    "no eval": (lambda run: (run / "eval.json").unlink(), "has no eval.json"),
    "no regularizer": (lambda run: edit_config(run, regularizer=None), r"lacks \['regularizer'\]"),
    "other img_size": (lambda run: edit_config(run, dataset={"name": "fashion_mnist", "img_size": 32}),
                       r"trained at img_size=32, but resnet_small_repspectral.fmnist is defined at input_size="),
    "no zoo arch": (lambda run: edit_config(run, regularizer={"mode": "bss"}),
                    r"no arch for model='resnet_small' with regularizer mode='bss'.*_BASE_MODES"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_runs_are_clear_errors_and_write_nothing(tmp_path, case):
    run, _ = make_run(tmp_path / "run")
    damage, message = BAD_RUNS[case]
    damage(run)
    with pytest.raises(exporting.ExportError, match=message):
        exporting.export(run, tmp_path / "cards" / NAME)
    assert not (tmp_path / "cards").exists() or list((tmp_path / "cards").iterdir()) == []


def test_export_replaces_an_export_only_with_force_and_never_another_folder(tmp_path):
    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "cards" / NAME
    exporting.export(run, out)
    (out / "stale.txt").write_text("from an older export")
    with pytest.raises(exporting.ExportError, match=rf"{out} already holds an exported model; pass --force"):
        exporting.export(run, out)
    assert (out / "stale.txt").exists()
    cli.main(["export", str(run), "--to", str(out), "--force"])
    assert not (out / "stale.txt").exists() and sorted(p.name for p in (tmp_path / "cards").iterdir()) == [NAME]
    with pytest.raises(exporting.ExportError, match="exists and is not an exported zoo model"):
        exporting.export(run, tmp_path / "cards", force=True)
    assert (out / "config.json").is_file()


def test_architecture_kwargs_travel_with_the_export(tmp_path):
    """A run trained with model_kwargs (the authors' slp: logits / sqrt(width)) exports them as config.json
    model_args; the zoo name and plain timm's local-dir: route rebuild the same function, not the default."""
    torch.manual_seed(0)
    kwargs = dict(hidden_dim=16, init_std=0.01, scale_logits=True)
    model = timm.create_model("slp", num_classes=10, **kwargs)
    run = tmp_path / "run"
    run.mkdir()
    safetensors.torch.save_file(model.state_dict(), run / "model.safetensors")
    config = dict(model="slp", model_kwargs=kwargs, num_classes=10, dataset="fashion_mnist", epochs=1,
                  regularizer=dict(mode="rep", gamma=2e-3, every=1, burn_in_epochs=0))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "eval.json").write_text(json.dumps(EVAL))
    name = "slp_repspectral.fmnist"
    exporting.export(run, pretrained.WEIGHTS_DIR / name)
    assert json.loads((pretrained.WEIGHTS_DIR / name / "config.json").read_text())["model_args"]["scale_logits"] is True
    x = torch.rand(4, 1, 28, 28)
    expected = model.eval()(x)
    for loaded in (timm.create_model(name, pretrained=True), timm.create_model(f"local-dir:{pretrained.WEIGHTS_DIR / name}",
                                                                                  pretrained=True)):
        torch.testing.assert_close(loaded.eval()(x), expected)


def test_bundle_writes_weights_and_card_under_the_zoo_name(tmp_path, monkeypatch):
    """bundle(): the export (weights, card, config, eval) into the package's weights folder, and nowhere else."""
    run_dir, weights = make_run(tmp_path / "run", mode="adv")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "repspec_zoo" / "weights")
    evidence = "Across 5 seeds: +0.2 [0.1, 0.3], 5 of 5 positive."
    assert exporting.bundle(run_dir, evidence=evidence) == "resnet_small_advtrained.fmnist"
    folder = tmp_path / "repspec_zoo" / "weights" / "resnet_small_advtrained.fmnist"
    assert json.loads((folder / "config.json").read_text())["evidence"] == evidence
    assert f"## Evidence across training seeds\n\n{evidence}" in (folder / "README.md").read_text()
    assert_same(safetensors.torch.load_file(folder / "model.safetensors"), weights)
    assert sorted(p.name for p in folder.iterdir()) == FILES
    assert json.loads((folder / "config.json").read_text())["regularizer"]["mode"] == "adv"
    assert {p.parent for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(run_dir)} == {folder}
