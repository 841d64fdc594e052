"""The fused Triton kernels against the torch path (the reference), run by Triton's interpreter on CPU."""
import pytest
import torch

from common import kernels
from common.neurons import PSN, MaskedPSN, SlidingPSN

pytestmark = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def interpreted():
    """Let the neurons take the kernels on CPU tensors too (through Triton's interpreter) for one test."""
    if DEVICE == "cpu" and not kernels._INTERPRET:
        pytest.skip("no CUDA GPU and no Triton interpreter (TRITON_INTERPRET=1): the kernels cannot run here")
    previous, was_enabled = kernels.INTERPRET_ON_CPU, kernels.is_enabled()
    kernels.INTERPRET_ON_CPU = True
    try:
        yield
    finally:
        kernels.INTERPRET_ON_CPU = previous
        kernels.set_enabled(was_enabled)


@pytest.fixture
def fused(interpreted):
    """As `interpreted`, and the test must have launched the kernels: a comparison of the torch path
    with itself (no GPU, no interpreter, a dispatch that silently declined) fails here."""
    before = dict(kernels.LAUNCHES)
    yield
    assert kernels.LAUNCHES["forward"] > before["forward"], "the fused forward kernel never ran"


def make(kind, T, k):
    if kind == "psn":
        return PSN(T=T)
    if kind == "masked":
        m = MaskedPSN(k=k, T=T, lambda_init=0.6, step_mode="m")
        return m
    return SlidingPSN(k=k, exp_init=False, step_mode="m")


def both_paths(module, x, grad, autocast_dtype=None):
    """(spikes, grad x, grad weight, grad bias) from the fused path and from the torch path; with `autocast_dtype`
    the forward runs under autocast and the backward after it, as a training step runs them."""
    import contextlib

    results = []
    for fused_path in (True, False):
        with kernels.enabled(fused_path):
            launched = kernels.LAUNCHES["backward"]
            xi = x.detach().clone().requires_grad_(True)
            module.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                y = module(xi)
            y.backward(grad)
            assert (kernels.LAUNCHES["backward"] > launched) == fused_path  # each path ran where it should
            results.append((y.detach(), xi.grad, module.weight.grad.clone(), module.bias.grad.clone()))
    return results


CASES = [("psn", 1, None), ("psn", 4, None), ("psn", 8, None), ("psn", 9, None), ("psn", 32, None), ("psn", 33, None),
         ("psn", 64, None),
         ("psn", 100, None), ("masked", 4, 2), ("masked", 16, 3), ("masked", 32, 32), ("sliding", 4, 2),
         ("sliding", 12, 5), ("sliding", 64, 3), ("sliding", 200, 4)]


@pytest.mark.parametrize("kind,T,k", CASES)
@pytest.mark.parametrize("shape", [(1,), (37,), (3, 5, 6, 6)])
def test_fused_equals_torch_path_fp32(fused, kind, T, k, shape):
    torch.manual_seed(T + (k or 0))
    module = make(kind, T, k).to(DEVICE)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(T, *shape, device=DEVICE)
    grad = torch.randn_like(x)
    (ys, gxs, gws, gbs), (yr, gxr, gwr, gbr) = both_paths(module, x, grad)
    assert torch.equal(ys, yr)
    torch.testing.assert_close(gxs, gxr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gws, gwr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gbs, gbr, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,T,k", [("psn", 4, None), ("masked", 8, 2), ("sliding", 16, 4)])
def test_fused_half_precision_against_fp32_math(fused, kind, T, k, dtype):
    """Half inputs: the kernel computes in fp32 and returns spikes and input gradients in the input dtype."""
    torch.manual_seed(1)
    module = make(kind, T, k).to(DEVICE)
    x = torch.randn(T, 4, 3, 5, device=DEVICE).to(dtype)
    grad = torch.randn_like(x)
    xi = x.clone().requires_grad_(True)
    y = module(xi)
    y.backward(grad)
    assert y.dtype == dtype and xi.grad.dtype == dtype
    weight = module.masked_weight() if kind == "masked" else (
        module.gen_gemm_weight(T) if kind == "sliding" else module.weight)
    h = (weight.detach() @ x.float().flatten(1) + module.bias.detach().reshape(-1, 1)).view(x.shape)
    assert torch.equal(y.float(), (h >= 0).float())
    alpha = 2.0
    sg = (alpha / 2) / (1 + (torch.pi * alpha / 2 * h) ** 2)
    gx = (weight.detach().t() @ (grad.float() * sg).flatten(1)).view(x.shape)
    torch.testing.assert_close(xi.grad.float(), gx, rtol=2e-2, atol=2e-2)


def test_channels_last_and_strided_inputs_need_no_copy_and_agree(fused):
    torch.manual_seed(2)
    module = PSN(T=4).to(DEVICE)
    base = torch.randn(4 * 2, 6, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x_cl = base.view(4, 2, 6, 5, 5)  # each time step a channels-last slab
    assert kernels._slab_layout(x_cl) and not x_cl.is_contiguous()
    y_cl = module(x_cl)
    assert y_cl.stride() == x_cl.stride()  # spikes written in the input's own layout
    with kernels.enabled(False):
        y_ref = module(x_cl.contiguous())
    assert torch.equal(y_cl, y_ref)
    # A layout whose time steps interleave (time not outermost) falls back to one copy, still correct.
    x_t = torch.randn(2, 4, 7, device=DEVICE).transpose(0, 1)
    assert not kernels._slab_layout(x_t)
    with kernels.enabled(False):
        ref = module(x_t)
    assert torch.equal(module(x_t), ref)


def test_gradient_in_another_layout_is_handled(fused):
    torch.manual_seed(3)
    module = PSN(T=2).to(DEVICE)
    x = torch.randn(2 * 3, 4, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last).view(2, 3, 4, 3, 3)
    x.requires_grad_(True)
    y = module(x)
    y.backward(torch.ones(2, 3, 4, 3, 3, device=DEVICE))  # contiguous gradient for a channels-last output
    with kernels.enabled(False):
        x2 = x.detach().contiguous().requires_grad_(True)
        module(x2).backward(torch.ones_like(x2))
    torch.testing.assert_close(x.grad, x2.grad)


def test_only_atan_and_supported_sizes_take_the_fused_path(interpreted):
    from spikingjelly.activation_based import surrogate

    x = torch.randn(4, 3, device=DEVICE)
    assert kernels.usable(x, surrogate.ATan())
    assert not kernels.usable(x, surrogate.Sigmoid())
    assert not kernels.usable(x, surrogate.ATan(spiking=False))
    assert not kernels.usable(torch.randn(kernels.MAX_T + 1, 3, device=DEVICE), surrogate.ATan())
    assert not kernels.usable(x.double(), surrogate.ATan())
    with kernels.enabled(False):
        assert not kernels.usable(x, surrogate.ATan())


def test_custom_op_is_registered_for_torch_compile():
    assert hasattr(torch.ops.psn, "fire") and hasattr(torch.ops.psn, "fire_backward")
    x = torch.randn(4, 8)
    fake = torch._subclasses.fake_tensor.FakeTensorMode()
    with fake:
        out = torch.ops.psn.fire(fake.from_tensor(x), fake.from_tensor(torch.randn(4, 4)),
                                 fake.from_tensor(torch.randn(4)), 2.0)
    assert out.shape == x.shape


def test_fused_path_inside_torch_compile(fused):
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), PSN(T=4), torch.nn.Linear(6, 3)).to(DEVICE)
    x = torch.randn(4, 5, 6, device=DEVICE)
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(net, backend=record, fullgraph=True)(x)
    assert "psn.fire" in graphs[0]  # the kernel is one opaque node of the graph


@pytest.mark.parametrize("channels_last", [False, True])
def test_cifar10_network_trains_the_same_through_the_kernels(fused, channels_last):
    from cifar10.models import CIFAR10Net
    from spikingjelly.activation_based import functional

    torch.manual_seed(5)
    net = CIFAR10Net(channels=4, T=4).to(DEVICE)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32, device=DEVICE)
    results = []
    for fused_path in (True, False):
        with kernels.enabled(fused_path):
            net.zero_grad(set_to_none=True)
            out = net(x)
            out.square().sum().backward()
            functional.reset_net(net)
            results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    (out_f, grads_f), (out_t, grads_t) = results
    torch.testing.assert_close(out_f, out_t, rtol=1e-5, atol=1e-5)
    for gf, gt in zip(grads_f, grads_t):
        torch.testing.assert_close(gf, gt, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_kernel_that_cannot_run_warns_once_and_the_torch_path_takes_over(fused, monkeypatch, where):
    torch.manual_seed(6)
    module = PSN(T=4).to(DEVICE)
    x, grad = torch.randn(4, 3, 5, device=DEVICE), torch.randn(4, 3, 5, device=DEVICE)
    with kernels.enabled(False):
        xr = x.clone().requires_grad_(True)
        yr = module(xr)
        yr.backward(grad)
    module(x)  # one genuine launch, so the fixture's check is met whatever the failure below

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(kernels, f"_{where}", broken)
    monkeypatch.setattr(kernels, "_warned", False)
    xi = x.clone().requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="no kernel image .* continues on the torch path"):
        y = module(xi)
        y.backward(grad)
    assert torch.equal(y, yr) and torch.allclose(xi.grad, xr.grad, atol=1e-6)
    assert not kernels.is_enabled()  # later calls go straight to the torch path, without another warning


def test_forced_kernels_raise_instead(fused, monkeypatch):
    module = PSN(T=4).to(DEVICE)
    module(torch.randn(4, 2, device=DEVICE))

    def broken(*args, **kwargs):
        raise RuntimeError("ptxas failed")

    monkeypatch.setattr(kernels, "_forward", broken)
    monkeypatch.setattr(kernels, "_FORCED", True)
    with pytest.raises(RuntimeError, match="ptxas failed"):
        module(torch.randn(4, 2, device=DEVICE))


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,T,k", [("psn", 4, None), ("masked", 12, 3), ("sliding", 40, 4)])
def test_under_autocast_both_paths_form_the_potential_in_fp32(fused, kind, T, k, amp):
    """The numerical contract under AMP: W x + b in fp32 from fp32 weights, on the fused and the torch path alike.

    With W = I and b = -1 the potential is x - 1; inputs 1 - 1e-3 .. 1 + 1e-3 lie between half-precision
    neighbours of 1, so a path that formed the potential in fp16 or bf16 (as torch.addmm does under autocast)
    would round them onto 1 and fire where fp32 does not."""
    torch.manual_seed(4)
    module = make(kind, T, k).to(DEVICE)
    with torch.no_grad():
        if kind == "sliding":
            module.weight.zero_()
            module.weight[-1] = 1.0
        else:
            module.weight.copy_(torch.eye(T))
        module.bias.fill_(-1.0)
    near = 1 + torch.tensor([-1e-3, -3e-4, -1e-4, 1e-4, 3e-4, 1e-3], device=DEVICE)
    x = near.repeat(T * 8)[: T * 24].view(T, 24)
    grad = torch.randn_like(x)
    (ys, gxs, gws, gbs), (yr, gxr, gwr, gbr) = both_paths(module, x, grad, amp)
    exact = (x.double() - 1 >= 0).to(ys.dtype)
    assert torch.equal(ys, exact) and torch.equal(yr, exact)
    torch.testing.assert_close(gxs, gxr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gws, gwr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gbs, gbr, rtol=1e-4, atol=1e-4)

    # Random weights and half-precision inputs (a convolution's output under autocast): the same spikes and
    # gradients from both paths, in the input's dtype.
    module = make(kind, T, k).to(DEVICE)
    x = torch.randn(T, 3, 7, device=DEVICE).to(amp)
    grad = torch.randn_like(x)
    (ys, gxs, gws, gbs), (yr, gxr, gwr, gbr) = both_paths(module, x, grad, amp)
    assert ys.dtype == yr.dtype == amp and torch.equal(ys, yr)
    torch.testing.assert_close(gxs.float(), gxr.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gws, gwr, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("alpha", [0.5, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,T,k", [("psn", 8, None), ("masked", 8, 3), ("sliding", 12, 4)])
def test_fused_path_uses_the_surrogates_own_alpha(fused, kind, T, k, dtype, alpha):
    """A surrogate with another alpha than ATan's default 2: the fused backward equals the torch path's, and both
    equal the ATan derivative with that alpha, (alpha/2) / (1 + (pi alpha/2 h)^2), worked out here."""
    from spikingjelly.activation_based import surrogate

    torch.manual_seed(5)
    module = make(kind, T, k).to(DEVICE)
    module.surrogate_function = surrogate.ATan(alpha=alpha)
    x = (torch.randn(T, 4, 6, device=DEVICE) * 0.5).to(dtype)
    grad = torch.randn_like(x)
    (ys, gxs, gws, gbs), (yr, gxr, gwr, gbr) = both_paths(module, x, grad)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.equal(ys, yr)
    torch.testing.assert_close(gxs.float(), gxr.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(gws.float(), gwr.float(), rtol=tol * 10, atol=tol * 10)
    torch.testing.assert_close(gbs.float(), gbr.float(), rtol=tol * 10, atol=tol * 10)
    weight = module.masked_weight() if kind == "masked" else (
        module.gen_gemm_weight(T) if kind == "sliding" else module.weight)
    h = (weight.detach().double() @ x.double().flatten(1) + module.bias.detach().double().reshape(-1, 1))
    sg = (alpha / 2) / (1 + (torch.pi * alpha / 2 * h) ** 2)
    gx = (weight.detach().double().t() @ (grad.double().flatten(1) * sg)).view(x.shape)
    torch.testing.assert_close(gxs.double(), gx, rtol=tol * 2, atol=tol * 2)


@pytest.mark.parametrize("T,layout", [(64, "contiguous"), (40, "contiguous"), (64, "channels-last")])
def test_split_backward_in_chunks_equals_the_torch_path(fused, monkeypatch, T, layout):
    """T = 33..64 backward through a gh buffer smaller than the input: three column chunks, the last one short,
    each with its own partial sums; channels-last input too."""
    monkeypatch.setattr(kernels, "GH_BUFFER_ELEMENTS", T * 128)  # 128 columns a chunk
    assert kernels.launch_config("backward", T).name == "split"
    torch.manual_seed(T)
    module = PSN(T=T).to(DEVICE)
    with torch.no_grad():
        module.weight.copy_(torch.randn(T, T) / T ** 0.5)
    if layout == "channels-last":
        x = torch.randn(T * 2, 5, 6, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
        x = x.view(T, 2, 5, 6, 5)  # 300 elements a step, channels-last
    else:
        x = torch.randn(T, 3, 100, device=DEVICE)
    grad = torch.randn_like(x)
    launched = kernels.LAUNCHES["backward"]
    (ys, gxs, gws, gbs), (yr, gxr, gwr, gbr) = both_paths(module, x, grad)
    assert kernels.LAUNCHES["backward"] == launched + 1
    assert torch.equal(ys, yr)
    torch.testing.assert_close(gxs, gxr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gws, gwr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gbs, gbr, rtol=1e-4, atol=1e-4)
