"""`repspec-zoo` answers expected errors with one line and exit status 2; --debug shows the traceback.

Each bad `eval` input runs through ``repspec_zoo.cli.main`` in-process: SystemExit(2),
exactly one stderr line ``repspec-zoo eval: error: ...`` naming the input and the fix, no traceback.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from PIL import Image

import repspec_zoo  # noqa: F401  (registers slp, resnet_small)
from repspec_zoo import cli
from repspec_zoo.models import pretrained

from multiproc import ROOT

FAST = ["--attack", "none", "--limit", "40"]
ZOO = "slp_repspectral.fmnist"  # bundled: loads offline


def image_folder(root, classes: int, per_class: int = 2):
    """test/<class>/<i>.png: random 28x28 grayscale images."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "test" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished run with one step checkpoint, weights of other shapes, damaged files, data folders."""
    root = tmp_path_factory.mktemp("cli_errors")
    net = timm.create_model("slp_repspectral", num_classes=10)
    net(torch.rand(2, 1, 28, 28))
    net.spectral.penalty()  # fills the regularizer's buffers, as a trained run's weights hold them
    run = root / "run"
    step = run / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    safetensors.torch.save_file(net.state_dict(), run / "model.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump(dict(model="slp", num_classes=10, dataset="fashion_mnist",
                                                         regularizer=dict(mode="rep", gamma=1e-3))))
    (run / "eval.json").write_text(json.dumps({"clean_acc": 0.5}))
    # accelerate's save_state: the training wrapper's keys (model.*) and its normalization buffers
    safetensors.torch.save_file({**{f"model.{k}": v for k, v in net.state_dict().items()}, "mean": torch.zeros(1)},
                                step / "model.safetensors")
    (step / "train_state.json").write_text("{}")
    for name, arch, classes in (("slp10", "slp", 10), ("slp2", "slp", 2), ("resnet10", "resnet_small", 10)):
        safetensors.torch.save_file(timm.create_model(arch, num_classes=classes).state_dict(),
                                    root / f"{name}.safetensors")
    data = (run / "model.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "empty.safetensors").write_bytes(b"")
    (root / "page.safetensors").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (root / "page.pth").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (root / "emptydir").mkdir()
    image_folder(root / "two", classes=2)
    image_folder(root / "ten", classes=10)
    for cls in ("a", "b"):  # class subfolders without train/ or test/: one split, train
        (root / "train_only" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "train_only" / cls / "0.png")
    return root


# case: (eval arguments with {root} for the files above, words the one line must hold)
EVAL_CASES = {
    "unknown model": (["nosuchmodel", *FAST], ["unknown model 'nosuchmodel'", "list_pretrained"]),
    "misspelled zoo name": (["slp_repspectrl.fmnist", *FAST], ["did you mean slp_repspectral.fmnist"]),
    "misspelled timm name": (["resnet1", *FAST], ["did you mean resnet18"]),
    "unknown tag": (["slp_repspectral.cifar", *FAST], ["unknown pretrained tag 'cifar'", ZOO]),
    "arch without weights": (["slp", *FAST], ["slp has no pretrained weights", "--checkpoint"]),
    "missing data folder": ([ZOO, "--data-dir", "{root}/nowhere", *FAST], ["nowhere does not exist", "--data-dir"]),
    "empty data folder": ([ZOO, "--data-dir", "{root}/emptydir", *FAST], ["emptydir holds no", "class subfolders"]),
    "folder without test split": ([ZOO, "--data-dir", "{root}/train_only", *FAST], ["has no test split"]),
    "unknown dataset": ([ZOO, "--dataset", "nosuchdata", *FAST], ["unknown dataset 'nosuchdata'", "digits"]),
    "missing checkpoint": (["slp", "--checkpoint", "{root}/nothing.safetensors", "--dataset", "digits"],
                           ["nothing.safetensors does not exist", "runs/<name>/model.safetensors"]),
    "checkpoint is a folder": (["slp", "--checkpoint", "{root}/emptydir", "--dataset", "digits"],
                               ["emptydir is a folder, not a weights file"]),
    "checkpoint is a run folder": (["slp", "--checkpoint", "{root}/run", "--dataset", "digits"],
                                   ["run is a folder", "pass it as MODEL"]),
    "HTML checkpoint": (["slp", "--checkpoint", "{root}/page.safetensors", "--dataset", "digits"],
                        ["page.safetensors is not a valid safetensors file"]),
    "HTML torch checkpoint": (["slp", "--checkpoint", "{root}/page.pth", "--dataset", "digits"],
                              ["page.pth is neither a safetensors file nor a torch state dict"]),
    "truncated checkpoint": (["slp", "--checkpoint", "{root}/truncated.safetensors", "--dataset", "digits"],
                             ["truncated.safetensors is not a valid safetensors file"]),
    "empty checkpoint": (["slp", "--checkpoint", "{root}/empty.safetensors", "--dataset", "digits"],
                         ["empty.safetensors is not a valid safetensors file"]),
    "--n -3": ([ZOO, "--n", "-3"], ["argument --n: expected an integer >= 1, got '-3'", "--help"]),
    "--n 0": ([ZOO, "--n", "0"], ["argument --n: expected an integer >= 1, got '0'"]),
    "--limit 0": ([ZOO, "--limit", "0"], ["argument --limit: expected an integer >= 1"]),
    "--limit abc": ([ZOO, "--limit", "abc"], ["argument --limit: expected an integer >= 1, got 'abc'"]),
    "--batch-size 0": ([ZOO, "--batch-size", "0"], ["argument --batch-size: expected an integer >= 1"]),
    "--max-iter -1": ([ZOO, "--max-iter", "-1"], ["argument --max-iter: expected an integer >= 1"]),
    "--budgets 0": ([ZOO, "--budgets", "0"], ["--budgets must be positive query counts"]),
    "--attack typo": ([ZOO, "--attack", "tx"], ["unknown attack 'tx'"]),
    "checkpoint of another architecture": (["slp", "--checkpoint", "{root}/resnet10.safetensors", "--dataset",
                                            "digits"], ["not a slp checkpoint", "those of resnet_small"]),
    "checkpoint of another head size": (["slp", "--checkpoint", "{root}/slp2.safetensors", "--dataset", "digits"],
                                        ["has a 2-class head", "(2, 2000)", "built for 10 classes", "(10, 2000)"]),
    "step folder as MODEL": (["{root}/run/checkpoints/step_0000010", *FAST],
                             ["training checkpoint", "pass the run directory {root}/run"]),
    "step weights as MODEL": (["{root}/run/checkpoints/step_0000010/model.safetensors", *FAST],
                              ["training checkpoint", "pass the run directory {root}/run"]),
    "step weights as --checkpoint": (["slp", "--checkpoint", "{root}/run/checkpoints/step_0000010/model.safetensors",
                                      "--dataset", "digits"], ["training checkpoint", "{root}/run/model.safetensors"]),
    "run weights as MODEL": (["{root}/run/model.safetensors", *FAST], ["pass the run directory {root}/run"]),
    "run folder with --checkpoint": (["{root}/run", "--checkpoint", "{root}/slp10.safetensors", *FAST],
                                     ["holds its own weights"]),
    "missing run folder": (["{root}/runs/nosuch", *FAST], ["nosuch does not exist", "training run directory"]),
    "missing local-dir": (["local-dir:{root}/nowhere", *FAST], ["no config.json there"]),
    "hf-hub repo not cached offline": (["hf-hub:nosuchorg/nosuchmodel", *FAST], ["cannot load hf-hub:nosuchorg"]),
    "2-class folder, 10-class model": ([ZOO, "--data-dir", "{root}/two", *FAST],
                                       ["10-class head", "{root}/two has 2 classes"]),
}


@pytest.fixture
def quiet_datasets():
    """No `datasets` progress bars (they go to stderr the first time a folder is read)."""
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_errors_are_one_line(case, files, capsys, quiet_datasets):
    argv, words = EVAL_CASES[case]
    err = one_line_error(["eval", *[a.format(root=files) for a in argv]], capsys)
    assert err.startswith("repspec-zoo eval: error: ")
    for word in words:
        assert word.format(root=files) in err


def test_every_command_answers_a_bad_option_in_one_line(capsys):
    for command in ("eval", "analyze", "leaderboard", "list", "list-pretrained", "export", "publish"):
        err = one_line_error([command, "--no-such-option"], capsys)
        assert err.startswith(f"repspec-zoo {command}: error: ") and "--help" in err
    assert "did you mean eval?" in one_line_error(["evl"], capsys)


def test_publish_error_is_one_line(files, capsys, monkeypatch):
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    err = one_line_error(["publish", str(files / "run"), "--endpoint", "http://127.0.0.1:9"], capsys)
    assert err.startswith("repspec-zoo publish: error: ") and "HF_HUB_OFFLINE=1" in err


def test_debug_shows_the_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "repspec_zoo.cli", "--debug", "eval", "slp", "--checkpoint",
                           str(tmp_path / "nothing.safetensors")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "ModelLoadError: --checkpoint" in done.stderr and "nothing.safetensors does not exist" in done.stderr


def test_debug_after_the_command_raises_the_error(tmp_path):
    from repspec_zoo.loader import ModelLoadError

    with pytest.raises(ModelLoadError, match="nothing.safetensors does not exist"):
        cli.main(["eval", "slp", "--debug", "--checkpoint", str(tmp_path / "nothing.safetensors")])


def test_a_bug_keeps_its_traceback(monkeypatch):
    from repspec_zoo.cli import common

    monkeypatch.setattr(common, "load_model", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["eval", ZOO, "--dataset", "digits"])


def test_eval_names_the_data_it_used(files, capsys, quiet_datasets):
    from repspec_zoo.cli import eval as eval_cli

    folder = str(files / "ten")
    result = eval_cli.main([ZOO, "--data-dir", folder, "--attack", "none"])
    assert result.dataset == folder and result.n_test == 20 and result.settings["data_dir"] == folder
    assert any(line.startswith(f"{ZOO} on {folder}/test: clean_acc") for line in capsys.readouterr().out.splitlines())
    named = eval_cli.main([ZOO, "--dataset", "fashion_mnist", "--data-dir", folder, "--attack", "none"])
    assert named.dataset == f"fashion_mnist ({folder})"


def test_eval_warns_on_another_dataset_than_the_tag(capsys):
    cli.main(["eval", ZOO, "--dataset", "digits", "--attack", "none", "--limit", "20"])
    err = capsys.readouterr().err.splitlines()
    assert err == [f"repspec-zoo eval: warning: {ZOO} was trained on fashion_mnist, not digits: its accuracy and "
                   "distances here say little about the model; pass --dataset fashion_mnist to evaluate it on its "
                   "own data"]
    cli.main(["eval", ZOO, "--attack", "none", "--limit", "20"])
    assert "warning" not in capsys.readouterr().err
