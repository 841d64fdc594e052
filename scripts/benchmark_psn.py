"""Benchmark the PSN family: our fused neurons against SpikingJelly 2.0's, side by side in one run.

    python scripts/benchmark_psn.py --json bench.json            # on a GPU: the full benchmark
    python scripts/benchmark_psn.py --quick --device cpu         # a smoke run of the script itself

(1) Neuron level: forward + backward time and extra peak memory of PSN, MaskedPSN,
SlidingPSN (ours and SpikingJelly's) and SpikingJelly's LIFNode, for T in {4, 8, 16, 32,
64}, fp32 and fp16, on a tensor of 2^24 neurons x steps; beside them the copy floor:
plain copies moving the bytes of the five passes a fused forward + backward needs
(read x, write spikes; read the spike gradient and x, write the input gradient).
(2) Network level: training images/s and peak memory of the CIFAR-10 network (256
channels, T 4, batch 128, AMP, also channels-last), the sequential CIFAR network (128
channels, T 32, batch 128) and SEW ResNet-18 (T 4, batch 64, 224x224), with our neurons,
with SpikingJelly's PSN classes swapped in, and with a spike that costs nothing
(heaviside forward, identity gradient): the ceiling.
Prints Markdown tables; `--json` also writes every number.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based import neuron as sj

from common import kernels
from common import neurons as ours


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, warmup: int, reps: int) -> float:
        """Median milliseconds of fn()."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)


def peak_extra_mib(device: torch.device, fn) -> float | None:
    """Peak memory fn() allocates beyond what was allocated before it (MiB), CUDA only."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def neuron_factories(T: int, k: int):
    return {
        "PSN": (lambda: ours.PSN(T=T), lambda: sj.PSN(T=T)),
        "MaskedPSN": (lambda: ours.MaskedPSN(k=k, T=T, lambda_init=1.0, step_mode="m"),
                      lambda: sj.MaskedPSN(k=k, T=T, lambda_init=1.0, step_mode="m")),
        "SlidingPSN": (lambda: ours.SlidingPSN(k=k, step_mode="m"), lambda: sj.SlidingPSN(k=k, step_mode="m")),
    }


def bench_neurons(device, timer, steps_list, dtypes, numel, warmup, reps) -> list[dict]:
    rows = []
    for dtype in dtypes:
        for T in steps_list:
            n = numel // T
            x = torch.randn(T, n, device=device, dtype=dtype) * 2
            g = torch.randn_like(x)
            xg = x.clone().requires_grad_(True)

            def step(module):
                def run():
                    xg.grad = None
                    y = module(xg)
                    y.backward(g)
                    functional.reset_net(module)
                return run

            a, b, c = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)

            def floor():  # 5 passes: add (2 reads + 1 write) and copy (1 read + 1 write)
                torch.add(a, b, out=c)
                a.copy_(b)

            floor_ms = timer(floor, warmup, reps)
            row = {"dtype": str(dtype).replace("torch.", ""), "T": T, "numel": T * n, "floor_ms": floor_ms}
            for name, (make_ours, make_sj) in neuron_factories(T, min(T, 4)).items():
                for impl, make in (("ours", make_ours), ("sj", make_sj)):
                    module = make().to(device)
                    # SpikingJelly's PSN matmul needs the weight in the input's dtype.
                    if impl == "sj" and dtype != torch.float32:
                        module = module.to(dtype)
                    row[f"{name}_{impl}_ms"] = timer(step(module), warmup, reps)
                    row[f"{name}_{impl}_mib"] = peak_extra_mib(device, step(module))
            lif = sj.LIFNode(tau=2.0, v_reset=None, detach_reset=True, step_mode="m").to(device)
            row["LIF_sj_ms"] = timer(step(lif), warmup, reps)
            row["LIF_sj_mib"] = peak_extra_mib(device, step(lif))
            rows.append(row)
    return rows


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
    """Replace our PSN-family modules by SpikingJelly's (same weights) or by the free spike."""
    for name, child in model.named_children():
        if isinstance(child, (ours.PSN, ours.MaskedPSN, ours.SlidingPSN)):
            if variant == "free":
                new = FreeNeuron()
            elif isinstance(child, ours.PSN):
                new = sj.PSN(T=child.T)
            elif isinstance(child, ours.MaskedPSN):
                new = sj.MaskedPSN(k=child.k, T=child.T, step_mode="m")
            else:
                new = sj.SlidingPSN(k=child.k, step_mode="m")
            if variant == "sj":
                new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(next(child.parameters()).device))
        else:
            swap_neurons(child, variant)
    return model


def networks(quick: bool):
    from cifar10.models import CIFAR10Net
    from imagenet.models import sew_resnet18
    from sequential_cifar.models import SequentialCIFARNet

    if quick:
        return [("CIFAR10Net c16 T4", lambda: CIFAR10Net(16, 4), (8, 3, 32, 32), False),
                ("SequentialCIFARNet c8 T32", lambda: SequentialCIFARNet(8), (8, 3, 32, 32), False)]
    return [("CIFAR10Net c256 T4 b128", lambda: CIFAR10Net(256, 4), (128, 3, 32, 32), False),
            ("CIFAR10Net c256 T4 b128 channels-last", lambda: CIFAR10Net(256, 4), (128, 3, 32, 32), True),
            ("SequentialCIFARNet c128 T32 b128", lambda: SequentialCIFARNet(128), (128, 3, 32, 32), False),
            ("SEW ResNet-18 T4 b64", lambda: sew_resnet18(T=4), (64, 3, 224, 224), False)]


def bench_networks(device, timer, quick, warmup, reps) -> list[dict]:
    rows = []
    amp = device.type == "cuda"
    for label, build, shape, channels_last in networks(quick):
        row = {"network": label}
        for variant in ("ours", "sj", "free"):
            torch.manual_seed(0)
            model = swap_neurons(build().to(device), variant)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=amp)
            images = torch.randn(shape, device=device).contiguous(memory_format=fmt)
            labels = torch.randint(0, 10, (shape[0],), device=device)

            def train_step():
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    out = model(images)
                    out = out.mean(0) if out.dim() == 3 else out
                    loss = nn.functional.cross_entropy(out, labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                functional.reset_net(model)

            ms = timer(train_step, warmup, reps)
            row[f"{variant}_ms"] = ms
            row[f"{variant}_images_per_s"] = shape[0] / (ms / 1e3)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                train_step()
                torch.cuda.synchronize(device)
                row[f"{variant}_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                row[f"{variant}_peak_mib"] = None
        rows.append(row)
    return rows


def fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(neuron_rows, network_rows, device_name) -> str:
    lines = [f"Device: {device_name}", "", "### Neurons: forward + backward (ms; extra peak MiB)", "",
             "| dtype | T | copy floor | PSN ours | PSN SJ | x | Masked ours | Masked SJ | x | Sliding ours | "
             "Sliding SJ | x | LIF SJ |", "|" + " --- |" * 13]
    for r in neuron_rows:
        cells = [r["dtype"], str(r["T"]), fmt(r["floor_ms"])]
        for name in ("PSN", "MaskedPSN", "SlidingPSN"):
            o, s = r[f"{name}_ours_ms"], r[f"{name}_sj_ms"]
            om, sm = r[f"{name}_ours_mib"], r[f"{name}_sj_mib"]
            cells += [f"{fmt(o)} ({fmt(om, 0)})", f"{fmt(s)} ({fmt(sm, 0)})", f"{s / o:.1f}x"]
        cells.append(f"{fmt(r['LIF_sj_ms'])} ({fmt(r['LIF_sj_mib'], 0)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Networks: one training step", "",
              "| network | ours img/s | SJ img/s | speed-up | ours peak MiB | SJ peak MiB | free-spike img/s (ceiling) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in network_rows:
        lines.append(f"| {r['network']} | {r['ours_images_per_s']:.0f} | {r['sj_images_per_s']:.0f} | "
                     f"{r['ours_images_per_s'] / r['sj_images_per_s']:.2f}x | {fmt(r['ours_peak_mib'], 0)} | "
                     f"{fmt(r['sj_peak_mib'], 0)} | {r['free_images_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions: checks the script runs")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--skip-networks", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but no CUDA GPU is visible.", file=sys.stderr)
        return 2
    timer = Timer(device)
    if args.quick:
        steps, dtypes, numel, warmup, reps = (4, 8), (torch.float32,), 2**12, 1, 2
    else:
        steps, dtypes, numel, warmup, reps = (4, 8, 16, 32, 64), (torch.float32, torch.float16), 2**24, 5, 20
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    fused = kernels.usable(torch.empty(4, 1, device=device), ours.PSN(T=4).surrogate_function)
    neuron_rows = bench_neurons(device, timer, steps, dtypes, numel, warmup, reps)
    network_rows = [] if args.skip_networks else bench_networks(device, timer, args.quick, warmup, reps)
    print(markdown(neuron_rows, network_rows, f"{device_name} (fused kernels: {'on' if fused else 'off'})"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "fused": fused, "torch": torch.__version__,
                                               "neurons": neuron_rows, "networks": network_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
