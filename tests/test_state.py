"""LayerState: start vectors seeded by the layer name (the same on every DDP rank), lazy shapes on load."""
import torch

from repspec_zoo.spectral.state import LayerState, state_key


def test_restart_draws_unit_vectors_seeded_by_the_layer_name():
    a, b, other = LayerState(), LayerState(), LayerState()
    for state in (a, b):
        state.restart("layer1.0.conv1", (4, 3, 3), (2, 5, 5), (2, 5, 5))
    other.restart("layer1.0.conv2", (4, 3, 3), (2, 5, 5), (2, 5, 5))
    assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v) and not torch.equal(a.u, other.u)
    assert a.u.shape == (4, 3, 3) and a.v.shape == (2, 5, 5) and a.u.dtype == torch.float32
    assert abs(float(a.u.norm()) - 1) < 1e-6 and abs(float(a.v.norm()) - 1) < 1e-6
    assert a.shape == (2, 5, 5) and a.in_shape.tolist() == [2, 5, 5] and a.needs_warmup
    a.restart("fc", (3,), (8,))  # a Linear layer: no input shape
    assert a.shape is None and a.in_shape.numel() == 0 and a.u.shape == (3,)


def test_load_resizes_buffers_and_plain_weights_keep_fresh_vectors():
    saved = LayerState()
    saved.restart("conv", (4, 3, 3), (2, 5, 5), (2, 5, 5))
    loaded = LayerState()
    loaded.load_state_dict(saved.state_dict())
    assert torch.equal(loaded.u, saved.u) and loaded.shape == (2, 5, 5) and not loaded.needs_warmup
    fresh = LayerState()
    fresh.load_state_dict({}, strict=True)  # no regularizer state saved: nothing missing, nothing loaded
    assert fresh.u.numel() == 0 and fresh.needs_warmup
    assert state_key("layer1.0.conv1") == "layer1__0__conv1"
