"""Benchmark the PSN family: our fused neurons against SpikingJelly 2.0's and the original code's, side by side.

    python scripts/benchmark_psn.py --json bench.json            # on a GPU: neurons and networks
    python scripts/benchmark_psn.py --host --json host.json      # no GPU needed: host microseconds per call
    python scripts/benchmark_psn.py --quick --device cpu         # a smoke run of the script itself

(1) Neurons: PSN, MaskedPSN and SlidingPSN, each as ours (the fused kernels on a GPU), SpikingJelly 2.0's
class and the original code path (common/original_psn.py: the authors' classes over the SpikingJelly
surrogate of 2023), at T = 4 ... 64 in fp32, fp16 and bf16 (half precision under autocast, as AMP
training runs them), on 2^26 neurons x steps so that GPU time dominates: forward, backward and both
(GPU milliseconds by CUDA events), host microseconds per call, effective GB/s (the bytes a fused pass
must move: 2 elements forward, 3 backward), and the peak memory a forward + backward adds, measured
with every earlier tensor freed. Beside them the copy floor: plain copies moving the same bytes
(1 read + 1 write forward, 2 reads + 1 write backward) on tensors sized beyond L2.
(2) Networks: training images/s and peak memory of the CIFAR-10 network (256 channels, T 4, batch
128), the sequential CIFAR network (128 channels, T 32, batch 128) and SEW ResNet-18 (T 4, batch 64)
under fp16 AMP with our neurons fused, on their torch path, SpikingJelly's classes swapped in, the
original code path, and a free spike (heaviside forward, identity gradient: the ceiling any neuron
kernel can reach); the fraction of that ceiling ours reach.
(3) `--host`: the host cost of one forward + backward call, without a GPU. The kernels' launch-free
mode (`common.kernels.LAUNCH_FREE`) runs every step of our call but the kernel launches (every check,
allocation, reduction and autograd step), on tiny CPU tensors, against SpikingJelly's module on the same
tensors (its arithmetic on them costs about what its launches would): host microseconds per call and
the ratio. Triton's own launch cost, and CUDA's, are outside both.
Prints Markdown tables; `--json` also writes every number. What it measures lives in common/benchmarking.py.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from common import kernels
from common import neurons as ours
from common.benchmarking import (DTYPES, bench_networks, bench_neurons, host_costs, host_table, network_table,
                                 neuron_table)

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions: checks the script runs")
    p.add_argument("--host", action="store_true",
                   help="only the host cost per call, in the kernels' launch-free mode on CPU (no GPU needed)")
    p.add_argument("--T", type=int, nargs="+", default=None, help="time steps (default 4 8 16 32 64)")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--skip-networks", action="store_true")
    args = p.parse_args(argv)
    Ts = args.T or ([4, 8] if args.quick else [4, 8, 16, 32, 64])
    if args.host:
        rows = host_costs(Ts, rounds=3 if args.quick else 15, calls=5 if args.quick else 40)
        print("\n".join(host_table(rows)))
        if args.json:
            Path(args.json).write_text(json.dumps({"torch": torch.__version__, "host": rows}, indent=1))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but no CUDA GPU is visible.", file=sys.stderr)
        return 2
    if args.quick:
        dtypes, numel, warmup, reps, steps = ("float32",), 2**12, 1, 2, (2, 1)
    else:
        dtypes, numel, warmup, reps, steps = tuple(DTYPES), 2**26, 3, 10, (40, 10)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    fused = kernels.usable(torch.empty(4, 1, device=device), ours.PSN(T=4).surrogate_function)
    neuron_rows = bench_neurons(device, Ts, dtypes, numel, warmup, reps)
    network_rows = [] if args.skip_networks else bench_networks(
        device, args.quick, *steps, dtype="float16" if device.type == "cuda" else "float32")
    lines = [f"Device: {device_name} (fused kernels: {'on' if fused else 'off'})", "", *neuron_table(neuron_rows)]
    if network_rows:
        lines += ["", *network_table(network_rows)]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "fused": fused, "torch": torch.__version__,
                                               "neurons": neuron_rows, "networks": network_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
