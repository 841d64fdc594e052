"""Registers, spills, shared memory and resident warps of every fused-kernel variant, compiled ahead of time
(no GPU needed).

    python scripts/kernel_resources.py                       # every variant a launch can get (~minutes)
    python scripts/kernel_resources.py --T 32 64 --dtype fp32 --arch 90 --markdown

Each variant is exactly what `common.kernels.launch_config` makes the dispatcher launch
for that T, compiled by Triton for the target (`GPUTarget('cuda', 80|90, 32)`); the
PTX then goes through the `ptxas` that Triton ships, with the flags Triton itself uses,
whose `-v` report gives registers per thread and spill bytes. Shared memory is Triton's
own figure, checked against the target's per-block limit.

A launch gets one of several compiled variants: Triton specialises every pointer on being
16-byte aligned, and every integer argument (the element count M, the time stride, and T
where it is not a compile-time constant) on being divisible by 16. Both extremes are
compiled: `aligned` (every pointer aligned, M and the stride divisible) and `unaligned`
(none of them: a fully connected layer of 10 features, an odd last batch, a sliced tensor),
each with T's own divisibility as a launch at that T has it. The default T list holds one
T for every compiled kernel: each T of the unrolled paths, and for each padded size of the
tiled paths one T that is a multiple of 16 and one that is not.

A variant is ok when it spills nothing, uses at most 255 registers and the shared memory a
block may have, and, for T <= 64, leaves room for at least 16 resident warps per SM (65,536
registers per SM, allocated per warp in units of 256; shared memory per SM; at most 32
blocks and 64 warps): a memory-bound kernel needs that many warps' loads in flight.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

# Compiling for a GPU target needs the real JIT functions, not the interpreter's stand-ins: set before Triton is
# first imported, for this process and the worker processes it starts. Only when run as a script: a process that
# imports this module (a test) keeps its own setting (an interpreter run in it would break if this changed it).
if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "0"

DTYPES = ("fp32", "fp16", "bf16")
ARCHS = (80, 90)
# Shared memory one block may use (opt-in maximum), and one SM has: A100 163 / 164 KiB, H100/H200 227 / 228 KiB;
# the driver reserves 1 KiB of it per block.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
REGISTERS_PER_SM = 65536
MAX_REGISTERS = 255
MIN_WARPS_PER_SM = 16  # for T <= OCCUPANCY_T
OCCUPANCY_T = 64


def variant_Ts() -> tuple[int, ...]:
    """One T per compiled kernel of either direction (see the module's docstring)."""
    from common import kernels as K

    chosen = set(range(1, max(K.SMALL_T_FORWARD, K.SMALL_T_BACKWARD) + 1))
    for low, high in ((9, 16), (17, 32), (33, 64), (65, 128), (129, 256)):
        chosen |= {low, high}  # low is no multiple of 16, high is
    return tuple(sorted(chosen))


T_VALUES = variant_Ts()
# Arguments that carry the activation's dtype; every other pointer is an fp32 buffer.
ACTIVATION_ARGS = {"x_ptr", "g_ptr", "s_ptr", "gx_ptr"}
# Every integer argument is an i32: common.kernels.usable sends a time step of 2**31 elements or more to the
# torch path, so no launch gets the 64-bit variants (which spill a few bytes).
INT64_ARGS: set[str] = set()
FLOAT_ARGS = {"alpha"}


@dataclass
class Resources:
    direction: str
    T: int
    dtype: str
    arch: int
    aligned: bool
    path: str
    constexprs: dict
    num_warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int

    @property
    def warps_per_sm(self) -> int:
        """Resident warps one SM can hold of this kernel: registers (per warp, in units of 256), shared memory
        (plus the driver's 1 KiB per block), at most 32 blocks and 64 warps."""
        per_warp = -(-self.registers * 32 // 256) * 256
        blocks = min(32, 64 // self.num_warps, REGISTERS_PER_SM // (per_warp * self.num_warps),
                     SHARED_PER_SM[self.arch] // (self.shared + 1024))
        return blocks * self.num_warps

    @property
    def ok(self) -> bool:
        return (self.spill_stores == 0 and self.spill_loads == 0 and self.registers <= MAX_REGISTERS
                and self.shared <= SHARED_LIMIT[self.arch]
                and (self.T > OCCUPANCY_T or self.warps_per_sm >= MIN_WARPS_PER_SM))


def _signature(kernel, dtype: str, constexprs: dict, out_dtype: str) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "out_ptr":  # the tiled kernel: spikes (activation dtype) or gh (fp32)
            sig[name] = f"*{out_dtype}"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}" if name in ACTIVATION_ARGS else "*fp32"
        elif name in INT64_ARGS:
            sig[name] = "i64"
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _ptxas() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def measure(direction: str, T: int, dtype: str, arch: int, aligned: bool = True) -> list[Resources]:
    """Every kernel one call at T launches (the split backward launches two), compiled as launched."""
    from common.kernels import launch_config

    cfg = launch_config(direction, T)
    results = []
    for kernel_cfg in cfg.kernels():
        r = measure_config(kernel_cfg, direction, T, dtype, arch, aligned)
        if kernel_cfg is not cfg:
            r.path = f"{cfg.name}:{kernel_cfg.name}"  # the split backward's gh kernel: 'split:tiled'
        results.append(r)
    return results


def measure_config(cfg, direction: str, T: int, dtype: str, arch: int, aligned: bool = True) -> Resources:
    """Compile one LaunchConfig for one dtype and target, and read ptxas's report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = cfg.kernel
    out_dtype = "fp32" if cfg.constexprs.get("GRAD") else dtype
    signature = _signature(kernel, dtype, cfg.constexprs, out_dtype)
    attrs = {}
    for i, name in enumerate(kernel.arg_names):
        if aligned and (name.endswith("_ptr") or name in ("M", "stride_t", "stride_out", "stride_gh")):
            attrs[(i,)] = [["tt.divisibility", 16]]
        if name == "T" and name not in cfg.constexprs and T % 16 == 0:  # T's own, whatever the pointers are
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=cfg.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=cfg.options)
    ptx = compiled.asm["ptx"]
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)  # sm_90 compiles to sm_90a
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        # The flags Triton's own make_cubin passes (line info, its register-allocation workaround).
        report = subprocess.run([_ptxas(), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={target}",
                                 str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr

    def number(pattern):
        match = re.search(pattern, report)
        return int(match.group(1)) if match else 0

    return Resources(direction, T, dtype, arch, aligned, cfg.name, dict(cfg.constexprs), cfg.num_warps,
                     number(r"Used (\d+) registers"), number(r"(\d+) bytes spill stores"),
                     number(r"(\d+) bytes spill loads"), number(r"(\d+) bytes stack frame"), compiled.metadata.shared)


def _measure(args):
    return measure(*args)


def measure_all(Ts=T_VALUES, dtypes=DTYPES, archs=ARCHS, aligned=(True,), jobs: int | None = None,
                directions=("forward", "backward")) -> list[Resources]:
    """Every variant, compiled in parallel processes (Triton's compiler holds the GIL)."""
    todo = [(d, T, dt, arch, al) for d in directions for T in Ts for dt in dtypes for arch in archs
            for al in aligned]
    jobs = jobs or min(len(todo), os.cpu_count() or 1)
    if jobs == 1:
        return [r for t in todo for r in measure(*t)]
    with ProcessPoolExecutor(jobs) as pool:
        return [r for rs in pool.map(_measure, todo) for r in rs]


def markdown(results: list[Resources]) -> str:
    lines = ["| direction | T | path | constexprs | warps | dtype | arch | aligned | registers | spill stores / loads "
             "(B) | shared (B) | warps per SM |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        consts = ", ".join(f"{k}={v}" for k, v in r.constexprs.items() if k not in ("T", "T_P2", "T_PAD"))
        lines.append(f"| {r.direction} | {r.T} | {r.path} | {consts} | {r.num_warps} | {r.dtype} | sm_{r.arch} | "
                     f"{'yes' if r.aligned else 'no'} | {r.registers} | {r.spill_stores} / {r.spill_loads} | "
                     f"{r.shared} | {r.warps_per_sm} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--T", type=int, nargs="+", default=list(T_VALUES))
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--arch", type=int, nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--direction", nargs="+", choices=("forward", "backward"), default=["forward", "backward"])
    p.add_argument("--aligned-only", action="store_true",
                   help="only the aligned specialisation (default: both; see the docstring)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compiler processes (default: CPUs)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (default: JSON lines)")
    args = p.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("error: Triton is not installed (it ships with the CUDA builds of torch).", file=sys.stderr)
        return 2
    results = measure_all(args.T, args.dtype, args.arch, (True,) if args.aligned_only else (True, False), args.jobs,
                          args.direction)
    if args.markdown:
        print(markdown(results))
    else:
        for r in results:
            print(json.dumps({**asdict(r), "warps_per_sm": r.warps_per_sm, "ok": r.ok}))
    bad = [r for r in results if not r.ok]
    if bad:
        print(f"{len(bad)} of {len(results)} variants spill, exceed a limit or leave fewer than "
              f"{MIN_WARPS_PER_SM} warps per SM.", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
