"""Nothing mislabelled, overwritten or loaded unverified: a run's identity, export --force and stale staging
folders, sha256 on timm's hf-hub:/local-dir: routes, damaged weights files named, publish errors, list-pretrained."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import timm
from huggingface_hub import ModelCard, try_to_load_from_cache

import repspec_zoo
from repspec_zoo import cli, loader, runs
from repspec_zoo.hub import cards, exporting, provenance
from repspec_zoo.models import pretrained
from repspec_zoo.models.registry import HF_ORG
from repspec_zoo.models.zoo import UnknownModelError

from hub_server import HubServer
from test_hub import NAME, assert_same, edit_config, go_online, hf_home, make_run  # noqa: F401 (hf_home: autouse)

ROOT = Path(__file__).parents[1]
DATA_DIR = "/data/someone/Cats & Dogs"  # an absolute path of the training machine: no published file may hold it


def custom_run(path, class_names=("cat", "dog"), data_dir=DATA_DIR):
    """A run of the zoo's resnet_small recipe trained with --data-dir on a 2-class folder."""
    run, weights = make_run(path, num_classes=2)
    edit_config(run, num_classes=2, dataset={"name": "fashion_mnist", "data_dir": data_dir})
    command = f"recipes/train.py --config recipes/configs/fmnist_resnet_small_repspectral.yaml --data-dir '{data_dir}'"
    summary = {"command": command, "data_dir": data_dir, **({"class_names": list(class_names)} if class_names else {})}
    (run / "run.json").write_text(json.dumps(summary))
    return run, weights


def test_custom_data_run_exports_under_its_own_name_classes_and_dataset(tmp_path):
    run, weights = custom_run(tmp_path / "run")
    out = tmp_path / "export"
    exported = exporting.export(run, out)
    name = "resnet_small_repspectral.cats_dogs"
    assert (exported.name, exported.repo_id) == (name, None)
    config = json.loads((out / "config.json").read_text())
    assert (config["zoo_name"], config["dataset"], config["num_classes"]) == (name, "Cats & Dogs", 2)
    assert config["label_names"] == ["cat", "dog"] and config["custom_data"] is True
    assert "fashion_mnist" not in config["pretrained_cfg"]["description"]
    card = ModelCard.load(out / "README.md")
    assert f"{HF_ORG}/" not in card.text and f'create_model("{name}"' not in card.text
    assert card.data.datasets is None and "--repo-id ORG/" in card.text
    for file in out.iterdir():  # the training machine's folder is named, never its path
        assert "/data/someone" not in file.read_text(errors="ignore"), file.name
    assert config["recipe"]["dataset"]["data_dir"] == "Cats & Dogs"
    plain = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert plain.pretrained_cfg["label_names"] == ["cat", "dog"]
    assert_same(plain.state_dict(), weights)


def test_custom_data_names_never_look_like_zoo_names_and_old_runs_get_no_foreign_classes(tmp_path):
    run, _ = custom_run(tmp_path / "run", class_names=None, data_dir="/x/fmnist")  # an older run.json
    exported = exporting.export(run, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert exported.name == "resnet_small_repspectral.fmnist_custom" and "label_names" not in config
    edit_config(run, dataset="hf-hub:someone/Tiny-Images.v2")  # a Hub dataset the zoo has no tag for
    assert exporting.export(run, tmp_path / "b").name == "resnet_small_repspectral.tiny_images_v2"
    zoo_run, _ = make_run(tmp_path / "zoo")
    identity = provenance.run_identity(runs.read_run(zoo_run))
    assert (identity.name, identity.custom, identity.class_names[0]) == (NAME, False, "T-shirt/top")


def test_publishing_a_custom_data_run_needs_a_repo_id(tmp_path, monkeypatch):
    run, weights = custom_run(tmp_path / "run")
    with HubServer() as server:
        go_online(monkeypatch, server.url)
        with pytest.raises(exporting.PublishError, match=r"custom data \(Cats & Dogs\).*pass --repo-id ORG/NAME"):
            exporting.publish(run, endpoint=server.url)
        assert server.repos == {}
        exporting.publish(run, repo_id="me/cats", endpoint=server.url)
        card = ModelCard(server.repos["me/cats"].files["README.md"].decode())
        assert "hf-hub:me/cats" in card.text and f"{HF_ORG}/" not in card.text
        assert_same(timm.create_model("hf-hub:me/cats", pretrained=True).state_dict(), weights)
    with pytest.raises(exporting.ExportError, match="only zoo-data runs are bundled"):
        exporting.bundle(run)


def test_stale_staging_folders_of_killed_exports_are_removed(tmp_path):
    run, _ = make_run(tmp_path / "run")
    parent = tmp_path / "exports"
    stale = [parent / f".{NAME}.abc123.tmp", parent / f".{NAME}.999999999.x1.old"]  # older format; a dead process
    alive = parent / f".{NAME}.{os.getpid()}.y2.tmp"  # an export still running in this process
    others = [parent / ".other.1.tmp", parent / f".{NAME}.v2.{os.getpid() + 1}.z3.tmp",  # other names' (NAME.v2)
              parent / f".{NAME}.note.tmp"]  # a file, not a folder
    for folder in (*stale, alive, *others[:2]):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    others[2].write_text("not ours")
    exporting.export(run, parent / NAME)
    assert [p.exists() for p in stale] == [False, False]
    assert alive.is_dir() and all(p.exists() for p in others)
    assert sorted(p.name for p in parent.iterdir() if not p.name.startswith(".")) == [NAME]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_hf_hub_and_local_dir_routes_verify_sha256(tmp_path, monkeypatch):
    run, weights = make_run(tmp_path / "run")
    repo = f"me/{NAME}"
    with HubServer() as server:
        go_online(monkeypatch, server.url)
        exporting.publish(run, repo_id=repo, endpoint=server.url)
        assert_same(timm.create_model(f"hf-hub:{repo}", pretrained=True).state_dict(), weights)  # into the cache
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    cached = Path(try_to_load_from_cache(repo, "model.safetensors"))
    flip_last_byte(cached.resolve())
    with pytest.raises(pretrained.PretrainedWeightsError, match=rf"{re.escape(str(cached))}: sha256 .* does not match"):
        timm.create_model(f"hf-hub:{repo}", pretrained=True)

    folder = exporting.export(run, tmp_path / "export").folder
    flip_last_byte(folder / "model.safetensors")
    with pytest.raises(pretrained.PretrainedWeightsError, match=rf"{folder / 'model.safetensors'}: sha256"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


DAMAGE = {  # how a download or a write failed: (bytes written, what the error says it is)
    "empty": (lambda data: b"", r"it is empty \(0 bytes\)"),
    "truncated": (lambda data: data[: len(data) // 2], r"it is truncated or damaged \(\d+ bytes\)"),
    "html": (lambda data: b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "it is an HTML/XML page, not weights"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_weights_files_are_named_with_the_fix(tmp_path, case):
    damage, what = DAMAGE[case]
    run, _ = make_run(tmp_path / "run")
    bundled = exporting.export(run, pretrained.WEIGHTS_DIR / NAME).folder
    unverified = exporting.export(run, tmp_path / "plain").folder  # a plain timm folder: no sha256 recorded
    config = json.loads((unverified / "config.json").read_text())
    (unverified / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != pretrained.SHA_KEY}))
    for folder in (run, bundled, unverified):
        path = folder / "model.safetensors"
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(runs.RunError, match=rf"{run / 'model.safetensors'} is not a valid safetensors file: {what}"):
        runs.read_run(run)
    for load, folder in ((lambda: timm.create_model(NAME, pretrained=True), bundled),
                         (lambda: timm.create_model(f"local-dir:{unverified}", pretrained=True), unverified)):
        with pytest.raises(pretrained.PretrainedWeightsError,
                           match=rf"{folder / 'model.safetensors'} is not a valid safetensors file: {what}.*Delete it"):
            load()


def test_publish_to_an_unreachable_endpoint_is_one_sentence(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    endpoint = "http://127.0.0.1:9"  # the discard port: nothing listens
    go_online(monkeypatch, endpoint)
    with pytest.raises(exporting.PublishError, match=rf"cannot reach the Hub endpoint {endpoint} .*check --endpoint"):
        exporting.publish(run, repo_id=f"me/{NAME}", endpoint=endpoint)


def test_list_pretrained_shows_what_is_here_and_how_to_see_the_rest(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run", "none")
    exporting.export(run, pretrained.WEIGHTS_DIR / "resnet_small_baseline.fmnist")
    cli.main(["list-pretrained"])
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:-1]]
    missing = len(repspec_zoo.list_pretrained()) - 1
    assert names == ["resnet_small_baseline.fmnist"]
    assert lines[-1] == (f"({missing} more zoo names have no weights on this machine; "
                         "repspec-zoo list-pretrained --all lists them)")
    cli.main(["list-pretrained", "--all"])
    everything = capsys.readouterr().out.splitlines()
    assert len(everything) == 1 + missing + 1 and any(line.startswith(NAME) for line in everything)


def test_load_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"did you mean resnet_small_repspectral"):
        loader.load_model("resnet_small_repspectrall.fmnist")


@pytest.mark.parametrize("arch, needed", [("slp", True), ("resnet18", False)])
def test_cards_say_whether_timm_needs_the_import(arch, needed):
    config = json.loads((ROOT / "repspec_zoo" / "weights" / "slp_repspectral.fmnist" / "config.json").read_text())
    text = cards.render_card({**config, "architecture": arch}, f"{HF_ORG}/x").text
    assert ("import repspec_zoo  # required: registers `slp`" in text) == needed
    assert ("import repspec_zoo  # optional: `resnet18` is a timm architecture" in text) == (not needed)


def test_the_archs_that_need_the_import_are_the_ones_repspec_zoo_defines():
    assert [arch for arch in ("slp", "resnet_small", "resnet18", "resnet50") if cards.needs_repspec_zoo(arch)] == \
        ["slp", "resnet_small"]


def test_portable_paths():
    root = Path.cwd()
    command = f"recipes/train.py --output {root}/runs/x --data-dir=/mnt/data/imgs --config recipes/c.yaml"
    assert provenance.portable({"c": [command], "n": 3, "d": "/mnt/data/imgs"}) == \
        {"c": ["recipes/train.py --output runs/x --data-dir=imgs --config recipes/c.yaml"], "n": 3, "d": "imgs"}
    assert provenance.portable("gamma/2 * sum, Roth et al.'s") == "gamma/2 * sum, Roth et al.'s"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (git ls-files)")
def test_committed_results_and_cards_hold_no_machine_paths():
    tracked = subprocess.run(["git", "ls-files", "*.json", "repspec_zoo/weights/*.md",
                              "results/*.md", "benchmarks/*.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked
    pattern = re.compile(r"(?<![\w.])/(?:work|home|root|Users|tmp)/")
    assert [f for f in tracked if pattern.search((ROOT / f).read_text(errors="ignore"))] == []


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (git ls-files)")
def test_bundled_cards_have_one_copy_in_the_repository():
    """The card, config and eval of a bundled model live only in repspec_zoo/weights/<name>/: no tracked file
    elsewhere has the same bytes (git's blob id)."""
    staged = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    blobs = [(line.split()[1], line.split("\t", 1)[1]) for line in staged.splitlines()]
    bundled = {blob for blob, path in blobs if path.startswith("repspec_zoo/weights/") and path.count("/") == 3}
    assert len(bundled) >= 3 * len(list((ROOT / "repspec_zoo" / "weights").glob("*/config.json")))
    assert [path for blob, path in blobs if blob in bundled and not path.startswith("repspec_zoo/weights/")] == []


def test_run_json_records_what_the_run_trained_on(tmp_path):
    """run.json's class_names and data_dir: a --data-dir folder's own classes, not its recipe dataset's."""
    from PIL import Image

    from repspec_zoo.training import apply_overrides, load_config, run_summary

    for split in ("train", "test"):
        for name, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (12, 10), color).save(tmp_path / split / name / "0.png")
    cfg = load_config(ROOT / "recipes" / "configs" / "fmnist_slp_baseline_zoo.yaml")
    summary = run_summary(cfg, [], {}, ["recipes/train.py"], 0.0, 1, [])
    assert (summary["class_names"][0], summary["data_dir"], summary["model_name"]) == \
        ("T-shirt/top", None, "slp_baseline.fmnist")
    custom = run_summary(apply_overrides(cfg, [f"dataset.data_dir={tmp_path}"]), [], {}, ["recipes/train.py"], 0.0, 1, [])
    assert (custom["class_names"], custom["data_dir"], custom["model_name"]) == (["cat", "dog"], str(tmp_path), "slp")
