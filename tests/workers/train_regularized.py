"""Worker: a few DDP steps of resnet_small_repspectral; each rank saves its state dict to argv[1]/rank{i}.pt."""
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import repspec_zoo  # noqa: F401

accelerator = Accelerator()
torch.manual_seed(0)  # same init on every rank
model = timm.create_model("resnet_small_repspectral", num_classes=10, gamma=0.05, every=2)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
model, opt = accelerator.prepare(model, opt)
reg = accelerator.unwrap_model(model).spectral
gen = torch.Generator().manual_seed(100 + accelerator.process_index)  # different data per rank
for _ in range(4):
    x, y = torch.rand(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    loss = F.cross_entropy(model(x), y) + reg.penalty()
    opt.zero_grad()
    accelerator.backward(loss)
    opt.step()
state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
torch.save(state, Path(sys.argv[1]) / f"rank{accelerator.process_index}.pt")
accelerator.end_training()  # leave the process group before exit (gloo threads at exit abort)
