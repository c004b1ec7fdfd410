"""Warnings that are ours to fix stay fixed: packaging metadata, torch's jit.script on evaluation."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_metadata_raises_no_setuptools_deprecation(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message)[:80] for w in caught if "Deprecation" in type(w.message).__name__] == []
    assert dist.metadata.license_expression == "Apache-2.0"  # PEP 639: an SPDX expression


# A fresh process: torch imports its forward-AD decompositions (and warns) once per process.
_EVAL_STEP = """
import warnings
warnings.filterwarnings("error", message=".*torch.jit.script")
import torch
from repspec_zoo.evaluation.bounds import lemma1_estimate
from repspec_zoo.evaluation.leaderboard import load_zoo_model
model = load_zoo_model("slp_repspectral.fmnist")
x = torch.rand(2, 1, 28, 28)
print(lemma1_estimate(model, x, model(x).argmax(1), n_iter=2).shape)
"""


def test_leaderboard_model_load_and_lemma1_step_do_not_warn_about_jit_script():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="")
    done = subprocess.run([sys.executable, "-c", _EVAL_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jit.script" not in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "torch.Size([2])"  # after the compile-time line
