"""Measuring the PSN family against SpikingJelly 2.0 and the original code path: timing, memory and host cost.

What scripts/benchmark_psn.py and scripts/gpu_check.py measure lives here:

- `timed`: device milliseconds (CUDA events) and host microseconds of a call; `peak_extra_mib`: the peak
  memory a call adds (CUDA's allocator statistics, or on CPU the allocator records of torch's profiler).
- `bench_neurons`: PSN, MaskedPSN and SlidingPSN, ours / SpikingJelly's / the original code's
  (`common.original_psn`), forward, backward and both, with the copy floor that moves the same bytes.
- `host_costs`: the host cost of one call without a GPU, ours in the kernels' launch-free mode.
- `bench_networks`: training images/s and peak memory of the paper's networks with our neurons fused, on
  their torch path, SpikingJelly's, the original code's, and a free spike (the ceiling).
- `neuron_table`, `network_table`, `host_table`: the Markdown the two scripts print.
"""
import contextlib
import math
import statistics
import time

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based import neuron as sj

from . import kernels
from . import neurons as ours
from .original_psn import original_like

NEURONS = ("PSN", "MaskedPSN", "SlidingPSN")
IMPLS = ("ours", "sj", "original")
MODES = ("forward", "backward", "both")
USEFUL_ELEMENTS = {"forward": 2, "backward": 3, "both": 5}  # x in, spikes out; x and dL/dS in, dL/dx out
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Unlimited:
    """A clock that never runs out (the standalone benchmark); gpu_check passes its stage budget instead."""

    def left(self) -> float:
        return math.inf


# --- timing ---------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run, setup=None, warmup: int = 2, reps: int = 10) -> dict:
    """Median device milliseconds of run(setup()) and median host microseconds of the call itself.

    On CUDA the device time comes from events around the call, the host time from the clock with the queue
    empty at the start; `host_bound` says the GPU waited for the host (then the milliseconds measure Python).
    """
    setup = setup or (lambda: None)
    for _ in range(warmup):
        run(setup())
    ms, host = [], []
    cuda = device.type == "cuda"
    for _ in range(reps):
        state = setup()
        sync(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            run(state)
            end.record()
            host.append(1e6 * (time.perf_counter() - t0))
            ms.append((start, end))
        else:
            t0 = time.perf_counter()
            run(state)
            host.append(1e6 * (time.perf_counter() - t0))
            ms.append(host[-1] / 1e3)
        del state
    sync(device)
    if cuda:
        ms = [s.elapsed_time(e) for s, e in ms]
    out = {"ms": statistics.median(ms), "host_us": statistics.median(host)}
    out["host_bound"] = cuda and out["host_us"] > 0.5e3 * out["ms"]
    return out


def peak_extra_mib(device: torch.device, fn) -> float | None:
    """Peak memory fn() adds to what is allocated when it starts (MiB): CUDA's allocator statistics, or on CPU
    the profiler's allocation records (ops' own allocations and frees, in order)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Every allocation and free as the allocator saw it, in order (the profiler's own events fold them into ops).
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    live = peak = 0
    for _, change in records:
        live += change
        peak = max(peak, live)
    return peak / 2**20


# --- neurons --------------------------------------------------------------------------------------

def make_neuron(name: str, impl: str, T: int, k: int, device) -> nn.Module:
    """One neuron of the family as `impl` makes it, all three with the same weights."""
    torch.manual_seed(0)
    module = {"PSN": lambda: ours.PSN(T=T),
              "MaskedPSN": lambda: ours.MaskedPSN(k=k, T=T, lambda_init=1.0, step_mode="m"),
              "SlidingPSN": lambda: ours.SlidingPSN(k=k, step_mode="m")}[name]().to(device)
    if impl == "ours":
        return module
    if impl == "original":
        return original_like(module)
    theirs = {"PSN": lambda: sj.PSN(T=T), "MaskedPSN": lambda: sj.MaskedPSN(k=k, T=T, step_mode="m"),
              "SlidingPSN": lambda: sj.SlidingPSN(k=k, step_mode="m")}[name]()
    theirs.load_state_dict(module.state_dict())
    return theirs.to(device)


def _autocast(device, dtype):
    """Half precision as AMP training runs it; fp32 without autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def neuron_runs(module, x, g, device, dtype) -> dict:
    """(setup, run) per mode for one module on input x with output gradient g."""
    def fresh():
        return x.detach().requires_grad_(True)

    def forward(xg):
        with _autocast(device, dtype):
            y = module(xg)
        functional.reset_net(module)
        return y

    def forward_only(xg):
        forward(xg)

    def backward(y):
        y.backward(g)

    def both(xg):
        forward(xg).backward(g)

    return {"forward": (fresh, forward_only), "backward": (lambda: forward(fresh()), backward), "both": (fresh, both)}


def copy_floor(x: torch.Tensor, device, warmup: int, reps: int) -> dict:
    """Plain copies of x's size and dtype moving the bytes a fused pass must: forward 1 read + 1 write,
    backward 2 reads + 1 write, both."""
    a, b, c = (torch.empty_like(x) for _ in range(3))

    def forward(_):
        a.copy_(b)

    def backward(_):
        torch.add(a, b, out=c)

    def both(_):
        a.copy_(b)
        torch.add(a, b, out=c)

    return {mode: timed(device, fn, None, warmup, reps)["ms"] for mode, fn in
            (("forward", forward), ("backward", backward), ("both", both))}


def bench_neurons(device, Ts, dtypes, numel, warmup, reps, clock=None, impls=IMPLS, on_row=None) -> list[dict]:
    """One row per (dtype, T): the copy floor and, per neuron and implementation, each mode's device ms, host
    us and effective GB/s, and the peak memory of forward + backward. Rows that the clock leaves no time for
    are not started."""
    clock = clock or Unlimited()
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for T in Ts:
            if clock.left() <= 0:
                return rows
            n = numel // T
            g0 = torch.Generator(device=device).manual_seed(T)
            x = (torch.randn(T, n, device=device, generator=g0) * 2).to(dtype)
            g = torch.randn(T, n, device=device, generator=g0).to(dtype)
            size = x.element_size() * T * n
            row = {"dtype": dtype_name, "T": T, "numel": T * n, "floor_ms": copy_floor(x, device, warmup, reps),
                   "neurons": {}}
            for name in NEURONS:
                per_impl = {}
                for impl in impls:
                    module = make_neuron(name, impl, T, min(T, 4), device)
                    result = {}
                    for mode, (setup, run) in neuron_runs(module, x, g, device, dtype).items():
                        t = timed(device, run, setup, warmup, reps)
                        t["gbps"] = USEFUL_ELEMENTS[mode] * size / (t["ms"] * 1e-3) / 1e9
                        result[mode] = t
                    _, both = neuron_runs(module, x, g, device, dtype)["both"]
                    result["peak_mib"] = peak_extra_mib(device, lambda: both(x.detach().requires_grad_(True)))
                    if impl == "ours":
                        result["path"] = {d: kernels.launch_config(d, T).name for d in ("forward", "backward")}
                        result["modeled_bytes_per_element"] = {
                            d: kernels.bytes_per_element(d, T, x.element_size()) for d in ("forward", "backward")}
                    per_impl[impl] = result
                    del module
                row["neurons"][name] = per_impl
            rows.append(row)
            if on_row:
                on_row(rows)
            x = g = None  # freed before the next row's tensors
    return rows


# --- host cost without a GPU ----------------------------------------------------------------------

def host_costs(Ts, rounds: int = 15, calls: int = 40, N: int = 16) -> list[dict]:
    """Host microseconds of one forward + backward call on a [T, N] CPU tensor: ours in launch-free mode, and
    SpikingJelly's (and the original code's) module, interleaved round by round; the median of the rounds."""
    previous = kernels.LAUNCH_FREE
    kernels.LAUNCH_FREE = True
    try:
        rows = []
        device = torch.device("cpu")
        for name in NEURONS:
            for T in Ts:
                x, g = torch.randn(T, N), torch.randn(T, N)
                modules = {impl: make_neuron(name, impl, T, min(T, 4), device) for impl in IMPLS}
                runs = {impl: neuron_runs(m, x, g, device, torch.float32)["both"] for impl, m in modules.items()}
                before = kernels.LAUNCHES["backward"]
                samples = {impl: [] for impl in IMPLS}
                for _ in range(rounds):
                    for impl, (setup, run) in runs.items():
                        states = [setup() for _ in range(calls)]
                        t0 = time.perf_counter()
                        for state in states:
                            run(state)
                        samples[impl].append(1e6 * (time.perf_counter() - t0) / calls)
                assert kernels.LAUNCHES["backward"] > before, "our modules did not take the fused path"
                us = {impl: statistics.median(s) for impl, s in samples.items()}
                rows.append({"neuron": name, "T": T, "ours_us": us["ours"], "spikingjelly_us": us["sj"],
                             "original_us": us["original"], "ratio": us["ours"] / us["sj"]})
        return rows
    finally:
        kernels.LAUNCH_FREE = previous


# --- networks -------------------------------------------------------------------------------------

class FreeSpike(torch.autograd.Function):
    """Heaviside forward, identity backward: a spike function that costs (almost) nothing."""

    @staticmethod
    def forward(ctx, x):
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class FreeNeuron(nn.Module):
    step_mode = "m"

    def forward(self, x):
        return FreeSpike.apply(x)


def swap_neurons(model: nn.Module, variant: str) -> nn.Module:
    """Replace our PSN-family modules by SpikingJelly's ('sj', same weights), the original code's ('original',
    same weights) or the free spike ('free')."""
    for name, child in model.named_children():
        if isinstance(child, (ours.PSN, ours.MaskedPSN, ours.SlidingPSN)):
            if variant == "free":
                new = FreeNeuron()
            elif variant == "original":
                new = original_like(child)
            else:
                if isinstance(child, ours.PSN):
                    new = sj.PSN(T=child.T)
                elif isinstance(child, ours.MaskedPSN):
                    new = sj.MaskedPSN(k=child.k, T=child.T, step_mode="m")
                else:
                    new = sj.SlidingPSN(k=child.k, step_mode="m")
                new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(next(child.parameters()).device))
        else:
            swap_neurons(child, variant)
    return model


def networks(quick: bool):
    """(label, build, input shape, classes, channels-last); the first is the network of the speed goal."""
    from cifar10.models import CIFAR10Net
    from imagenet.models import sew_resnet18
    from sequential_cifar.models import SequentialCIFARNet

    if quick:
        return [("CIFAR10Net c2 T4 b1", lambda: CIFAR10Net(2, 4), (1, 3, 32, 32), 10, False),
                ("SequentialCIFARNet c4 T32 b2", lambda: SequentialCIFARNet(4), (2, 3, 32, 32), 10, False),
                ("SEW ResNet-18 T4 b1 16px", lambda: sew_resnet18(T=4, num_classes=10), (1, 3, 16, 16), 10, False)]
    return [("CIFAR10Net c256 T4 b128", lambda: CIFAR10Net(256, 4), (128, 3, 32, 32), 10, False),
            ("SequentialCIFARNet c128 T32 b128", lambda: SequentialCIFARNet(128), (128, 3, 32, 32), 10, False),
            ("SEW ResNet-18 T4 b64", lambda: sew_resnet18(T=4), (64, 3, 224, 224), 1000, False),
            ("CIFAR10Net c256 T4 b128 channels-last", lambda: CIFAR10Net(256, 4), (128, 3, 32, 32), 10, True)]


VARIANTS = ("fused", "torch", "sj", "original", "free")


def train_steps(build, shape, classes, device, variant: str, steps: int, warmup: int,
                dtype=torch.float16, channels_last=False, wrap=None) -> dict:
    """`steps` SGD steps on a fixed pool of synthetic batches under autocast (fp16 with a scaler, or bf16):
    every step's loss, images/s after `warmup`, and the peak memory of the timed steps."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build().to(device).to(memory_format=fmt)
    if variant in ("sj", "original", "free"):
        swap_neurons(model, variant)
    runner = wrap(model) if wrap else model  # e.g. torch.compile
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    amp = dtype != torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    g = torch.Generator(device=device).manual_seed(1)
    pool = [(torch.randn(shape, device=device, generator=g).contiguous(memory_format=fmt),
             torch.randint(0, classes, (shape[0],), device=device, generator=g)) for _ in range(4)]
    losses = torch.zeros(steps, device=device)
    started = None
    with kernels.enabled(variant != "torch"):
        for step in range(steps):
            if step == warmup:
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                started = time.perf_counter()
            images, labels = pool[step % len(pool)]
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                out = runner(images)
                out = out.mean(0) if out.dim() == 3 else out  # the TET networks return every step's scores
                loss = nn.functional.cross_entropy(out, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            functional.reset_net(model)
            losses[step] = loss.detach().float()
    sync(device)
    seconds = time.perf_counter() - started
    return {"losses": losses.tolist(), "images_per_s": shape[0] * (steps - warmup) / seconds,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def bench_networks(device, quick: bool, steps: int, warmup: int, clock=None, variants=VARIANTS,
                   on_row=None, dtype="float16", first: int | None = None) -> list[dict]:
    """Per network, each variant's images/s, peak MiB and losses under autocast in `dtype` ('float32': none);
    ours against the ceiling, the original code and SpikingJelly."""
    clock = clock or Unlimited()
    rows = []
    for label, build, shape, classes, channels_last in networks(quick)[:first]:
        if clock.left() <= 0:
            break
        row = {"network": label, "dtype": dtype}
        for variant in variants:
            if clock.left() <= 0:
                row.setdefault("skipped", []).append(variant)
                continue
            row[variant] = train_steps(build, shape, classes, device, variant, steps, warmup, DTYPES[dtype],
                                       channels_last=channels_last)
        if "fused" in row and "free" in row:
            row["ceiling_fraction"] = row["fused"]["images_per_s"] / row["free"]["images_per_s"]
        if "fused" in row and "original" in row:
            row["vs_original"] = row["fused"]["images_per_s"] / row["original"]["images_per_s"]
        if "fused" in row and "sj" in row:
            row["vs_sj"] = row["fused"]["images_per_s"] / row["sj"]["images_per_s"]
        rows.append(row)
        if on_row:
            on_row(rows)
    return rows


# --- tables ---------------------------------------------------------------------------------------

def fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}"


def neuron_table(rows: list[dict]) -> list[str]:
    lines = ["### Neurons: forward + backward, GPU ms (SpikingJelly / ours, original / ours); the copy floor; "
             "ours / floor; extra peak MiB (ours / SJ / original)", "",
             "| dtype | T | neuron | ours ms | SJ ms | original ms | SJ / ours | original / ours | floor ms | "
             "ours / floor | ours GB/s | ours host us | peak MiB |", "|" + " --- |" * 13]
    for r in rows:
        for name, impls in r["neurons"].items():
            o = impls["ours"]["both"]
            cells = [r["dtype"], str(r["T"]), name, fmt(o["ms"])]
            for impl in ("sj", "original"):
                cells.append(fmt(impls[impl]["both"]["ms"]) if impl in impls else "—")
            for impl in ("sj", "original"):
                cells.append(f"{impls[impl]['both']['ms'] / o['ms']:.2f}x" if impl in impls else "—")
            floor = r["floor_ms"]["both"]
            cells += [fmt(floor), f"{o['ms'] / floor:.2f}x", f"{o['gbps']:.0f}", f"{o['host_us']:.0f}",
                      " / ".join(fmt(impls[i].get("peak_mib"), 0) for i in IMPLS if i in impls)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Neurons by direction: GPU ms, ours / SJ / original", "",
              "| dtype | T | neuron | forward | backward | ours path (fwd / bwd) |", "|" + " --- |" * 6]
    for r in rows:
        for name, impls in r["neurons"].items():
            cells = [r["dtype"], str(r["T"]), name]
            for mode in ("forward", "backward"):
                cells.append(" / ".join(fmt(impls[i][mode]["ms"]) for i in IMPLS if i in impls))
            path = impls["ours"].get("path", {})
            cells.append(f"{path.get('forward', '—')} / {path.get('backward', '—')}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def network_table(rows: list[dict]) -> list[str]:
    lines = ["### Networks: training images/s under autocast (peak MiB)", "",
             "| network | dtype | fused | torch path | SJ | original | free spike (ceiling) | fused / original | "
             "fused / SJ | of the ceiling | fused / original peak MiB |", "|" + " --- |" * 11]
    for r in rows:
        ips = [fmt(r[v]["images_per_s"], 0) if v in r else "—" for v in VARIANTS]
        ratio = [f"{r[k]:.2f}x" if k in r else "—" for k in ("vs_original", "vs_sj")]
        ceiling = f"{100 * r['ceiling_fraction']:.0f} %" if "ceiling_fraction" in r else "—"
        peak = " / ".join(fmt(r[v]["peak_mib"], 0) if v in r else "—" for v in ("fused", "original"))
        lines.append(f"| {r['network']} | {r['dtype']} | " + " | ".join([*ips, *ratio, ceiling, peak]) + " |")
    return lines


def host_table(rows: list[dict]) -> list[str]:
    lines = ["### Host microseconds per forward + backward call (launch-free; no GPU)", "",
             "| neuron | T | ours us | SJ us | original us | ours / SJ |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['neuron']} | {r['T']} | {r['ours_us']:.1f} | {r['spikingjelly_us']:.1f} | "
                     f"{r['original_us']:.1f} | {r['ratio']:.2f}x |")
    return lines
