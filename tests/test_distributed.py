"""Two CPU processes (gloo, accelerate launch): regularizer state stays identical across ranks."""
import timm
import torch

import repspec_zoo  # noqa: F401
from multiproc import ROOT, launch_two_processes


def test_buffers_and_weights_identical_across_ranks(tmp_path):
    launch_two_processes(ROOT / "tests" / "workers" / "train_regularized.py", str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(r0) == set(r1)
    spectral_keys = [k for k in r0 if k.startswith("spectral.")]
    assert len(spectral_keys) > 10
    for k in r0:
        if k.endswith(("running_mean", "running_var")):
            continue  # BN statistics of the last forward are per-rank (DDP syncs them at the next forward)
        assert torch.equal(r0[k], r1[k]), k
    init = timm.create_model("resnet_small_repspectral", num_classes=10)
    assert not torch.equal(init.state_dict()["conv1.weight"], r0["conv1.weight"])  # it did train
