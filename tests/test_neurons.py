"""The PSN family against SpikingJelly 2.0's classes (the independent reference), in float64."""
import itertools

import pytest
import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based import neuron as sj

from common import neurons as ours

STEPS = (1, 2, 4, 8, 32)
SHAPES = ((5,), (2, 3, 4, 4))  # inputs [T, N] and [T, N, C, H, W]


def orders(T):
    return sorted({1, 2, T})


def build_pair(kind, T, k):
    """Our neuron and SpikingJelly's, multi-step, float64, with the same random weights."""
    if kind == "psn":
        a, b = ours.PSN(T=T), sj.PSN(T=T)
    elif kind == "masked":
        a, b = ours.MaskedPSN(k=k, T=T, step_mode="m"), sj.MaskedPSN(k=k, T=T, step_mode="m")
    else:
        a, b = ours.SlidingPSN(k=k, exp_init=False, step_mode="m"), sj.SlidingPSN(k=k, exp_init=False, step_mode="m")
    a, b = a.double(), b.double()
    with torch.no_grad():
        for p in a.parameters():
            # Weights spread around 0 and biases near 0, so spikes are mixed and
            # the surrogate gradient is far from flat.
            p.copy_(torch.randn_like(p) * 0.7)
    b.load_state_dict(a.state_dict())
    return a, b


def cases():
    for T, shape in itertools.product(STEPS, SHAPES):
        yield "psn", T, None, shape, None
        for k in orders(T):
            if k <= T:
                yield "masked", T, k, shape, 1.0
                yield "masked", T, k, shape, 0.3  # mid-way through the lambda schedule
            yield "sliding", T, k, shape, None


def run_with_grads(module, x, grad_out):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(grad_out)
    return y.detach(), x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("kind,T,k,shape,lam", list(cases()))
def test_forward_and_gradients_match_spikingjelly(kind, T, k, shape, lam):
    torch.manual_seed(T * 100 + (k or 0))
    a, b = build_pair(kind, T, k)
    if kind == "masked":
        a.lambda_ = lam
        b.lambda_ = lam
    x = torch.randn(T, *shape, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    ya, *ga = run_with_grads(a, x, grad_out)
    yb, *gb = run_with_grads(b, x, grad_out)
    assert ya.shape == x.shape
    assert torch.equal(ya, yb)
    if T > 1:  # a 1x1 weight may well silence every neuron
        assert 0 < ya.sum() < ya.numel()
    for name, u, v in zip(("input", "weight", "bias"), ga, gb):
        assert u.shape == v.shape, name
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("T,k", [(4, 1), (4, 2), (8, 8), (32, 5)])
def test_masked_single_step_equals_multi_step_and_spikingjelly(T, k):
    torch.manual_seed(k)
    a, b = build_pair("masked", T, k)
    a.lambda_ = b.lambda_ = 1.0
    x = torch.randn(T, 6, 3, dtype=torch.float64)
    y_multi = a(x)
    a.step_mode = b.step_mode = "s"
    y_single = functional.multi_step_forward(x, a)
    assert torch.equal(y_single, y_multi)
    assert torch.equal(y_single, functional.multi_step_forward(x, b))


@pytest.mark.parametrize("k,T", [(1, 5), (2, 7), (3, 3), (6, 4)])
def test_sliding_single_step_backends_and_spikingjelly_agree(k, T):
    torch.manual_seed(T + k)
    a, b = build_pair("sliding", T, k)
    x = torch.randn(T, 4, 2, 3, dtype=torch.float64)
    y_gemm = a(x)
    a.backend = "conv"
    y_conv = a(x)
    a.step_mode = b.step_mode = "s"
    y_single = functional.multi_step_forward(x, a)
    functional.reset_net(a)
    assert torch.equal(y_gemm, y_conv)
    assert torch.equal(y_gemm, y_single)
    assert torch.equal(y_gemm, functional.multi_step_forward(x, b))


def test_sliding_conv_backend_gradients_equal_gemm():
    torch.manual_seed(0)
    a, _ = build_pair("sliding", 9, 3)
    x = torch.randn(9, 5, 2, dtype=torch.float64)
    g = torch.randn_like(x)
    gemm = run_with_grads(a, x, g)
    a.zero_grad()
    a.backend = "conv"
    conv = run_with_grads(a, x, g)
    assert torch.equal(gemm[0], conv[0])
    for u, v in zip(gemm[1:], conv[1:]):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_sliding_psn_handles_any_sequence_length():
    a = ours.SlidingPSN(k=3, step_mode="m")
    for T in (1, 2, 3, 17, 100):
        assert a(torch.rand(T, 4)).shape == (T, 4)


def test_sliding_gemm_weight_matches_hand_layout():
    a = ours.SlidingPSN(k=3)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    expected = torch.tensor(
        [[3, 0, 0, 0, 0], [2, 3, 0, 0, 0], [1, 2, 3, 0, 0], [0, 1, 2, 3, 0], [0, 0, 1, 2, 3]], dtype=torch.float32
    )
    assert torch.equal(a.gen_gemm_weight(5), expected)


def test_initialisation_matches_the_paper():
    torch.manual_seed(0)
    psn = ours.PSN(T=4)
    assert torch.equal(psn.bias, -torch.ones(4, 1))
    bound = 1 / 4**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in T
    assert psn.weight.abs().max() <= bound
    spsn = ours.SlidingPSN(k=4)
    assert torch.equal(spsn.weight.data, torch.tensor([0.125, 0.25, 0.5, 1.0]))
    assert spsn.bias.item() == -1.0
    masked = ours.MaskedPSN(k=2, T=4)
    assert masked.lambda_.item() == 0.0
    assert torch.equal(masked.mask0, torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1.0]]))


def test_masked_weight_moves_from_full_to_band():
    torch.manual_seed(1)
    m = ours.MaskedPSN(k=2, T=4)
    outside = m.mask0 == 0
    previous = None
    for lam in (0.25, 0.5, 0.75, 1.0):
        m.lambda_ = lam
        w = m.masked_weight().detach()
        torch.testing.assert_close(w[outside], (1 - lam) * m.weight.detach()[outside])
        assert torch.equal(w[~outside], m.weight.detach()[~outside])
        if previous is not None:
            assert (w[outside].abs() <= previous[outside].abs()).all()
        previous = w
    assert torch.count_nonzero(previous[outside]) == 0


@pytest.mark.parametrize("kind", ["psn", "masked", "sliding"])
def test_state_dicts_move_both_ways(kind):
    torch.manual_seed(3)
    for src_cls, dst_cls in ((ours, sj), (sj, ours)):
        src = {"psn": lambda m: m.PSN(T=8), "masked": lambda m: m.MaskedPSN(k=3, T=8, lambda_init=0.6),
               "sliding": lambda m: m.SlidingPSN(k=3, exp_init=False)}[kind]
        a, b = src(src_cls), src(dst_cls)
        with torch.no_grad():
            for p in a.parameters():
                p.add_(torch.randn_like(p))
        b.load_state_dict(a.state_dict(), strict=True)
        for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert na == nb and ta.shape == tb.shape and torch.equal(ta, tb)
        x = torch.randn(8, 3, 5)
        a.step_mode = b.step_mode = "m"
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["psn", "masked", "sliding"])
def test_half_precision_forward(kind, dtype):
    torch.manual_seed(4)
    a, _ = build_pair(kind, 8, 2)
    if kind == "masked":
        a.lambda_ = 1.0
    x = torch.randn(8, 16, 3, dtype=torch.float64)
    try:
        y = a.to(dtype)(x.to(dtype))
    except RuntimeError as e:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"{dtype} not supported here: {e}")
    assert y.dtype == dtype
    reference = a.double()(x)
    h = torch.addmm(a.bias.double(), a.masked_weight().double() if kind == "masked" else
                    (a.gen_gemm_weight(8) if kind == "sliding" else a.weight).double(), x.flatten(1)).view(x.shape)
    # Spikes agree except where the potential is within half-precision rounding of 0.
    clear = h.abs() > 0.05
    assert torch.equal(y.double()[clear], reference[clear])


def test_autocast_keeps_the_potential_in_fp32_and_the_spikes_in_the_input_dtype():
    """The AMP contract (common.neurons.potential_dtype): W x + b in fp32 whatever autocast says; spikes in the
    dtype of the input (fp32 from a BatchNorm, bf16 from a convolution under autocast)."""
    torch.manual_seed(0)
    psn = ours.PSN(T=4)
    x = torch.randn(4, 1000)
    exact = (psn.weight.detach().double() @ x.double() + psn.bias.detach().double() >= 0).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = psn(x)
        y_low = psn(x.to(torch.bfloat16))
    assert y.dtype == torch.float32 and torch.equal(y, exact)
    assert y_low.dtype == torch.bfloat16


def test_misuse_gets_clear_errors():
    with pytest.raises(ValueError, match=r"PSN\(T=4\) got an input with 3 time steps"):
        ours.PSN(T=4)(torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"MaskedPSN\(T=4\) got an input with 5"):
        ours.MaskedPSN(k=2, T=4, step_mode="m")(torch.rand(5, 2))
    for bad_k in (0, 5, -1):
        with pytest.raises(ValueError, match="k"):
            ours.MaskedPSN(k=bad_k, T=4)
    with pytest.raises(ValueError, match="k"):
        ours.SlidingPSN(k=0)
    with pytest.raises(ValueError, match="T"):
        ours.PSN(T=0)
    with pytest.raises(ValueError, match="backend"):
        ours.SlidingPSN(k=2, backend="cuda")
    with pytest.raises(ValueError, match="step_mode"):
        ours.PSN(T=4).step_mode = "s"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ours.MaskedPSN(k=2, T=4).lambda_ = 1.5

    m = ours.MaskedPSN(k=2, T=4, lambda_init=0.5)
    with pytest.raises(ValueError, match="lambda_ == 1"):
        m(torch.rand(3))
    m.lambda_ = 1.0
    for _ in range(4):
        m(torch.rand(3))
    with pytest.raises(OverflowError, match="reset"):
        m(torch.rand(3))
    m.reset()
    assert m(torch.rand(3)).shape == (3,)
