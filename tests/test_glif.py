"""The paper's GLIF against a transcription of the original's LIFSpike_CW, in float64.

The reference below follows the original code's structure (sequential_cifar/glif.py,
LIFSpike_CW.forward / extended_state_update, wrapped as train_secf10.py wrapped it:
trailing singleton dims up to [T, N, C, H, W]) and shares no code with common/.
"""
import math

import pytest
import torch

from common.baselines import GLIF
from common.weights import load_model_weights
from common.neuron_registry import create_neuron
from sequential_cifar.models import SequentialCIFARNet


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.gt(x, 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _Box(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.gt(x, 0.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clone() * (abs(x) < 0.5).to(grad.dtype)


def reference(x_seq, p):
    """x_seq [T, N, C] or [T, N, C, L]; p: the parameters by their original names."""
    x = x_seq
    while x.dim() < 5:
        x = x.unsqueeze(-1)
    T = x.shape[0]
    view = lambda v: v.view(1, -1, 1, 1)  # noqa: E731
    al, be, ga = (_StraightThrough.apply(view(p[k]).sigmoid()) for k in ("alpha", "beta", "gamma"))
    u = torch.zeros(x.shape[1:], dtype=x.dtype)
    out = torch.zeros(x.shape, dtype=x.dtype)
    for step in range(T):
        o_prev = out[max(step - 1, 0)].clone()
        tau, vth, leak, revth = (view(p[k].sigmoid()) for k in ("tau", "Vth", "leak", "reVth"))
        conduct = view(p["conduct"][step].sigmoid())
        current = x[step] * (1 - be * (1 - conduct))
        u = ((1 - al * (1 - tau)) * u * (1 - ga * o_prev) - (1 - al) * leak) + current - (1 - ga) * revth * o_prev
        out[step] = _Box.apply(u - vth)
    return out.reshape(x_seq.shape)


def logit(q):
    return math.log(q / (1 - q))


@pytest.mark.parametrize("T", [4, 8, 32])
@pytest.mark.parametrize("shape", ["conv", "linear"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_glif_equals_the_original_in_float64(T, shape, perturbed):
    torch.manual_seed(T)
    C = 6
    neuron = GLIF(T, C).double()
    if perturbed:  # move every parameter, and flip some gates, so each term of the update is exercised
        with torch.no_grad():
            for name, q in neuron.named_parameters():
                q.add_(torch.randn_like(q) * (2.0 if name in ("alpha", "beta", "gamma") else 0.7))
    x_shape = (T, 3, C, 5) if shape == "conv" else (T, 3, C)
    x = (torch.randn(x_shape, dtype=torch.float64) * 0.8 + 0.3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    params = {n: q.detach().clone().requires_grad_() for n, q in neuron.named_parameters()}

    spikes, spikes_ref = neuron(x), reference(x_ref, params)
    assert spikes.shape == x.shape and torch.equal(spikes, spikes_ref)
    assert 0.05 < spikes.mean().item() < 0.95  # both outcomes occur

    g = torch.randn_like(spikes)
    (spikes * g).sum().backward()
    (spikes_ref * g).sum().backward()
    assert x.grad.abs().sum() > 0
    assert torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-10)
    for name, q in neuron.named_parameters():
        assert q.grad is not None and torch.allclose(q.grad, params[name].grad, rtol=0, atol=1e-10), name


def test_glif_starts_at_the_originals_values():
    neuron = create_neuron("glif", 8, channels=3)
    assert isinstance(neuron, GLIF)
    expect = {"alpha": 0.55, "beta": 0.65, "gamma": 0.55, "tau": 0.25, "Vth": 0.5, "reVth": 0.5, "leak": 0.0625,
              "conduct": 0.5}
    for name, q in expect.items():
        value = getattr(neuron, name)
        assert torch.allclose(value.double(), torch.full_like(value.double(), logit(q)), atol=1e-6), name
    assert neuron.conduct.shape == (8, 3) and neuron.alpha.shape == (3,)
    with pytest.raises(ValueError, match=r"GLIF\(T=8, channels=3\)"):
        neuron(torch.zeros(4, 2, 3))


def test_spikingjelly_gated_lif_stays_available_under_its_own_name():
    from spikingjelly.activation_based.neuron import GatedLIFNode

    assert isinstance(create_neuron("glif_sj", 8, channels=3), GatedLIFNode)


def test_original_glif_checkpoint_keys_load(tmp_path):
    """The original wrapped each GLIF as Sequential(unsqueeze, LIFSpike_CW, squeeze): keys `<name>.1.<param>`."""
    torch.manual_seed(0)
    net = SequentialCIFARNet(channels=8, neuron="glif").double().eval()
    with torch.no_grad():
        for q in net.parameters():
            q.add_(torch.randn_like(q) * 0.1)
    glif_names = {n for n, m in net.named_modules() if isinstance(m, GLIF)}
    original = {}
    for key, value in net.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        original[f"{owner}.1.{leaf}" if owner in glif_names else key] = value.clone()
    assert any(".1.alpha" in k for k in original)
    fresh = SequentialCIFARNet(channels=8, neuron="glif").double().eval()
    path = tmp_path / "glif_original.pth"
    torch.save({"net": original, "epoch": 255, "max_test_acc": 0.8366}, path)
    load_model_weights(fresh, path)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(fresh(x), net(x))
