"""Faults, each reproduced first: a model that cannot be evaluated (NaN weights, overflowing
logits, a headless backbone), two trainings on one run directory, a full disk, an export killed
between its renames, damaged leaderboard files, a closed stdout pipe, tampered or misspelled timm
weights. The command-line answers (one line, status 2) are in test_cli_errors_surfaces.py."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import repspec_zoo  # noqa: F401  (registers the zoo with timm)
from repspec_zoo.evaluation import evaluate as eval_module
from repspec_zoo import io
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.evaluation.evaluate import evaluate
from repspec_zoo.evaluation.result import EvalResult, EvalResultError
from repspec_zoo.hub import exporting
from repspec_zoo.hub.cards import render_card
from repspec_zoo.loader import load_model
from repspec_zoo.evaluation.model_checks import UnusableModelError
from repspec_zoo.training.lock import LOCK_FILE, RunLock, RunLockedError

from multiproc import ROOT
from test_hub import make_run

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def images(n: int = 8, side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def no_attack(monkeypatch):
    """Any attack evaluate() starts fails the test: the checks must come first."""
    def attack(*args, **kwargs):
        raise AssertionError("an attack ran")
    monkeypatch.setattr(eval_module, "run_attack", attack)


def poisoned(name: str, key: str) -> nn.Module:
    """Zoo model ``name`` with one NaN in its parameter or buffer ``key``."""
    model = load_model(name)
    with torch.no_grad():
        dict(model.named_parameters(), **dict(model.named_buffers()))[key].view(-1)[0] = float("nan")
    return model


# ----------------------------------------------------------------------------- unusable models
@pytest.mark.parametrize("name, key, fast", [("resnet_small_repspectral.fmnist", "conv1.weight", True),
                                             ("slp_repspectral.fmnist", "fc1.weight", True),
                                             ("resnet_small_repspectral.fmnist", "bn1.running_var", False)])
def test_a_nan_weight_or_buffer_is_refused_before_any_attack(name, key, fast, no_attack):
    """Before: clean accuracy 0.10, success 0/2, median L2 inf (resnet_small), LinAlgError after the attack (slp)."""
    model = NormalizedModel(poisoned(name, key)).eval()
    if fast:  # the folded forward keeps the layer names
        model.fast_eval()
    with pytest.raises(UnusableModelError, match=rf"{name}: {key} holds 1 non-finite value\(s\)"):
        evaluate(model, images(), model_name=name, n=2, budgets=[10], progress=False)


def test_fast_eval_leaves_a_model_it_could_not_check_unchanged():
    """A NaN running_var made the fold check raise after folding: conv1 held the NaN and bn1 was gone."""
    model = poisoned("resnet_small_repspectral.fmnist", "bn1.running_var")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    NormalizedModel(model).eval().fast_eval()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) or k == "bn1.running_var"
                                                 for k, v in before.items())
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_overflowing_logits_name_the_first_layer_at_fault(no_attack):
    net = nn.Sequential(OrderedDict(flat=nn.Flatten(), big=nn.Linear(784, 4), head=nn.Linear(4, 3)))
    with torch.no_grad():
        net.big.weight.fill_(3e38)  # finite, but any positive pixel sum overflows float32
    x, y = images()
    with pytest.raises(UnusableModelError, match=r"tiny: the output of layer 'big' is not finite"):
        evaluate(net, (x, y % 3), model_name="tiny", n=2, budgets=[10], progress=False)


def test_a_headless_backbone_is_refused_with_a_pointer_to_probe(no_attack):
    """Before: the 64 features were taken as logits (clean accuracy 0.04) and distances were printed."""
    name = "resnet_small_repspectral.fmnist_simclr"
    model = NormalizedModel(load_model(name)).eval()
    with pytest.raises(UnusableModelError, match=rf"headless backbone \(num_classes=0\).*`repspec-zoo probe {name}`"):
        evaluate(model, images(), model_name=name, n=2, budgets=[10], progress=False)


def test_a_healthy_model_is_evaluated_as_before():
    model = NormalizedModel(load_model("slp_repspectral.fmnist")).eval()
    x, y = images()
    y = model(x).argmax(1)  # every image correctly classified
    result = evaluate(model, (x, y), n=2, budgets=[20], progress=False)
    assert result.clean_acc == 1.0 and result.n_samples == 2


# ----------------------------------------------------------------------------- run directory lock
HOLD = ("import sys, time; from repspec_zoo.training.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(120)")


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run directory's lock and keeps it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_two_processes_on_one_run_directory_and_a_killed_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunLockedError, match=rf"{run_dir} is being trained by pid {holder.pid} on .*--output"):
            RunLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed training: its lock file stays behind
        holder.wait()
    assert f"pid {holder.pid}" in (run_dir / LOCK_FILE).read_text()
    with RunLock(run_dir) as lock:  # the kernel dropped the dead process's lock: it is stale, and taken over
        assert f"pid {os.getpid()} " in lock.path.read_text()
    assert not (run_dir / LOCK_FILE).exists()  # released and removed


def test_a_second_training_into_a_locked_run_directory_writes_nothing(tmp_path):
    """Before: both trainings exited 0 and metrics.jsonl held every epoch twice."""
    from test_training import run_recipe

    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_recipe("xor_toy", run_dir, "epochs=2", "regularizer.burn_in_epochs=0")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no config, metrics or checkpoints
    summary = run_recipe("xor_toy", run_dir, "epochs=2", "regularizer.burn_in_epochs=0", "checkpoint.every_epochs=1")
    assert summary is not None and not (run_dir / LOCK_FILE).exists()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_every_process_of_a_refused_launch_stops_with_the_same_error(tmp_path):
    """Two processes (accelerate launch, gloo): the main one holds the lock, the other learns the outcome from it."""
    from multiproc import free_port

    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(free_port()), str(ROOT / "recipes" / "train.py"), "--config",
                               str(ROOT / "recipes" / "configs" / "xor_toy.yaml"), "--output", str(run_dir),
                               "epochs=2", "regularizer.burn_in_epochs=0"],
                              env=dict(ENV, ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    refusals = [line for line in done.stderr.splitlines() if line.startswith("recipes/train.py: error: ")]
    assert done.returncode != 0 and len(refusals) == 2, done.stderr[-3000:]
    assert all(f"{run_dir} is being trained by pid {holder.pid}" in line for line in refusals)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


@pytest.mark.parametrize("config, layers, words", [
    ("xor_toy", "[nosuchlayer]", "layer 'nosuchlayer' does not exist in SingleHiddenLayerNet"),
    ("fmnist_simclr_resnet_small_repspectral", "[head]", "a self-supervised recipe names backbone.* and projector.*"),
])
def test_unknown_regularizer_layers_stop_before_the_run_directory_exists(config, layers, words, tmp_path):
    from repspec_zoo.training import ConfigError
    from test_training import run_recipe

    with pytest.raises(ConfigError, match=rf"regularizer.layers=.*{words.replace('*', '[*]')}"):
        run_recipe(config, tmp_path / "run", f"regularizer.layers={layers}", "regularizer.burn_in_epochs=0")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- full disk
class FullFile:
    """A file whose writes fail as on a full file system (ENOSPC)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def fill_disk(patch: pytest.MonkeyPatch) -> None:
    """From now on every write of repspec_zoo.io (os.fdopen) and of open(..., 'w'/'a'/'x') fails with ENOSPC."""
    fdopen, real_open = os.fdopen, open
    patch.setattr(io.os, "fdopen", lambda fd, *a, **k: FullFile(fdopen(fd, *a, **k)))

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullFile(handle) if any(c in mode for c in "wax") else handle
    patch.setattr("builtins.open", open_)


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_full_disk_during_eval_out_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    result = EvalResult(model="m", dataset="d", split="test", n_test=1, clean_acc=1.0)
    fill_disk(monkeypatch)
    with pytest.raises(io.DiskFullError, match=rf"no space left on the device of {tmp_path / 'e.json'}"):
        result.save(tmp_path / "e.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("replace", [False, True])
def test_full_disk_during_export_keeps_what_was_there(replace, tmp_path, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "exports" / "m"
    if replace:
        exporting.export(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if replace else None
    with monkeypatch.context() as patch:
        fill_disk(patch)
        with pytest.raises(io.DiskFullError, match=f"{out}.*free space, then export again"):
            exporting.export(run, out, force=True)
    assert ({p.name: p.read_bytes() for p in out.iterdir()} if replace else out.exists()) == (before or False)
    assert hidden_leftovers(out.parent) == []


def test_full_disk_during_training_is_a_user_error_with_the_resume_hint(tmp_path, monkeypatch):
    from repspec_zoo.training import loop
    from test_training import run_recipe

    def append(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
    monkeypatch.setattr(loop.MetricsLog, "append", append)
    with pytest.raises(io.DiskFullError, match=r"run \(OSError: \[Errno 28\].*run the same command again: it resumes"):
        run_recipe("xor_toy", tmp_path / "run", "epochs=2", "regularizer.burn_in_epochs=0")
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # the lock is released on the error too


def test_an_unrelated_error_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        with io.full_disk_is_user_error(tmp_path, "fix"):
            raise PermissionError(errno.EACCES, "denied")


# ----------------------------------------------------------------------------- export replacement
KILL = """
import os, shutil, sys
from pathlib import Path
from repspec_zoo.hub import exporting
point, run, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
real_replace, real_rmtree = os.replace, shutil.rmtree
def replace(src, dst):
    src = Path(src)
    if (point == "first" and src == out) or (point == "second" and src.name.endswith(".tmp") and Path(dst) == out):
        os._exit(9)  # killed: no cleanup runs
    real_replace(src, dst)
def rmtree(path, *args, **kwargs):
    if point == "cleanup" and str(path).endswith(".old"):
        os._exit(9)
    real_rmtree(path, *args, **kwargs)
exporting.os.replace, exporting.shutil.rmtree = replace, rmtree
exporting.export(run, out, force=True)
"""


@pytest.mark.parametrize("point, holds", [("first", "old"), ("second", "old"), ("cleanup", "new")])
def test_an_export_killed_at_any_point_of_the_replacement_loses_nothing(point, holds, tmp_path):
    """Before: a kill between the two renames left no --to folder, and the next export deleted the hidden old one."""
    old_run, _ = make_run(tmp_path / "old_run")
    new_run, _ = make_run(tmp_path / "new_run")
    out = tmp_path / "exports" / "m"
    exporting.export(old_run, out)
    reference = tmp_path / "reference"
    exporting.export(new_run, reference)
    expected = {p.name: p.read_bytes() for p in (out if holds == "old" else reference).iterdir()}
    done = subprocess.run([sys.executable, "-c", KILL, point, str(new_run), str(out)], env=ENV, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 9, done.stderr[-2000:]
    assert out.is_dir() == (point != "second")  # the one point where no export is in place
    assert exporting.recover_export(out) == (point == "second")  # what the next export does first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected
    assert hidden_leftovers(out.parent) == []


def test_a_failed_second_rename_puts_the_old_export_back_at_once(tmp_path, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "exports" / "m"
    exporting.export(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".tmp") and Path(dst) == out:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)
    monkeypatch.setattr(exporting.os, "replace", replace)
    with pytest.raises(OSError, match="I/O error"):
        exporting.export(run, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden_leftovers(out.parent) == []


def test_a_card_of_a_run_evaluated_without_attack_renders(tmp_path):
    """Before: TypeError in cards._commands (publish and export) for eval.attack=none."""
    model = load_model("slp_repspectral.fmnist")
    x, _ = images()
    result = evaluate(NormalizedModel(model).eval(), (x, model(x).argmax(1)), attack=None, n=4, budgets=[100],
                      progress=False)
    run, _ = make_run(tmp_path / "run", evaluation=json.loads(result.to_json()))
    exporting.export(run, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "--n 4 --budgets 100 --attack none --seed 0" in card
    assert "--attack none" in str(render_card(json.loads((tmp_path / "export" / "config.json").read_text()), None))


# ----------------------------------------------------------------------------- leaderboard inputs
def test_a_damaged_result_file_names_itself(tmp_path):
    path = tmp_path / "slp_baseline.fmnist.json"
    EvalResult(model="m", dataset="d", split="test", n_test=1, clean_acc=1.0).save(path)
    os.truncate(path, 50)
    with pytest.raises(EvalResultError, match=rf"{path} is not an EvalResult JSON file: truncated or damaged"):
        EvalResult.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(EvalResultError, match="not an EvalResult JSON file"):
        EvalResult.load(path)


def test_leaderboard_resume_evaluates_a_damaged_result_again(tmp_path, capsys, monkeypatch):
    """Before: a raw JSONDecodeError naming no file."""
    from repspec_zoo.evaluation import leaderboard
    from repspec_zoo.cli.leaderboard import main

    argv = ["--models", "slp_baseline.fmnist", "slp_repspectral.fmnist", "--n", "2", "--budgets", "20",
            "--attack", "ta", "--out", str(tmp_path)]
    first = main(argv)
    os.truncate(tmp_path / "slp_baseline.fmnist.json", 50)
    attacked = []
    real = leaderboard.evaluate
    monkeypatch.setattr(leaderboard, "evaluate", lambda model, test, **kw: attacked.append(kw["model_name"])
                        or real(model, test, **kw))
    capsys.readouterr()
    again = main(argv)
    err = capsys.readouterr().err
    assert attacked == ["slp_baseline.fmnist"]
    assert f"warning: {tmp_path / 'slp_baseline.fmnist.json'} is not an EvalResult JSON file" in err
    assert again["slp_baseline.fmnist"].per_sample == first["slp_baseline.fmnist"].per_sample


# ----------------------------------------------------------------------------- pipes and timm routes
def test_a_closed_stdout_pipe_ends_quietly():
    """Before: `repspec-zoo list | head` ended in a BrokenPipeError traceback."""
    process = subprocess.Popen([sys.executable, "-m", "repspec_zoo.cli", "list"], env=ENV, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141 and stderr == ""


def test_timm_file_overlay_verifies_a_zoo_export(tmp_path):
    """Before: a tampered model.safetensors beside a zoo config.json loaded without the sha256 check."""
    import shutil

    import timm
    from repspec_zoo.models.pretrained import PretrainedWeightsError, bundled_dir

    folder = tmp_path / "export"
    shutil.copytree(bundled_dir("slp_repspectral.fmnist"), folder)
    weights = folder / "model.safetensors"
    untouched = timm.create_model("slp", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    reference = load_model("slp_repspectral.fmnist")
    assert all(torch.equal(untouched.state_dict()[k], v) for k, v in reference.state_dict().items())
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    for name in ("slp", "slp_repspectral.fmnist"):
        with pytest.raises(PretrainedWeightsError, match="does not match .* recorded"):
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))


def test_timm_create_model_suggests_close_zoo_names():
    import timm
    from repspec_zoo.models.zoo import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model 'slp_repspectrl'; did you mean slp_repspectral") as err:
        timm.create_model("slp_repspectrl.fmnist", pretrained=True)
    assert isinstance(err.value, RuntimeError)  # what timm raised before, for callers that catch it


def test_readme_hf_hub_snippet_offline_names_the_bundled_model(tmp_path, monkeypatch):
    import timm
    from repspec_zoo.models import pretrained

    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(pretrained.PretrainedWeightsUnavailable,
                       match=r"cannot load hf-hub:repspec-zoo/slp_repspectral.fmnist: offline \(HF_HUB_OFFLINE=1\).*"
                             r"slp_repspectral.fmnist ships with repspec_zoo and loads offline"):
        timm.create_model("hf-hub:repspec-zoo/slp_repspectral.fmnist", pretrained=True)
