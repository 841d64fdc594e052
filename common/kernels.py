"""Fused Triton kernels for the PSN family: spikes = heaviside(W x + b) over time, ATan surrogate.

One forward and one backward kernel serve PSN, masked PSN and sliding PSN: the
neurons pass their effective [T, T] matrix (full, masked, or the sliding band) and
a [T] bias, and autograd carries the weight gradient back through the mask or band.

- Forward: reads x once and writes spikes once; no membrane potential is stored.
- Backward: recomputes the potential from x, writes the input gradient, and sums the
  weight and bias gradients per program into small partial buffers, added up by torch
  (deterministic: no atomics).
- x is seen as T slabs of M elements: each time step of a [T, N, C, H, W] activation is
  one dense slab in the contiguous and the channels-last layouts alike, so the kernels
  read and write either (or any dense layout) in place, with no copy.
- fp32, fp16 and bf16 inputs; the arithmetic is fp32 and the spikes and the input
  gradient come back in the input's dtype.
- Three paths by T (`launch_config`): unrolled outer products for short sequences
  (forward T <= 16, backward T <= 8), `tl.dot` in IEEE mode with W held whole (forward
  T <= 64, backward T <= 32), and W walked in tiles beyond (up to T = 256). Each setting
  keeps every compiled variant at <= 128 registers per thread, no spills and >= 16 warps
  per SM on sm_80 and sm_90 (`scripts/kernel_resources.py` checks it without a GPU).

The ops are registered with `torch.library`, so `torch.compile`d models keep them as
opaque calls. The torch path of `common.neurons` is the reference; the tests run these
kernels on CPU under `TRITON_INTERPRET=1` against it.
"""
import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    HAVE_TRITON = False

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_ENABLED = os.environ.get("PSN_FUSED", "1") != "0"
# PSN_FUSED=1 forces the kernels: a failure to compile or launch is then an error instead
# of a warning and a fall back to the torch path.
_FORCED = os.environ.get("PSN_FUSED") == "1"
_warned = False
# Under the Triton interpreter the kernels also run on CPU tensors; the neurons take that
# path only when a test asks for it (it is far slower than the torch path on a CPU).
INTERPRET_ON_CPU = False
MAX_T = 256


def set_enabled(flag: bool) -> None:
    """Switch the fused path on or off (off: the torch reference path; for benchmarks and debugging)."""
    global _ENABLED
    _ENABLED = bool(flag)


def is_enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def enabled(flag: bool):
    """`with kernels.enabled(False): ...` runs a block on one path and restores the previous setting."""
    previous = _ENABLED
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def _fall_back(error: Exception) -> None:
    """A kernel failed to compile or launch (an older GPU, another Triton): warn once and switch to
    the torch path, which computes the same function; with PSN_FUSED=1 the error stands."""
    global _warned
    if _FORCED:
        raise error
    set_enabled(False)
    if not _warned:
        _warned = True
        cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(f"The fused PSN kernels failed here ({type(error).__name__}: {cause}); the PSN family "
                      "continues on the torch path (same results, slower). PSN_FUSED=1 makes this an error, "
                      "PSN_FUSED=0 skips the kernels.", RuntimeWarning, stacklevel=3)


def usable(x: torch.Tensor, surrogate_function) -> bool:
    """Whether a neuron call can take the fused path: CUDA (or the Triton interpreter), ATan, T <= MAX_T."""
    if not (HAVE_TRITON and _ENABLED):
        return False
    if not (x.is_cuda or (_INTERPRET and INTERPRET_ON_CPU and x.device.type == "cpu")):
        return False
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.dim() < 2 or x.shape[0] > MAX_T:
        return False
    if x.numel() == 0:  # nothing to launch a grid over
        return False
    if x[0].numel() >= 2**31 or x.stride(0) >= 2**31:
        # Element counts and strides reach the kernels as i32 (their i64 variants spill registers): a time step
        # of 2^31 elements or more (8 GiB in fp32) takes the torch path.
        return False
    from spikingjelly.activation_based import surrogate

    return type(surrogate_function) is surrogate.ATan and surrogate_function.spiking


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense in some order of its dimensions (contiguous, channels-last, ...)."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _slab_layout(x: torch.Tensor) -> bool:
    """True when every time step of x is one dense slab at x + t * stride(0), laid out alike."""
    return x.stride(0) >= x[0].numel() and _is_dense(x[0]) and (x.shape[0] == 1 or x.stride(0) == x[0].numel())


if HAVE_TRITON:

    # Short sequences (T <= SMALL_T_FORWARD / SMALL_T_BACKWARD): the time mixing is unrolled into T outer products,
    # so no work is spent on padding T up to tl.dot's minimum tile of 16.

    @triton.jit
    def _psn_forward_small_kernel(x_ptr, w_ptr, b_ptr, s_ptr, M, stride_t,
                                  T: tl.constexpr, T_P2: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        rows = tl.arange(0, T_P2)
        row_ok = rows < T
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        col_ok = cols < M
        step = tl.zeros([], dtype=tl.int64) + stride_t  # int64 offsets; works when Triton made stride_t a constant
        h = tl.zeros([T_P2, BLOCK], dtype=tl.float32) + tl.load(b_ptr + rows, mask=row_ok, other=0.0)[:, None]
        for j in tl.static_range(T):
            x_j = tl.load(x_ptr + j * step + cols, mask=col_ok, other=0.0).to(tl.float32)
            w_j = tl.load(w_ptr + rows * T + j, mask=row_ok, other=0.0)
            h += w_j[:, None] * x_j[None, :]
        offsets = rows.to(tl.int64)[:, None] * step + cols[None, :]
        tl.store(s_ptr + offsets, (h >= 0.0).to(s_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _psn_backward_small_kernel(x_ptr, g_ptr, w_ptr, b_ptr, gx_ptr, gw_part_ptr, gb_part_ptr, M, stride_t,
                                   alpha, n_blocks, T: tl.constexpr, T_P2: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        n_programs = tl.num_programs(0)
        rows = tl.arange(0, T_P2)
        row_ok = rows < T
        step = tl.zeros([], dtype=tl.int64) + stride_t  # int64 offsets; works when Triton made stride_t a constant
        b = tl.load(b_ptr + rows, mask=row_ok, other=0.0)
        half_alpha = alpha * 0.5
        gw_acc = tl.zeros([T_P2, T_P2], dtype=tl.float32)
        gb_acc = tl.zeros([T_P2], dtype=tl.float32)
        for block in range(pid, n_blocks, n_programs):
            cols = block * BLOCK + tl.arange(0, BLOCK)
            col_ok = cols < M
            h = tl.zeros([T_P2, BLOCK], dtype=tl.float32) + b[:, None]
            for j in tl.static_range(T):
                x_j = tl.load(x_ptr + j * step + cols, mask=col_ok, other=0.0).to(tl.float32)
                h += tl.load(w_ptr + rows * T + j, mask=row_ok, other=0.0)[:, None] * x_j[None, :]
            offsets = rows.to(tl.int64)[:, None] * step + cols[None, :]
            ok = row_ok[:, None] & col_ok[None, :]
            g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            ah = 3.141592653589793 * half_alpha * h
            gh = g * (half_alpha / (1.0 + ah * ah))
            for j in tl.static_range(T):
                w_j = tl.load(w_ptr + rows * T + j, mask=row_ok, other=0.0)
                gx_j = tl.sum(w_j[:, None] * gh, axis=0)  # d loss / d x[j] = sum_t W[t, j] gh[t]
                tl.store(gx_ptr + j * step + cols, gx_j.to(gx_ptr.dtype.element_ty), mask=col_ok)
                x_j = tl.load(x_ptr + j * step + cols, mask=col_ok, other=0.0).to(tl.float32)  # cache-hot
                column = tl.sum(gh * x_j[None, :], axis=1)  # d loss / d W[:, j]
                gw_acc += tl.where(rows[None, :] == j, column[:, None], 0.0)
            gb_acc += tl.sum(gh, axis=1)
        square = rows[:, None] * T_P2 + rows[None, :]
        tl.store(gw_part_ptr + pid * T_P2 * T_P2 + square, gw_acc)
        tl.store(gb_part_ptr + pid * T_P2 + rows, gb_acc)

    # Longer sequences: the [T, T] x [T, BLOCK] products go through tl.dot (fp32, IEEE).

    @triton.jit
    def _psn_forward_kernel(x_ptr, w_ptr, b_ptr, s_ptr, M, stride_t, T,
                            T_PAD: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        rows = tl.arange(0, T_PAD)
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < T
        w = tl.load(w_ptr + rows[:, None] * T + rows[None, :], mask=row_ok[:, None] & row_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rows, mask=row_ok, other=0.0)
        offsets = rows.to(tl.int64)[:, None] * stride_t + cols[None, :]
        ok = row_ok[:, None] & (cols < M)[None, :]
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        h = tl.dot(w, x, input_precision="ieee") + b[:, None]
        tl.store(s_ptr + offsets, (h >= 0.0).to(s_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _psn_backward_kernel(x_ptr, g_ptr, w_ptr, b_ptr, gx_ptr, gw_part_ptr, gb_part_ptr, M, stride_t, T,
                             alpha, n_blocks, T_PAD: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        n_programs = tl.num_programs(0)
        rows = tl.arange(0, T_PAD)
        row_ok = rows < T
        w = tl.load(w_ptr + rows[:, None] * T + rows[None, :], mask=row_ok[:, None] & row_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rows, mask=row_ok, other=0.0)
        half_alpha = alpha * 0.5
        gw_acc = tl.zeros([T_PAD, T_PAD], dtype=tl.float32)
        gb_acc = tl.zeros([T_PAD], dtype=tl.float32)
        for block in range(pid, n_blocks, n_programs):  # persistent: few programs, few partial sums
            cols = block * BLOCK + tl.arange(0, BLOCK)
            offsets = rows.to(tl.int64)[:, None] * stride_t + cols[None, :]
            ok = row_ok[:, None] & (cols < M)[None, :]
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            h = tl.dot(w, x, input_precision="ieee") + b[:, None]
            # ATan surrogate: d spike / d h = (alpha/2) / (1 + (pi * alpha/2 * h)^2)
            ah = 3.141592653589793 * half_alpha * h
            gh = g * (half_alpha / (1.0 + ah * ah))
            gx = tl.dot(tl.trans(w), gh, input_precision="ieee")
            tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=ok)
            gw_acc += tl.dot(gh, tl.trans(x), input_precision="ieee")
            gb_acc += tl.sum(gh, axis=1)
        square = rows[:, None] * T_PAD + rows[None, :]
        tl.store(gw_part_ptr + pid * T_PAD * T_PAD + square, gw_acc)
        tl.store(gb_part_ptr + pid * T_PAD + rows, gb_acc)

    # Long sequences (T > DOT_MAX_T_FORWARD / _BACKWARD): W no longer fits in registers or shared memory, so
    # it is walked in [TILE, TILE] tiles (from L2: it is tiny next to x) and each program
    # keeps one [TILE, BLOCK] accumulator. Forward: spikes. Backward: the surrogate
    # gradient gh = g * dS/dH into an fp32 buffer, from which two GEMMs give dX = W^T gh
    # and dW = gh X^T (see _backward): no [T, T] accumulator per program.

    @triton.jit
    def _psn_tiled_kernel(x_ptr, w_ptr, b_ptr, g_ptr, out_ptr, M, stride_t, T, alpha,
                          T_PAD: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr, GRAD: tl.constexpr):
        pid = tl.program_id(0)
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        col_ok = cols < M
        half_alpha = alpha * 0.5
        for r0 in range(0, T_PAD, TILE):
            rows = r0 + tl.arange(0, TILE)
            row_ok = rows < T
            h = tl.zeros([TILE, BLOCK], dtype=tl.float32) + tl.load(b_ptr + rows, mask=row_ok, other=0.0)[:, None]
            for k0 in range(0, T_PAD, TILE):
                ks = k0 + tl.arange(0, TILE)
                k_ok = ks < T
                w = tl.load(w_ptr + rows[:, None] * T + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptr + ks.to(tl.int64)[:, None] * stride_t + cols[None, :],
                            mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                h += tl.dot(w, x, input_precision="ieee")
            offsets = rows.to(tl.int64)[:, None] * stride_t + cols[None, :]
            ok = row_ok[:, None] & col_ok[None, :]
            if GRAD:
                g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
                ah = 3.141592653589793 * half_alpha * h
                tl.store(out_ptr + offsets, g * (half_alpha / (1.0 + ah * ah)), mask=ok)
            else:
                tl.store(out_ptr + offsets, (h >= 0.0).to(out_ptr.dtype.element_ty), mask=ok)


# Which kernel runs at which T, per direction (docs/benchmark.md has the register counts, the occupancy and the
# bytes per neuron-step behind these bounds):
SMALL_T_FORWARD = 16  # unrolled outer products up to here; tl.dot tiles beyond
SMALL_T_BACKWARD = 8  # the unrolled backward's registers grow with T: past 8 it falls under 16 warps per SM
DOT_MAX_T_FORWARD = 64
DOT_MAX_T_BACKWARD = 32  # a [64, 64] W and its gradient in registers leave 8 warps per SM: T > 32 goes tiled


@dataclass(frozen=True)
class LaunchConfig:
    """What the dispatcher launches for one kernel at one T: the kernel, its compile-time
    constants and launch settings. scripts/kernel_resources.py compiles exactly these."""

    name: str  # small | dot | tiled
    kernel: object
    constexprs: dict
    num_warps: int
    num_stages: int
    # At most 128 registers per thread: room for 16 resident warps per SM at any block size. With an explicit
    # limit ptxas also stops trading a few bytes of spills for occupancy, which it does on its own.
    maxnreg: int = 128

    @property
    def options(self) -> dict:
        """The launch options Triton compiles with (the constexprs come separately)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "maxnreg": self.maxnreg}

    @property
    def block(self) -> int:
        return self.constexprs["BLOCK"]


def launch_config(direction: str, T: int) -> LaunchConfig:
    """The kernel and settings for `direction` ('forward' or 'backward') at T steps.

    Chosen so that no variant a launch can get (16-byte aligned or not, fp32/fp16/bf16, sm_80 and
    sm_90) spills registers, and that every variant up to T = 64 leaves room for at least 16
    resident warps per SM (checked ahead of time by tests/test_kernel_resources.py): software
    pipelining is off (num_stages=1: the loops are short and the loads coalesced; its buffers
    cost registers and shared memory), and the [T, BLOCK] tiles shrink as T grows.
    """
    if not 1 <= T <= MAX_T:
        raise ValueError(f"the fused kernels take 1 <= T <= {MAX_T}, got {T}")
    p2 = triton.next_power_of_2(T)
    t_pad = max(16, p2)
    if direction == "forward":
        if T <= SMALL_T_FORWARD:
            block = 256 if T <= 8 else 128  # T rows of BLOCK potentials per program
            return LaunchConfig("small", _psn_forward_small_kernel, {"T": T, "T_P2": p2, "BLOCK": block}, 4, 1)
        if T <= DOT_MAX_T_FORWARD:
            warps = 8 if t_pad <= 32 else 16  # a [64, 64] W over 512 threads: a few registers each
            return LaunchConfig("dot", _psn_forward_kernel, {"T_PAD": t_pad, "BLOCK": 32}, warps, 1)
        return LaunchConfig("tiled", _psn_tiled_kernel, {"T_PAD": t_pad, "TILE": 32, "BLOCK": 64, "GRAD": False}, 8, 1)
    if T <= SMALL_T_BACKWARD:
        return LaunchConfig("small", _psn_backward_small_kernel, {"T": T, "T_P2": p2, "BLOCK": 128}, 4, 1)
    if T <= DOT_MAX_T_BACKWARD:
        # W, its gradient and the [T, BLOCK] tiles spread over more threads as T grows.
        block, warps = (64, 8) if t_pad == 16 else (32, 16)
        return LaunchConfig("dot", _psn_backward_kernel, {"T_PAD": t_pad, "BLOCK": block}, warps, 1)
    return LaunchConfig("tiled", _psn_tiled_kernel, {"T_PAD": t_pad, "TILE": 32, "BLOCK": 64, "GRAD": True}, 8, 1)


LAUNCHES = {"forward": 0, "backward": 0}  # kernel launches so far; tests read it to know the fused path ran


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    T = x.shape[0]
    spikes = torch.empty_like(x)
    M = x[0].numel()
    cfg = launch_config("forward", T)
    grid = (triton.cdiv(M, cfg.block),)
    w, b = weight.float().contiguous(), bias.float().contiguous()
    launch = dict(**_options(cfg), **cfg.constexprs)
    if cfg.name == "small":
        cfg.kernel[grid](x, w, b, spikes, M, x.stride(0), **launch)
    elif cfg.name == "dot":
        cfg.kernel[grid](x, w, b, spikes, M, x.stride(0), T, **launch)
    else:
        cfg.kernel[grid](x, w, b, x, spikes, M, x.stride(0), T, 0.0, **launch)
    LAUNCHES["forward"] += 1
    return spikes


def _options(cfg: LaunchConfig) -> dict:
    # Triton's interpreter takes no register limit: it runs the kernels as numpy code.
    return {k: v for k, v in cfg.options.items() if not (_INTERPRET and k == "maxnreg")}


def _programs(device: torch.device, n_blocks: int) -> int:
    if device.type == "cuda":
        return max(1, min(n_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n_blocks, 4))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A slab-layout [T, ...] tensor as the [T, M] matrix of its memory (channels-last included)."""
    return t.as_strided((t.shape[0], t[0].numel()), (t.stride(0), 1))


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float):
    T = x.shape[0]
    if grad.stride() != x.stride():  # the kernel walks both with one set of offsets
        grad = torch.empty_like(x).copy_(grad)
    M = x[0].numel()
    cfg = launch_config("backward", T)
    w, b = weight.float().contiguous(), bias.float().contiguous()
    launch = dict(**_options(cfg), **cfg.constexprs)
    LAUNCHES["backward"] += 1
    if cfg.name == "tiled":
        gh = torch.empty_like(x, dtype=torch.float32)  # same strides as x: one set of offsets
        cfg.kernel[(triton.cdiv(M, cfg.block),)](x, w, b, grad, gh, M, x.stride(0), T, float(alpha), **launch)
        gh_flat, x_flat = _flat(gh), _flat(x).float()
        grad_x = torch.empty_like(x)
        _flat(grad_x).copy_(w.t() @ gh_flat)
        return grad_x, (gh_flat @ x_flat.t()).to(weight.dtype), gh_flat.sum(1).to(bias.dtype)
    t_pad = cfg.constexprs.get("T_P2", cfg.constexprs.get("T_PAD"))
    n_blocks = triton.cdiv(M, cfg.block)
    programs = _programs(x.device, n_blocks)
    grad_x = torch.empty_like(x)
    gw_part = torch.empty(programs, t_pad, t_pad, device=x.device, dtype=torch.float32)
    gb_part = torch.empty(programs, t_pad, device=x.device, dtype=torch.float32)
    if cfg.name == "small":
        cfg.kernel[(programs,)](x, grad, w, b, grad_x, gw_part, gb_part, M, x.stride(0), float(alpha), n_blocks,
                                **launch)
    else:
        cfg.kernel[(programs,)](x, grad, w, b, grad_x, gw_part, gb_part, M, x.stride(0), T, float(alpha), n_blocks,
                                **launch)
    grad_w = gw_part.sum(0)[:T, :T].to(weight.dtype)
    grad_b = gb_part.sum(0)[:T].to(bias.dtype)
    return grad_x, grad_w, grad_b


def _interpreter_bf16(x: torch.Tensor) -> bool:
    # numpy, which the interpreter computes with, has no bfloat16: there bf16 goes through fp32.
    return _INTERPRET and x.device.type == "cpu" and x.dtype == torch.bfloat16


@torch.library.custom_op("psn::fire", mutates_args=())
def fire_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor:
    if _interpreter_bf16(x):
        return _forward(x.float(), weight, bias).to(x.dtype)
    return _forward(x, weight, bias)


@fire_op.register_fake
def _(x, weight, bias, alpha):
    return torch.empty_like(x)


@torch.library.custom_op("psn::fire_backward", mutates_args=())
def fire_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _interpreter_bf16(x):
        grad_x, grad_w, grad_b = _backward(grad.float(), x.float(), weight, bias, alpha)
        return grad_x.to(x.dtype), grad_w, grad_b
    return _backward(grad, x, weight, bias, alpha)


@fire_backward_op.register_fake
def _(grad, x, weight, bias, alpha):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, alpha = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.alpha = alpha


def _reference_backward(grad, x, weight, bias, alpha):
    """The gradients the backward kernel computes, in torch (the fall back when it cannot run)."""
    flat = x.reshape(x.shape[0], -1).float()
    h = weight.float() @ flat + bias.float().reshape(-1, 1)
    half = alpha / 2
    gh = grad.reshape(h.shape).float() * (half / (1 + (torch.pi * half * h) ** 2))
    grad_x = (weight.float().t() @ gh).view(x.shape).to(x.dtype)
    return grad_x, (gh @ flat.t()).to(weight.dtype), gh.sum(1).to(bias.dtype)


def _fire_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    try:
        grad_x, grad_w, grad_b = fire_backward_op(grad, x, weight, bias, ctx.alpha)
    except Exception as error:  # noqa: BLE001 - any compile or launch failure; _fall_back re-raises if forced
        _fall_back(error)
        grad_x, grad_w, grad_b = _reference_backward(grad, x, weight, bias, ctx.alpha)
    return grad_x, grad_w, grad_b, None


fire_op.register_autograd(_fire_backward, setup_context=_setup_context)


def fire(x_seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Spikes heaviside(weight @ x_seq + bias) over the time axis of x_seq [T, N, *], fused.

    weight: [T, T]; bias: [T] (or anything that reshapes to it); alpha: the ATan surrogate's.
    Returns None when the kernel could not run here (after one warning): the caller then
    takes the torch path.
    """
    T = x_seq.shape[0]
    if not _slab_layout(x_seq):
        x_seq = x_seq.contiguous()
    bias = bias.reshape(-1).expand(T) if bias.numel() == 1 else bias.reshape(T)
    try:
        return fire_op(x_seq, weight, bias, float(alpha))
    except Exception as error:  # noqa: BLE001 - any compile or launch failure; _fall_back re-raises if forced
        _fall_back(error)
        return None


__all__ = ["fire", "usable", "set_enabled", "enabled", "is_enabled", "launch_config", "LAUNCHES", "MAX_T"]
