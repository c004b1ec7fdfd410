"""Every console command as a user runs it, in a subprocess: the ``repspec-zoo`` script (each
subcommand) and ``recipes/train.py`` on tiny inputs exit with status 0, print their output on stdout
and leave no traceback or object repr on stderr; a bad option exits with status 2 and one line on
stderr, nothing on stdout. A subprocess costs about 10 s (torch's import), so only `eval` (whose
status was 1 after success) and the user errors run by default; the others are marked slow."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm

from hub_server import HubServer
from test_hub import make_run
from test_training import CONFIG_DIR, write_idx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "repspec-zoo"  # the console script pip installed beside python
ZOO = "slp_baseline.fmnist"
# what a Python object's repr looks like on stderr: "<... object at 0x...>" or "EvalResult(model=..."
REPR = re.compile(r" object at 0x[0-9a-f]+>|\b[A-Z]\w*\(\w+=")


def run(tmp_path: Path, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``argv`` in a subprocess that imports this checkout (PYTHONPATH), offline, one thread,
    with its own HF_HOME."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                **(env or {})}
    full_env.pop("HF_TOKEN", None)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=full_env, cwd=tmp_path,
                          timeout=600)


def succeeded(done: subprocess.CompletedProcess) -> str:
    """Asserts exit status 0 and a clean stderr; returns stdout."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not REPR.search(done.stderr), done.stderr[-3000:]
    assert not REPR.search(done.stdout), done.stdout[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def tiny_local_model(tmp_path_factory) -> str:
    """A local-dir: export of slp (8x8 digits, 8 hidden units), as in test_analysis."""
    from timm.models._hub import save_for_hf

    import repspec_zoo  # noqa: F401

    model = timm.create_model("slp", num_classes=10, in_chans=1, img_size=8, hidden_dim=8)
    folder = tmp_path_factory.mktemp("console") / "slp_tiny"
    save_for_hf(model, str(folder), model_args=dict(num_classes=10, in_chans=1, img_size=8, hidden_dim=8),
                safe_serialization=True)
    return f"local-dir:{folder}"


def test_eval(tmp_path):
    """The issue's command: it exited with status 1 and printed the EvalResult repr to stderr."""
    out = succeeded(run(tmp_path, SCRIPT, "eval", ZOO, "--n", "2", "--budgets", "20", "--out", "eval.json"))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["n_samples"] == 2 and saved["budgets"] == [20]
    assert f"{ZOO} on fashion_mnist" in out and "| 20 |" in out


@pytest.mark.slow
def test_probe(tmp_path):
    out = succeeded(run(tmp_path, SCRIPT, "probe", ZOO, "--dataset", "digits", "--train-limit", "100", "--limit", "40",
                        "--n", "2", "--budgets", "20", "--attack", "ta", "--out", "probe.json"))
    assert "linear probe (logistic" in out and json.loads((tmp_path / "probe.json").read_text())["n_test"] == 40


@pytest.mark.slow
def test_leaderboard(tmp_path):
    out = succeeded(run(tmp_path, SCRIPT, "leaderboard", "--models", ZOO, "--n", "2", "--budgets", "20",
                        "--attack", "ta", "--out", "board"))
    assert ZOO in out and (tmp_path / "board").is_dir()


@pytest.mark.slow
def test_analyze(tmp_path, tiny_local_model):
    succeeded(run(tmp_path, SCRIPT, "analyze", tiny_local_model, "--dataset", "digits", "--n", "4", "--top-k", "3",
                  "--pgd-steps", "2", "--power-iters", "3", "--eps-list", "0,1", "--norms", "0,1", "--out", "analysis"))
    assert json.loads((tmp_path / "analysis" / "analysis.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("command, expected", [("list", "slp_repspectral "), ("list-pretrained", ZOO), ("--help", "commands:")])
def test_listings(tmp_path, command, expected):
    assert expected in succeeded(run(tmp_path, SCRIPT, command))


@pytest.mark.slow
def test_export_and_publish_to_a_loopback_hub(tmp_path):
    training_run, _ = make_run(tmp_path / "run")
    out = succeeded(run(tmp_path, SCRIPT, "export", training_run, "--to", tmp_path / "card"))
    assert out.startswith("exported ") and (tmp_path / "card" / "model.safetensors").is_file()
    with HubServer() as server:
        out = succeeded(run(tmp_path, SCRIPT, "publish", training_run, "--endpoint", server.url, "--repo-id", "me/slp",
                            env={"HF_HUB_OFFLINE": "0"}))
        assert out.startswith("published: ") and server.repos["me/slp"].files


@pytest.mark.slow
def test_train_recipe(tmp_path):
    data = write_idx(tmp_path / "idx", n_train=16, n_test=8)
    out = succeeded(run(tmp_path, sys.executable, ROOT / "recipes" / "train.py",
                        "--config", CONFIG_DIR / "fmnist_slp_baseline.yaml", "--output", "run", "--data-dir", data,
                        "--set", "epochs=1", "--set", "batch_size=16", "--set", "model_kwargs={hidden_dim: 16}",
                        "--set", "dataset.num_workers=0", "--set", "dataset.test_limit=8", "--set", "eval.n=2",
                        "--set", "eval.budget=20"))
    assert "run directory: run" in out and (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv", [[SCRIPT, "eval", ZOO, "--no-such-option"],
                                  [sys.executable, ROOT / "recipes" / "train.py", "--no-such-option"]])
def test_a_user_error_is_status_2_and_one_line(tmp_path, argv):
    """(test_cli_errors checks every subcommand's user errors in-process; here the scripts' status.)"""
    done = run(tmp_path, *argv)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "error:" in done.stderr, done.stderr
