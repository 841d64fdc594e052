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
- Paths by T (`launch_config`): unrolled outer products for short sequences (forward
  T <= 16, backward T <= 8), `tl.dot` in IEEE mode with W held whole (forward T <= 64,
  backward T <= 32), a `split` backward for T = 33..64 (one kernel writes the surrogate
  gradient gh in fp32 through a bounded buffer, a second turns it into dL/dx and the
  weight sums), and W walked in tiles beyond (up to T = 256). Each setting keeps every
  compiled variant at <= 128 registers per thread, no spills and >= 16 warps per SM on
  sm_80 and sm_90 (`scripts/kernel_resources.py` checks it without a GPU). The settings
  can be overridden per band of T at run time or from common/launch_overrides.json, which
  `scripts/gpu_check.py --apply-sweep` writes from a GPU run's timings.
- Eager calls go through an autograd function straight to the launchers (no dispatcher
  round trip per call); `LAUNCH_FREE` runs all of a call but the launches, to measure
  that host cost without a GPU (`scripts/benchmark_psn.py --host`).

The same work is registered as `torch.library` ops for `torch.compile`, which keeps them as
opaque calls. The torch path of `common.neurons` is the reference; the tests run these
kernels on CPU under `TRITON_INTERPRET=1` against it.
"""
import contextlib
import functools
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


_ATAN = None
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def usable(x: torch.Tensor, surrogate_function) -> bool:
    """Whether a neuron call can take the fused path: CUDA (or the Triton interpreter), ATan, T <= MAX_T."""
    global _ATAN
    if not (HAVE_TRITON and _ENABLED):
        return False
    if not x.is_cuda and not (x.device.type == "cpu" and (LAUNCH_FREE or (_INTERPRET and INTERPRET_ON_CPU))):
        return False
    if x.dtype not in _DTYPES or x.dim() < 2 or x.shape[0] > MAX_T:
        return False
    numel = x.numel()
    if numel == 0:  # nothing to launch a grid over
        return False
    if numel // x.shape[0] >= 2**31 or x.stride(0) >= 2**31:
        # Element counts and strides reach the kernels as i32 (their i64 variants spill registers): a time step
        # of 2^31 elements or more (8 GiB in fp32) takes the torch path.
        return False
    if _ATAN is None:
        from spikingjelly.activation_based import surrogate

        _ATAN = surrogate.ATan
    return type(surrogate_function) is _ATAN and surrogate_function.spiking


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
    if x.is_contiguous():
        return True
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
    def _psn_backward_small_kernel(x_ptr, g_ptr, w_ptr, b_ptr, gx_ptr, part_ptr, M, stride_t,
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
        _store_partials(part_ptr, pid, rows, gw_acc, gb_acc, T_P2)

    @triton.jit
    def _store_partials(part_ptr, pid, rows, gw_acc, gb_acc, T_PAD: tl.constexpr):
        """One program's weight- and bias-gradient sums, side by side in its row of one [programs, T_PAD^2 + T_PAD]
        buffer (one allocation and one torch sum for both)."""
        base = part_ptr + pid * (T_PAD * T_PAD + T_PAD)
        tl.store(base + rows[:, None] * T_PAD + rows[None, :], gw_acc)
        tl.store(base + T_PAD * T_PAD + rows, gb_acc)

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
    def _psn_backward_kernel(x_ptr, g_ptr, w_ptr, b_ptr, gx_ptr, part_ptr, M, stride_t, T,
                             alpha, n_blocks, T_PAD: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
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
            h = tl.dot(w, x, input_precision=PRECISION) + b[:, None]
            # ATan surrogate: d spike / d h = (alpha/2) / (1 + (pi * alpha/2 * h)^2)
            ah = 3.141592653589793 * half_alpha * h
            gh = g * (half_alpha / (1.0 + ah * ah))
            gx = tl.dot(tl.trans(w), gh, input_precision=PRECISION)
            tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=ok)
            gw_acc += tl.dot(gh, tl.trans(x), input_precision=PRECISION)
            gb_acc += tl.sum(gh, axis=1)
        _store_partials(part_ptr, pid, rows, gw_acc, gb_acc, T_PAD)

    @triton.jit
    def _psn_backward_from_gh_kernel(x_ptr, gh_ptr, w_ptr, gx_ptr, part_ptr, M, stride_t, stride_gh, T, n_blocks,
                                     T_PAD: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
        """The `split` backward's second kernel: from gh (fp32, written by the tiled kernel) and x, dX = W^T gh
        in the input's dtype and the per-program sums of dW = gh X^T and db = sum gh. No potential is formed
        here, so W is held once: what the fused `dot` kernel cannot afford at T = 64."""
        pid = tl.program_id(0)
        n_programs = tl.num_programs(0)
        rows = tl.arange(0, T_PAD)
        row_ok = rows < T
        wt = tl.load(w_ptr + rows[None, :] * T + rows[:, None], mask=row_ok[:, None] & row_ok[None, :], other=0.0)
        gw_acc = tl.zeros([T_PAD, T_PAD], dtype=tl.float32)
        gb_acc = tl.zeros([T_PAD], dtype=tl.float32)
        for block in range(pid, n_blocks, n_programs):
            cols = block * BLOCK + tl.arange(0, BLOCK)
            offsets = rows.to(tl.int64)[:, None] * stride_t + cols[None, :]
            ok = row_ok[:, None] & (cols < M)[None, :]
            gh = tl.load(gh_ptr + rows.to(tl.int64)[:, None] * stride_gh + cols[None, :], mask=ok, other=0.0)
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            gx = tl.dot(wt, gh, input_precision=PRECISION)
            tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=ok)
            gw_acc += tl.dot(gh, tl.trans(x), input_precision=PRECISION)
            gb_acc += tl.sum(gh, axis=1)
        _store_partials(part_ptr, pid, rows, gw_acc, gb_acc, T_PAD)

    # Long sequences (forward T > DOT_MAX_T_FORWARD, backward T > DOT_MAX_T_BACKWARD): W is walked in
    # [TILE, TILE] tiles (from L2: it is tiny next to x) and each program keeps one [TILE, BLOCK]
    # accumulator. Forward: spikes. Backward: the surrogate gradient gh = g * dS/dH into an fp32 buffer
    # (its own row stride: the split backward's bounded chunk), from which the split backward's second
    # kernel (T <= 64) or two GEMMs (T > 64) give dX = W^T gh and dW = gh X^T (see _backward).

    @triton.jit
    def _psn_tiled_kernel(x_ptr, w_ptr, b_ptr, g_ptr, out_ptr, M, stride_t, stride_out, T, alpha,
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
            out_offsets = rows.to(tl.int64)[:, None] * stride_out + cols[None, :]  # gh may be a chunk's buffer
            ok = row_ok[:, None] & col_ok[None, :]
            if GRAD:
                g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
                ah = 3.141592653589793 * half_alpha * h
                tl.store(out_ptr + out_offsets, g * (half_alpha / (1.0 + ah * ah)), mask=ok)
            else:
                tl.store(out_ptr + out_offsets, (h >= 0.0).to(out_ptr.dtype.element_ty), mask=ok)


# Which kernel runs at which T, per direction (docs/benchmark.md has the register counts, the occupancy and the
# bytes per neuron-step behind these bounds):
SMALL_T_FORWARD = 16  # unrolled outer products up to here; tl.dot tiles beyond
SMALL_T_BACKWARD = 8  # the unrolled backward's registers grow with T: past 8 it falls under 16 warps per SM
DOT_MAX_T_FORWARD = 64
DOT_MAX_T_BACKWARD = 32  # a [64, 64] W and its gradient in registers leave 8 warps per SM: T > 32 is split
SPLIT_MAX_T_BACKWARD = 64  # the split backward's second kernel holds one [T_PAD, T_PAD] W and its gradient sum

PATHS = {"forward": ("small", "dot", "tiled"), "backward": ("small", "dot", "split", "tiled")}
# How far each path reaches in T (registers and unrolling: beyond these a variant is not worth compiling).
PATH_MAX_T = {"small": 16, "dot": 64, "split": 64, "tiled": MAX_T}
# tl.dot's arithmetic: IEEE fp32, or three TF32 products that recover fp32's accuracy to a few ulps (faster on
# tensor cores). Forward potentials decide spikes and stay IEEE; backward gradients may take either.
PRECISIONS = ("ieee", "tf32x3")
WARPS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class LaunchConfig:
    """What the dispatcher launches for one kernel at one T: the kernel, its compile-time
    constants and launch settings. scripts/kernel_resources.py compiles exactly these."""

    name: str  # small | dot | split | tiled
    kernel: object
    constexprs: dict
    num_warps: int
    num_stages: int
    # At most 128 registers per thread: room for 16 resident warps per SM at any block size. With an explicit
    # limit ptxas also stops trading a few bytes of spills for occupancy, which it does on its own.
    maxnreg: int = 128
    # A kernel launched before this one (the split backward's gh kernel), or None.
    prelude: "LaunchConfig | None" = None

    @property
    def options(self) -> dict:
        """The launch options Triton compiles with (the constexprs come separately)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "maxnreg": self.maxnreg}

    @property
    def block(self) -> int:
        return self.constexprs["BLOCK"]

    @property
    def t_pad(self) -> int:
        return self.constexprs.get("T_P2", self.constexprs.get("T_PAD"))

    @functools.cached_property
    def launch_kwargs(self) -> dict:
        """Everything a launch passes besides the arguments, computed once per config (host time per call)."""
        return {**_options(self), **self.constexprs}

    def kernels(self) -> tuple["LaunchConfig", ...]:
        """Every kernel one call launches, in order."""
        return (*(self.prelude.kernels() if self.prelude else ()), self)


def t_range(T: int) -> str:
    """The band of T that shares one set of compiled kernels and one launch setting: '1-8', '9-16', '17-32', ..."""
    if T <= 8:
        return "1-8"
    top = triton.next_power_of_2(T)
    return f"{top // 2 + 1}-{top}"


def T_RANGES() -> tuple[str, ...]:
    return tuple(dict.fromkeys(t_range(T) for T in range(1, MAX_T + 1)))


def default_setting(direction: str, T: int) -> dict:
    """The shipped choice for one direction and T (before any override): path, BLOCK, warps, stages, precision.

    Chosen so that no variant a launch can get (16-byte aligned or not, fp32/fp16/bf16, sm_80 and
    sm_90) spills registers, and that every variant up to T = 64 leaves room for at least 16
    resident warps per SM (checked ahead of time by tests/test_kernel_resources.py): software
    pipelining is off (num_stages=1: the loops are short and the loads coalesced; its buffers
    cost registers and shared memory), and the [T, BLOCK] tiles shrink as T grows.
    """
    one = {"num_stages": 1, "precision": "ieee"}
    if direction == "forward":
        if T <= SMALL_T_FORWARD:  # T rows of BLOCK potentials per program
            return {"path": "small", "BLOCK": 256 if T <= 8 else 128, "num_warps": 4, **one}
        if T <= DOT_MAX_T_FORWARD:  # a [64, 64] W over 512 threads: a few registers each
            return {"path": "dot", "BLOCK": 32, "num_warps": 8 if T <= 32 else 16, **one}
        return {"path": "tiled", "BLOCK": 64, "num_warps": 8, **one}
    if T <= SMALL_T_BACKWARD:
        return {"path": "small", "BLOCK": 128, "num_warps": 4, **one}
    if T <= DOT_MAX_T_BACKWARD:  # W, its gradient and the [T, BLOCK] tiles spread over more threads as T grows
        return {"path": "dot", "BLOCK": 64, "num_warps": 8, **one} if T <= 16 else \
            {"path": "dot", "BLOCK": 32, "num_warps": 16, **one}
    if T <= SPLIT_MAX_T_BACKWARD:
        return {"path": "split", "BLOCK": 32, "num_warps": 16, **one}
    return {"path": "tiled", "BLOCK": 64, "num_warps": 8, **one}


SETTING_KEYS = ("path", "BLOCK", "num_warps", "num_stages", "precision", "maxnreg")


def _config(direction: str, T: int, setting: dict) -> LaunchConfig:
    """The LaunchConfig a setting makes at T; one ValueError sentence for a setting that cannot run."""
    unknown = set(setting) - set(SETTING_KEYS)
    path, block, warps = setting.get("path"), setting.get("BLOCK"), setting.get("num_warps")
    stages, precision, maxnreg = setting.get("num_stages", 1), setting.get("precision", "ieee"), \
        setting.get("maxnreg", 128)
    where = f"the {direction} launch setting for T = {T}"
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; known: {', '.join(SETTING_KEYS)}.")
    if path not in PATHS[direction]:
        raise ValueError(f"{where}: path {path!r} is not one of {PATHS[direction]}.")
    if T > PATH_MAX_T[path]:
        raise ValueError(f"{where}: the {path} path runs up to T = {PATH_MAX_T[path]}.")
    if not (isinstance(block, int) and 16 <= block <= 1024 and block & (block - 1) == 0):
        raise ValueError(f"{where}: BLOCK must be a power of two from 16 to 1024, got {block!r}.")
    if warps not in WARPS or not isinstance(stages, int) or not 1 <= stages <= 4:
        raise ValueError(f"{where}: num_warps must be one of {WARPS} and num_stages 1 to 4.")
    if not (isinstance(maxnreg, int) and 32 <= maxnreg <= 255):
        raise ValueError(f"{where}: maxnreg must be an integer from 32 to 255.")
    if precision not in PRECISIONS or (direction == "forward" and precision != "ieee"):
        raise ValueError(f"{where}: precision must be one of {PRECISIONS}, and 'ieee' forward "
                         "(the potential decides each spike).")
    p2 = triton.next_power_of_2(T)
    t_pad = max(16, p2)
    rest = dict(num_stages=stages, maxnreg=maxnreg)
    if path == "small":
        kernel = _psn_forward_small_kernel if direction == "forward" else _psn_backward_small_kernel
        return LaunchConfig("small", kernel, {"T": T, "T_P2": p2, "BLOCK": block}, warps, **rest)
    if path == "dot" and direction == "forward":
        return LaunchConfig("dot", _psn_forward_kernel, {"T_PAD": t_pad, "BLOCK": block}, warps, **rest)
    if path == "dot":
        return LaunchConfig("dot", _psn_backward_kernel, {"T_PAD": t_pad, "BLOCK": block, "PRECISION": precision},
                            warps, **rest)
    if path == "split":
        gh = LaunchConfig("tiled", _psn_tiled_kernel, {"T_PAD": t_pad, "TILE": 32, "BLOCK": 64, "GRAD": True}, 8, 1)
        return LaunchConfig("split", _psn_backward_from_gh_kernel,
                            {"T_PAD": t_pad, "BLOCK": block, "PRECISION": precision}, warps, **rest, prelude=gh)
    return LaunchConfig("tiled", _psn_tiled_kernel, {"T_PAD": max(32, t_pad), "TILE": 32, "BLOCK": block,
                                                     "GRAD": direction == "backward"}, warps, **rest)


# Launch settings that replace the defaults per direction and band of T ("backward:33-64": {...}): from
# common/launch_overrides.json (written by `scripts/gpu_check.py --apply-sweep`), from the file named by
# PSN_LAUNCH_CONFIG, or at run time (`launch_overrides`, for the GPU check's sweep).
OVERRIDES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_overrides.json")
_overrides: dict = {}
_configs: dict = {}


def band_of(key: str) -> tuple[str, int, int]:
    """An override's key, 'backward:33-64', as (direction, lowest T, highest T); ValueError if it is none."""
    direction, _, band = str(key).partition(":")
    if direction not in PATHS or band not in T_RANGES():
        raise ValueError(f"launch override {key!r}: keys are 'forward' or 'backward', a colon and one of "
                         f"{', '.join(T_RANGES())}, each with a setting object.")
    low, high = (int(v) for v in band.split("-"))
    return direction, low, high


def _check_overrides(overrides: dict) -> dict:
    if not isinstance(overrides, dict):
        raise ValueError("launch overrides must be a JSON object of 'direction:T-range' -> setting.")
    checked = {}
    for key, setting in overrides.items():
        direction, low, high = band_of(key)
        if not isinstance(setting, dict):
            raise ValueError(f"launch override {key!r}: its setting must be an object, got {setting!r}.")
        merged = {**default_setting(direction, high), **setting}
        for T in (low, high):
            _config(direction, T, merged)  # both ends of the band must build
        checked[str(key)] = dict(setting)
    return checked


def set_launch_overrides(overrides: dict) -> None:
    """Replace the launch overrides (validated first; {} restores the shipped defaults)."""
    global _overrides
    _overrides = _check_overrides(overrides)
    _configs.clear()


def launch_overrides_now() -> dict:
    return dict(_overrides)


@contextlib.contextmanager
def launch_overrides(overrides: dict):
    """`with kernels.launch_overrides({"backward:33-64": {"path": "tiled"}}): ...` runs a block with other launch
    settings on top of the current ones, then restores them."""
    previous = dict(_overrides)
    set_launch_overrides({**previous, **overrides})
    try:
        yield
    finally:
        set_launch_overrides(previous)


def _load_overrides() -> None:
    path = os.environ.get("PSN_LAUNCH_CONFIG") or OVERRIDES_FILE
    if not os.path.exists(path):
        if os.environ.get("PSN_LAUNCH_CONFIG"):
            raise ValueError(f"PSN_LAUNCH_CONFIG names {path}, which does not exist.")
        return
    import json

    try:
        with open(path) as f:
            data = json.load(f)
        set_launch_overrides(data.get("overrides", data) if isinstance(data, dict) else data)
    except (OSError, ValueError) as error:
        raise ValueError(f"launch settings in {path} cannot be used: {error}") from None


def launch_config(direction: str, T: int) -> LaunchConfig:
    """The kernel and settings for `direction` ('forward' or 'backward') at T steps: the default
    (`default_setting`) with any override for T's band on top. Cached: it is asked on every call."""
    cached = _configs.get((direction, T))
    if cached is not None:
        return cached
    if not 1 <= T <= MAX_T:
        raise ValueError(f"the fused kernels take 1 <= T <= {MAX_T}, got {T}")
    if direction not in PATHS:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    setting = {**default_setting(direction, T), **_overrides.get(f"{direction}:{t_range(T)}", {})}
    cfg = _configs[(direction, T)] = _config(direction, T, setting)
    return cfg


def bytes_per_element(direction: str, T: int, element_size: int) -> int:
    """DRAM bytes the fused path moves per neuron and time step at T, each temporary counted (the byte model of
    docs/benchmark.md; `element_size` is the activation's, 4 for fp32 and 2 for fp16 / bf16)."""
    b, path = element_size, launch_config(direction, T).name
    if direction == "forward":
        return 2 * b  # x in, spikes out (the tiled path's second pass over x hits L2)
    if path in ("small", "dot"):
        return 3 * b  # x and dL/dS in, dL/dx out
    if path == "split":
        return (b + b + 4) + (4 + b + b)  # x, dL/dS -> gh (fp32); gh, x -> dL/dx
    # tiled (T > 64): the kernel writes gh; dX = W^T gh (fp32: into dL/dx; else an fp32 temporary and its copy
    # into dL/dx); x as fp32 (half: a converted copy); dW = gh x^T reads both; the bias sum reads gh again.
    kernel, bias_sum = b + b + 4, 4
    if b == 4:
        return kernel + (4 + 4) + (4 + 4) + bias_sum
    return kernel + (4 + 4) + (4 + b) + (b + 4) + (4 + 4) + bias_sum


LAUNCHES = {"forward": 0, "backward": 0}  # kernel launches so far; tests read it to know the fused path ran
# Launch-free mode (`scripts/benchmark_psn.py --host`): every step of a call but the kernel launches themselves
# (every check, allocation, reduction and autograd step kept), and CPU tensors accepted, so the host cost of the
# fused path can be measured on a machine without a GPU. The results are garbage: for timing only.
LAUNCH_FREE = False


def _launch(cfg: LaunchConfig, grid: tuple, *args) -> None:
    if not LAUNCH_FREE:
        cfg.kernel[grid](*args, **cfg.launch_kwargs)


def _options(cfg: LaunchConfig) -> dict:
    # Triton's interpreter takes no register limit: it runs the kernels as numpy code.
    return {k: v for k, v in cfg.options.items() if not (_INTERPRET and k == "maxnreg")}


_SM_COUNT: dict = {}


def _programs(device: torch.device, n_blocks: int) -> int:
    if device.type == "cuda":
        sms = _SM_COUNT.get(device.index)
        if sms is None:
            sms = _SM_COUNT[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_blocks, 4 * sms))
    return max(1, min(n_blocks, 4))


def _kernel_params(weight: torch.Tensor, bias: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W and b as the kernels read them: fp32, dense, b one value per step. No op when they already are."""
    w = weight if weight.dtype is torch.float32 and weight.is_contiguous() else weight.float().contiguous()
    if bias.numel() != T:  # the sliding PSN's one bias for every step
        return w, bias.float().reshape(1).expand(T).contiguous()
    return w, bias if bias.dtype is torch.float32 and bias.is_contiguous() else bias.float().contiguous()


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    T = x.shape[0]
    spikes = torch.empty_like(x)
    M = x.numel() // T
    cfg = launch_config("forward", T)
    w, b = _kernel_params(weight, bias, T)
    grid = ((M + cfg.block - 1) // cfg.block,)
    if cfg.name == "small":
        _launch(cfg, grid, x, w, b, spikes, M, x.stride(0))
    elif cfg.name == "dot":
        _launch(cfg, grid, x, w, b, spikes, M, x.stride(0), T)
    else:
        _launch(cfg, grid, x, w, b, x, spikes, M, x.stride(0), x.stride(0), T, 0.0)
    LAUNCHES["forward"] += 1
    return spikes


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A slab-layout [T, ...] tensor as the [T, M] matrix of its memory (channels-last included)."""
    return t.as_strided((t.shape[0], t.numel() // t.shape[0]), (t.stride(0), 1))


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float):
    """(dL/dx in x's dtype and layout, dL/dW [T, T] fp32, dL/db [T] fp32) for spikes = heaviside(W x + b)."""
    T = x.shape[0]
    if grad.stride() != x.stride():  # the kernels walk both with one set of offsets
        grad = torch.empty_like(x).copy_(grad)
    M = x.numel() // T
    stride = x.stride(0)
    cfg = launch_config("backward", T)
    w, b = _kernel_params(weight, bias, T)
    alpha = float(alpha)
    LAUNCHES["backward"] += 1
    grad_x = torch.empty_like(x)
    if cfg.name == "tiled":  # T > 64: gh from a kernel, then two GEMMs and a sum in torch
        gh = torch.empty_like(x, dtype=torch.float32)  # same strides as x: one set of offsets
        _launch(cfg, ((M + cfg.block - 1) // cfg.block,), x, w, b, grad, gh, M, stride, stride, T, alpha)
        gh_flat, x_flat = _flat(gh), _flat(x)
        if x.dtype is torch.float32 and grad_x.is_contiguous():
            torch.mm(w.t(), gh_flat, out=_flat(grad_x))
        else:
            _flat(grad_x).copy_(w.t() @ gh_flat)
        return grad_x, gh_flat @ (x_flat if x.dtype is torch.float32 else x_flat.float()).t(), gh_flat.sum(1)
    t_pad = cfg.t_pad
    if cfg.name == "split":
        return _split_backward(cfg, grad, x, w, b, alpha, grad_x, M, stride, T)
    n_blocks = (M + cfg.block - 1) // cfg.block
    programs = _programs(x.device, n_blocks)
    # Per-program sums of dW and db, side by side: one buffer, one reduction (no atomics: deterministic).
    part = torch.empty(programs, t_pad * t_pad + t_pad, device=x.device, dtype=torch.float32)
    if cfg.name == "small":
        _launch(cfg, (programs,), x, grad, w, b, grad_x, part, M, stride, alpha, n_blocks)
    else:
        _launch(cfg, (programs,), x, grad, w, b, grad_x, part, M, stride, T, alpha, n_blocks)
    return grad_x, *_weight_and_bias_grads(part, t_pad, T)


# The split backward's gh buffer holds at most this many fp32 values (64 MiB): longer inputs go through it in
# column chunks, so its memory stays bounded whatever the batch (a whole-size gh would cost 4 bytes per element).
GH_BUFFER_ELEMENTS = 2**24


def _split_backward(cfg, grad, x, w, b, alpha, grad_x, M, stride, T):
    """T = 33..64: the tiled kernel writes gh = dL/dS * dS/dH (fp32) for a chunk of columns, the second kernel
    turns it into dL/dx and per-program dW and db sums; chunk after chunk through one bounded gh buffer."""
    pre, t_pad = cfg.prelude, cfg.t_pad
    chunk = max(pre.block, (GH_BUFFER_ELEMENTS // T) // pre.block * pre.block)  # whole blocks of both kernels
    chunk = min(chunk, M)
    gh = torch.empty(T, chunk, device=x.device, dtype=torch.float32)
    per_chunk = _programs(x.device, (chunk + cfg.block - 1) // cfg.block)
    n_chunks = (M + chunk - 1) // chunk
    part = torch.empty(n_chunks * per_chunk, t_pad * t_pad + t_pad, device=x.device, dtype=torch.float32)
    if n_chunks == 1:
        pieces = [(x, grad, grad_x, part, M)]
    else:
        xs, gs, gxs = _flat(x), _flat(grad), _flat(grad_x)
        pieces = [(xs[:, s:], gs[:, s:], gxs[:, s:], part[i * per_chunk:], min(chunk, M - s))
                  for i, s in enumerate(range(0, M, chunk))]
    used = 0
    for x_c, g_c, gx_c, part_c, m in pieces:
        n_blocks = (m + cfg.block - 1) // cfg.block
        programs = _programs(x.device, n_blocks)
        _launch(pre, ((m + pre.block - 1) // pre.block,), x_c, w, b, g_c, gh, m, stride, chunk, T, alpha)
        _launch(cfg, (programs,), x_c, gh, w, gx_c, part_c, m, stride, chunk, T, n_blocks)
        used += programs  # the last chunk may use fewer programs: the rows after its own are never written
    return grad_x, *_weight_and_bias_grads(part[:used] if used < part.shape[0] else part, t_pad, T)


def _weight_and_bias_grads(part: torch.Tensor, t_pad: int, T: int):
    sums = part.sum(0)
    square = t_pad * t_pad
    grad_w = sums[:square].view(t_pad, t_pad)
    if T != t_pad:
        grad_w = grad_w[:T, :T]
    return grad_w, sums[square:square + T]


def _interpreter_bf16(x: torch.Tensor) -> bool:
    # numpy, which the interpreter computes with, has no bfloat16: there bf16 goes through fp32.
    return _INTERPRET and not LAUNCH_FREE and x.device.type == "cpu" and x.dtype == torch.bfloat16


def _run_forward(x, weight, bias):
    if _interpreter_bf16(x):
        return _forward(x.float(), weight, bias).to(x.dtype)
    return _forward(x, weight, bias)


def _run_backward(grad, x, weight, bias, alpha):
    if _interpreter_bf16(x):
        grad_x, grad_w, grad_b = _backward(grad.float(), x.float(), weight, bias, alpha)
        return grad_x.to(x.dtype), grad_w, grad_b
    return _backward(grad, x, weight, bias, alpha)


def _reference_backward(grad, x, weight, bias, alpha):
    """The gradients the backward kernel computes, in torch (the fall back when it cannot run)."""
    flat = x.reshape(x.shape[0], -1).float()
    h = weight.float() @ flat + bias.float().reshape(-1, 1)
    half = alpha / 2
    gh = grad.reshape(h.shape).float() * (half / (1 + (torch.pi * half * h) ** 2))
    grad_x = (weight.float().t() @ gh).view(x.shape).to(x.dtype)
    return grad_x, gh @ flat.t(), gh.sum(1)


def _like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A [T, T] or [T] fp32 gradient in its parameter's shape and dtype (a scalar bias sums its [T])."""
    if grad.shape != param.shape:
        grad = grad.sum() if param.numel() == 1 and grad.numel() != 1 else grad.view(param.shape)
    return grad if grad.dtype is param.dtype else grad.to(param.dtype)


def _backward_or_fall_back(grad, x, weight, bias, alpha, run=None):
    """The backward through `run` (the launchers, or the custom op under torch.compile), or, when it cannot
    run here, the same gradients in torch (after one warning)."""
    try:
        return (run or _run_backward)(grad, x, weight, bias, alpha)
    except Exception as error:  # noqa: BLE001 - any compile or launch failure; _fall_back re-raises if forced
        _fall_back(error)
        return _reference_backward(grad, x, weight, bias, alpha)


class _FusedFire(torch.autograd.Function):
    """The fused path in eager mode: an autograd function calling the launchers directly. The custom ops below
    do the same work for torch.compile; in eager mode their dispatch would cost host time on every call."""

    @staticmethod
    def forward(ctx, x, weight, bias, alpha):
        ctx.save_for_backward(x, weight, bias)
        ctx.alpha = alpha
        return _run_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        grad_x, grad_w, grad_b = _backward_or_fall_back(grad, x, weight, bias, ctx.alpha)
        return grad_x, _like(grad_w, weight), _like(grad_b, bias), None


@torch.library.custom_op("psn::fire", mutates_args=())
def fire_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor:
    return _run_forward(x, weight, bias)


@fire_op.register_fake
def _(x, weight, bias, alpha):
    return torch.empty_like(x)


@torch.library.custom_op("psn::fire_backward", mutates_args=())
def fire_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x, grad_w, grad_b = _run_backward(grad, x, weight, bias, alpha)
    # A custom op may not return views of its outputs or inputs: fresh tensors in the parameters' dtypes.
    return grad_x, grad_w.to(weight.dtype, copy=True), grad_b.to(bias.dtype, copy=True)


@fire_backward_op.register_fake
def _(grad, x, weight, bias, alpha):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, alpha = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.alpha = alpha


def _fire_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    grad_x, grad_w, grad_b = _backward_or_fall_back(grad, x, weight, bias, ctx.alpha, run=fire_backward_op)
    return grad_x, _like(grad_w, weight), _like(grad_b, bias), None


fire_op.register_autograd(_fire_backward, setup_context=_setup_context)


def fire(x_seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Spikes heaviside(weight @ x_seq + bias) over the time axis of x_seq [T, N, *], fused.

    weight: [T, T]; bias: [T], [T, 1] or one value for every step; alpha: the ATan surrogate's.
    Eager mode calls the launchers through an autograd function; under torch.compile the same
    work is one custom op, opaque to the compiler. Returns None when the kernel could not run
    here (after one warning): the caller then takes the torch path.
    """
    if not _slab_layout(x_seq):
        x_seq = x_seq.contiguous()
    try:
        if torch.compiler.is_compiling():
            T = x_seq.shape[0]
            bias = bias.reshape(-1).expand(T) if bias.numel() == 1 else bias.reshape(T)
            return fire_op(x_seq, weight, bias, float(alpha))
        return _FusedFire.apply(x_seq, weight, bias, alpha)
    except Exception as error:  # noqa: BLE001 - any compile or launch failure; _fall_back re-raises if forced
        _fall_back(error)
        return None


if HAVE_TRITON:
    _load_overrides()

__all__ = ["fire", "usable", "set_enabled", "enabled", "is_enabled", "launch_config", "default_setting",
           "launch_overrides", "set_launch_overrides", "LAUNCHES", "MAX_T"]
