"""The bad-input suite of test_cli_errors.py, on the surfaces added since: probe, attack lists, models that
cannot be evaluated, the leaderboard (resume, --report-only, --update-readme), export replacement, a full
disk, SSL recipes and concurrent trainings (recipes/train.py answers as the CLI: one line, status 2).

Each case: SystemExit(2) and exactly one stderr line ``repspec-zoo CMD: error: ...`` naming the input and
the fix, no traceback; where the input must be refused before any work, the work is made to fail the test.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image

import repspec_zoo  # noqa: F401  (registers the zoo with timm)
from repspec_zoo.evaluation import evaluate as eval_module, leaderboard
from repspec_zoo.hub import exporting
from repspec_zoo.loader import load_model

from multiproc import ROOT
from test_cli_errors import ZOO, image_folder, one_line_error, quiet_datasets  # noqa: F401 (fixture)
from test_faults import ENV, fill_disk, hidden_leftovers, hold_lock
from test_hub import make_run

FAST = ["--limit", "40", "--n", "2", "--budgets", "10"]
SIMCLR = "resnet_small_repspectral.fmnist_simclr"  # bundled headless backbone


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """NaN checkpoints (classifier, backbone), a SimCLR run directory, a folder of 1x1-pixel images, a README without markers."""
    root = tmp_path_factory.mktemp("surfaces")
    state = load_model("resnet_small_repspectral.fmnist").state_dict()
    state["conv1.weight"] = state["conv1.weight"].clone()
    state["conv1.weight"].view(-1)[0] = float("nan")
    safetensors.torch.save_file(state, root / "nan.safetensors")
    backbone = load_model(SIMCLR).state_dict()
    backbone["conv1.weight"] = backbone["conv1.weight"].clone()
    backbone["conv1.weight"].view(-1)[0] = float("nan")
    safetensors.torch.save_file(backbone, root / "nan_backbone.safetensors")
    run = root / "simclr_run"  # what a self-supervised recipe leaves: a headless backbone (num_classes 0)
    run.mkdir()
    safetensors.torch.save_file(load_model(SIMCLR).state_dict(), run / "model.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump(dict(model="resnet_small", num_classes=0, dataset="fashion_mnist",
                                                         regularizer=dict(mode="rep", gamma=1e-3))))
    (run / "eval.json").write_text(json.dumps({"clean_acc": 0.8}))
    for c in range(2):  # 1x1-pixel "images"
        (root / "dots" / "test" / f"class{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((1, 1), 100 * c, np.uint8)).save(root / "dots" / "test" / f"class{c}" / f"{i}.png")
    image_folder(root / "good", classes=2)
    (root / "README.md").write_text("# no markers here\n")
    (root / "emptydir").mkdir()
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Loading a zoo model for the leaderboard or running an attack fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")
    monkeypatch.setattr(eval_module, "run_attack", fail)
    monkeypatch.setattr("repspec_zoo.cli.leaderboard.load_zoo_model", fail)


# case: (command line with {root}, words the one line must hold)
CASES = {
    # attack lists and counts (eval and probe share them)
    "eval --attack ''": (["eval", ZOO, "--attack", ""], ["argument --attack", "names no attack", "'none'"]),
    "eval --attack 'ta,'": (["eval", ZOO, "--attack", "ta,"], ["names no attack (an empty name)"]),
    "eval --attack 'ta,nosuch'": (["eval", ZOO, "--attack", "ta,nosuch"], ["unknown attack 'nosuch'"]),
    "eval --max-iter 0": (["eval", ZOO, "--max-iter", "0"], ["argument --max-iter: expected an integer >= 1"]),
    "eval --seed -1": (["eval", ZOO, "--seed", "-1"], ["argument --seed: expected an integer >= 0, got '-1'"]),
    "eval --seed 2**32": (["eval", ZOO, "--seed", str(2 ** 32)], ["expected a seed in [0, 2**32)"]),
    "probe --train-limit 0": (["probe", SIMCLR, "--train-limit", "0"], ["argument --train-limit: expected an integer"]),
    "probe --attack ''": (["probe", SIMCLR, "--attack", ""], ["names no attack"]),
    "probe --max-iter 0": (["probe", SIMCLR, "--max-iter", "0"], ["argument --max-iter"]),
    "probe unknown model": (["probe", "nosuchmodel"], ["unknown model 'nosuchmodel'"]),
    "probe --C 0": (["probe", SIMCLR, "--train-limit", "20", "--C", "0", "--attack", "none"], ["C=0.0 must be > 0"]),
    "probe of a NaN checkpoint": (["probe", "resnet_small_repspectral", "--checkpoint",
                                   "{root}/nan_backbone.safetensors", "--train-limit", "20", "--attack", "none"], ["non-finite features"]),
    # models that cannot be evaluated: refused before any attack
    "eval NaN weights": (["eval", "resnet_small_repspectral", "--checkpoint", "{root}/nan.safetensors", *FAST],
                         ["conv1.weight holds 1 non-finite value(s)", "restore or retrain"]),
    "eval headless zoo backbone": (["eval", SIMCLR, *FAST], ["headless backbone", f"repspec-zoo probe {SIMCLR}"]),
    "eval SimCLR run directory": (["eval", "{root}/simclr_run", *FAST],
                                  ["headless backbone", "repspec-zoo probe {root}/simclr_run"]),
    "eval 1x1-pixel images": (["eval", ZOO, "--data-dir", "{root}/dots", *FAST],
                              ["4 of 4 image files are smaller than 8x8 pixels", "(1x1)"]),
    # leaderboard options and inputs, checked before any model is loaded
    "leaderboard --workers 0": (["leaderboard", "--workers", "0"], ["argument --workers: expected an integer >= 1"]),
    "leaderboard --workers -1": (["leaderboard", "--workers", "-1"], ["argument --workers"]),
    "leaderboard --n 0": (["leaderboard", "--n", "0"], ["argument --n: expected an integer >= 1"]),
    "leaderboard --seed -1": (["leaderboard", "--seed", "-1"], ["argument --seed"]),
    "leaderboard --attack ''": (["leaderboard", "--attack", ""], ["names no attack"]),
    "leaderboard missing README": (["leaderboard", "--update-readme", "{root}/nothere.md", "--out", "{root}/lb"],
                                   ["--update-readme {root}/nothere.md does not exist"]),
    "leaderboard README without markers": (["leaderboard", "--update-readme", "{root}/README.md", "--out",
                                            "{root}/lb"], ["has no <!-- leaderboard:start -->", "add them"]),
    "leaderboard --report-only, no folder": (["leaderboard", "--report-only", "--out", "{root}/nowhere"],
                                             ["{root}/nowhere/leaderboard.json does not exist", "without --report-only"]),
    "leaderboard --report-only, empty folder": (["leaderboard", "--report-only", "--out", "{root}/emptydir"],
                                                ["{root}/emptydir/leaderboard.json does not exist"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_are_one_line(case, files, capsys, quiet_datasets, no_work):
    argv, words = CASES[case]
    err = one_line_error([a.format(root=files) for a in argv], capsys)
    assert err.startswith(f"repspec-zoo {argv[0]}: error: ")
    for word in words:
        assert word.format(root=files) in err


def test_leaderboard_refuses_a_nan_model_before_any_attack(tmp_path, capsys, monkeypatch):
    real = leaderboard.load_model

    def nan_weights(name):
        model = real(name)
        if name == ZOO:
            with torch.no_grad():
                model.fc1.weight.view(-1)[0] = float("inf")
        return model
    monkeypatch.setattr(leaderboard, "load_model", nan_weights)
    monkeypatch.setattr(eval_module, "run_attack", lambda *a, **k: pytest.fail("an attack ran"))
    err = one_line_error(["leaderboard", "--models", "slp_baseline.fmnist", ZOO, "--out", str(tmp_path)], capsys)
    assert f"{ZOO}: fc1.weight holds 1 non-finite value(s)" in err


@pytest.mark.parametrize("damage", ["summary", "model"])
def test_report_only_names_a_damaged_file(damage, tmp_path, capsys):
    name = "slp_baseline.fmnist"
    (tmp_path / "leaderboard.json").write_text(json.dumps({"models": {name: {}}, "paired_vs_baseline": {}}))
    (tmp_path / f"{name}.json").write_text('{"model": "slp_bas')
    if damage == "summary":
        (tmp_path / "leaderboard.json").write_text('{"models": {"slp')
    err = one_line_error(["leaderboard", "--report-only", "--out", str(tmp_path)], capsys)
    damaged = tmp_path / ("leaderboard.json" if damage == "summary" else f"{name}.json")
    assert f"{damaged} is not" in err and "truncated or damaged" in err


def test_eval_out_on_a_full_disk(files, tmp_path, capsys, monkeypatch, quiet_datasets):
    monkeypatch.setattr(eval_module, "run_attack", lambda *a, **k: pytest.fail("no attack was asked for"))
    fill_disk(monkeypatch)
    out = tmp_path / "eval.json"
    err = one_line_error(["eval", ZOO, "--attack", "none", "--limit", "20", "--out", str(out)], capsys)
    assert f"no space left on the device of {out}" in err and "write elsewhere" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("force", [False, True])
def test_export_on_a_full_disk_and_over_an_export(force, tmp_path, capsys, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "exports" / "m"
    exporting.export(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["export", str(run), "--to", str(out), *(["--force"] if force else [])]
    if force:
        fill_disk(monkeypatch)
    err = one_line_error(argv, capsys)
    assert (f"no space left on the device of {out}" if force else "already holds an exported model; pass --force") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and hidden_leftovers(out.parent) == []


def train(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), *argv], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("config, layers, words", [
    ("xor_toy", "[nosuchlayer]", "layer 'nosuchlayer' does not exist in SingleHiddenLayerNet"),
    ("fmnist_simclr_resnet_small_repspectral", "[head]", "a self-supervised recipe names backbone.* and projector.*"),
])
def test_recipe_layer_errors_are_one_line_before_the_run_directory(config, layers, words, tmp_path):
    done = train("--config", f"recipes/configs/{config}.yaml", "--output", str(tmp_path / "run"),
                 f"regularizer.layers={layers}", "regularizer.burn_in_epochs=0")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"recipes/train.py: error: regularizer.layers={yaml.safe_load(layers)!r}")
    assert words in done.stderr and not (tmp_path / "run").exists()


def test_a_second_training_on_one_run_directory_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        done = train("--config", "recipes/configs/xor_toy.yaml", "--output", str(run_dir), "epochs=2",
                     "regularizer.burn_in_epochs=0")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"{run_dir} is being trained by pid {holder.pid}" in done.stderr
    assert sorted(os.listdir(run_dir)) == [".lock"]
