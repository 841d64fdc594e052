"""The fused kernels against float64 arithmetic, at any size: the GPU check's correctness at scale.

`correctness_cases` lists what the GPU check runs: each kernel path (T = 4, 16, 32, 64, 128: every forward
and backward path) at 2^20 elements and at an odd per-step count, fp32 and bf16, contiguous and
channels-last, and one bf16 case at T = 64 above 2^31 elements. `check_case` runs one through the fused
path and compares spikes and gradients with float64 arithmetic done in column chunks (so the large case
needs no float64 copy of its input).
"""
import math

import torch

from . import kernels
from .benchmarking import DTYPES


def correctness_cases(dry: bool, device: torch.device) -> list[dict]:
    """Each kernel path (forward / backward: small/small, small/dot, dot/dot, dot/split, tiled/tiled) at
    2^20 elements and at an odd per-step count, fp32 and bf16, and channels-last; one bf16 T = 64 case above
    2^31 elements on a GPU with the memory for it."""
    total = 2**9 if dry else 2**20
    first, rest = [], []
    for T in (4, 16, 32, 64, 128):
        for dtype in ("float32", "bfloat16"):
            M = total // T
            first.append({"T": T, "dtype": dtype, "M": M, "layout": "contiguous"})
            rest.append({"T": T, "dtype": dtype, "M": M + 1 if M % 2 == 0 else M + 2, "layout": "contiguous"})
            rest.append({"T": T, "dtype": dtype, "M": M, "layout": "channels-last"})
    big = 2**31 // 64 + 2**15
    large = {"T": 64, "dtype": "bfloat16", "M": 2**8 if dry else big, "layout": "contiguous", "large": True}
    return [*first, large, *rest]  # every path once, then the large case, then the odd counts and layouts


def _case_input(case: dict, device, generator):
    T, M, dtype = case["T"], case["M"], DTYPES[case["dtype"]]
    if case["layout"] == "channels-last":  # [T*N, C, H, W] in channels-last, seen as [T, N, C, H, W]
        N, H, W = 4, 4, 4
        C = max(2, M // (N * H * W))  # two channels at least: with one, channels-last is contiguous too
        x = torch.randn(T * N, C, H, W, device=device, generator=generator, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last).view(T, N, C, H, W)
    x = torch.empty(T, M, device=device, dtype=dtype)
    chunk = 2**22
    for start in range(0, M, chunk):  # in pieces: the large case must not hold an fp32 copy
        x[:, start:start + chunk] = torch.randn(T, min(chunk, M - start), device=device, generator=generator)
    return x


def check_case(case: dict, device, fire=None) -> dict:
    """The fused path's spikes and gradients for one case against float64 arithmetic, in column chunks.

    Spikes must agree wherever |h| exceeds the fp32 rounding band (1e-4 of sum |W x| + |b|); dL/dx within
    1e-4 (fp32) or 1e-2 (bf16, its rounding) of the largest reference value; dL/dW and dL/db within 1e-3."""
    fire = fire or kernels.fire
    g = torch.Generator(device=device).manual_seed(case["T"] * 1000 + case["M"] % 1000)
    T = case["T"]
    x = _case_input(case, device, g)
    grad = torch.empty_like(x)
    grad.copy_(torch.randn(x.shape, device=device, generator=g, dtype=x.dtype) if x.numel() < 2**28 else
               x.flip(0))  # the large case: any gradient will do, without another large random draw
    weight = (torch.randn(T, T, device=device, generator=g) / math.sqrt(T)).requires_grad_(True)
    bias = (torch.randn(T, device=device, generator=g) * 0.1).requires_grad_(True)
    xg = x.detach().requires_grad_(True)
    spikes = fire(xg, weight, bias, 2.0)
    if spikes is None:
        return {**case, "ok": False, "why": "the fused path declined this input"}
    spikes.backward(grad)
    w64, b64 = weight.detach().double(), bias.detach().double()[:, None]
    xf, sf, gf, gxf = (t.reshape(T, -1) for t in (x, spikes.detach(), grad, xg.grad))
    gw64 = torch.zeros(T, T, dtype=torch.float64, device=device)
    gb64 = torch.zeros(T, dtype=torch.float64, device=device)
    outside = inside = 0
    gx_err = gx_ref = 0.0
    chunk = max(1, 2**26 // T)
    for start in range(0, xf.shape[1], chunk):
        xc = xf[:, start:start + chunk].double()
        h = w64 @ xc + b64
        band = 1e-4 * (w64.abs() @ xc.abs() + b64.abs())
        wrong = (sf[:, start:start + chunk].double() != (h >= 0).double())
        outside += int((wrong & (h.abs() > band)).sum())
        inside += int(wrong.sum())
        gh = gf[:, start:start + chunk].double() * (1.0 / (1 + (math.pi * h) ** 2))  # alpha = 2
        gx = w64.t() @ gh
        gx_err = max(gx_err, float((gxf[:, start:start + chunk].double() - gx).abs().max()))
        gx_ref = max(gx_ref, float(gx.abs().max()))
        gw64 += gh @ xc.t()
        gb64 += gh.sum(1)
        del xc, h, band, wrong, gh, gx
    gw_err = float((weight.grad.double() - gw64).abs().max() / gw64.abs().max().clamp_min(1e-30))
    gb_err = float((bias.grad.double() - gb64).abs().max() / gb64.abs().max().clamp_min(1e-30))
    gx_rel = gx_err / max(gx_ref, 1e-30)
    gx_tol = 1e-4 if case["dtype"] == "float32" else 1e-2
    ok = outside == 0 and gx_rel <= gx_tol and gw_err <= 1e-3 and gb_err <= 1e-3
    paths = {d: kernels.launch_config(d, T).name for d in ("forward", "backward")}
    return {**case, "elements": x.numel(), "paths": paths, "ok": ok, "spike_mismatches_outside_band": outside,
            "spike_mismatches_in_band": inside, "grad_x_rel_err": gx_rel, "grad_w_rel_err": gw_err,
            "grad_b_rel_err": gb_err}


def case_name(c: dict) -> str:
    return f"T={c['T']} {c['dtype']} M={c['M']} {c['layout']}"
