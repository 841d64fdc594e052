"""The whole GPU acceptance in one command: one table on stdout, every number in one JSON file.

    python scripts/gpu_check.py --json gpu_check.json     # on a GPU: about 5 minutes on one H200
    python scripts/gpu_check.py --dry-run                 # every stage at toy sizes, on CPU (the test suite runs it)

Stages, each timed and kept going when another fails:
  tests      tests/test_kernels.py and tests/test_neurons.py on CUDA: none may fail or skip (the launch
             counters prove the fused path ran: every T category, fp32/fp16/bf16, contiguous and
             channels-last, sizes that are no multiple of 16, autocast).
  benchmark  scripts/benchmark_psn.py: our neurons against SpikingJelly's, extra memory, the copy floor.
  training   200 steps of CIFAR10Net (256 channels, T 4, batch 128), the sequential CIFAR network (128
             channels, T 32, batch 128) and SEW ResNet-18 (T 4, batch 64, 224 px) on synthetic data of the
             real shapes, fused against torch path, under fp16 AMP and bf16: images/s, peak memory, and the
             two loss curves agreeing (first step within 1e-3, the last 50 steps' mean within 5 %).
  compile    CIFAR10Net under torch.compile (the kernels stay single custom ops): its first losses are
             the eager ones, and its images/s.
  ddp        one torchrun run of two processes with NCCL, when two GPUs or more are there.
`--dry-run` runs each at toy sizes on CPU, the kernels under Triton's interpreter, so this script
cannot rot before a GPU comes (tests/test_gpu_check.py). Exit status 1 when a stage failed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

if "--dry-run" in sys.argv:  # before Triton is imported anywhere: the kernels run under its interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402 - after TRITON_INTERPRET is set
from spikingjelly.activation_based import functional  # noqa: E402

from common import kernels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FIRST_STEP_RTOL = 1e-3
LAST_MEAN_RTOL = 0.05


def _environment(device: torch.device) -> dict:
    import platform

    import triton

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_count": gpus, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}


# --- tests ---------------------------------------------------------------------------------------

def stage_tests(dry: bool, tmp: Path) -> dict:
    files = ["tests/test_kernels.py", "tests/test_neurons.py"]
    select = ["-k", "fp32 and psn-4 and shape1 or autocast and psn"] if dry else []
    report = tmp / "tests.xml"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not dry:
        env.pop("TRITON_INTERPRET", None)  # the real kernels on the GPU
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *files, *select,
                          f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    suites = ET.parse(report).getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    ok = out.returncode == 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0 and counts["tests"] > 0
    tail = "" if ok else out.stdout[-3000:]
    return {"ok": ok, "summary": f"{counts['tests']} tests, {counts['failures'] + counts['errors']} failed, "
                                 f"{counts['skipped']} skipped", **counts, "output": tail}


# --- benchmark -----------------------------------------------------------------------------------

def stage_benchmark(dry: bool, tmp: Path, device: torch.device) -> dict:
    path = tmp / "bench.json"
    flags = ["--quick", "--device", "cpu", "--skip-networks"] if dry else ["--device", str(device)]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_psn.py"), *flags, "--json", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"ok": False, "summary": "benchmark_psn.py failed", "output": out.stderr[-3000:]}
    data = json.loads(path.read_text())
    ratios = [row["PSN_sj_ms"] / row["PSN_ours_ms"] for row in data["neurons"]]
    summary = f"PSN vs SpikingJelly: {min(ratios):.2f}x .. {max(ratios):.2f}x over {len(ratios)} sizes"
    return {"ok": True, "summary": summary, "tables": out.stdout, **data}


# --- training ------------------------------------------------------------------------------------

def _models(dry: bool):
    from cifar10.models import CIFAR10Net
    from common.losses import per_step_outputs_loss, smoothed_cross_entropy
    from imagenet.models import sew_resnet18
    from sequential_cifar.models import SequentialCIFARNet

    cifar_loss, tet = smoothed_cross_entropy(0.1), per_step_outputs_loss(True, time_dim=0)
    if dry:  # the interpreter runs every kernel program in numpy: the smallest shapes that still build
        return [("CIFAR10Net c2 T4 b1", lambda: CIFAR10Net(2, 4), (1, 3, 32, 32), 10, cifar_loss),
                ("SequentialCIFARNet c4 T32 b2", lambda: SequentialCIFARNet(4), (2, 3, 32, 32), 10, cifar_loss),
                ("SEW ResNet-18 T4 b1 16px", lambda: sew_resnet18(T=4, num_classes=10), (1, 3, 16, 16), 10, tet)]
    return [("CIFAR10Net c256 T4 b128", lambda: CIFAR10Net(256, 4), (128, 3, 32, 32), 10, cifar_loss),
            ("SequentialCIFARNet c128 T32 b128", lambda: SequentialCIFARNet(128), (128, 3, 32, 32), 10, cifar_loss),
            ("SEW ResNet-18 T4 b64", lambda: sew_resnet18(T=4), (64, 3, 224, 224), 1000, tet)]


def train(build, shape, classes, loss_fn, device, dtype, fused: bool, steps: int, warmup: int, compiled=None) -> dict:
    """`steps` SGD steps on a fixed pool of synthetic batches; losses of every step, images/s after `warmup`."""
    torch.manual_seed(0)
    model = build().to(device)
    runner = compiled(model) if compiled is not None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    g = torch.Generator(device=device).manual_seed(1)
    pool = [(torch.randn(shape, device=device, generator=g),
             torch.randint(0, classes, (shape[0],), device=device, generator=g)) for _ in range(4)]
    losses = torch.zeros(steps, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = None
    with kernels.enabled(fused):
        for step in range(steps):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
            images, labels = pool[step % len(pool)]
            with torch.autocast(device.type, dtype=dtype):
                loss = loss_fn(runner(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            functional.reset_net(model)
            losses[step] = loss.detach().float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"losses": losses.tolist(), "images_per_s": shape[0] * (steps - warmup) / seconds,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def agree(a: list[float], b: list[float]) -> tuple[bool, float, float]:
    """Whether two loss curves agree: the first step within FIRST_STEP_RTOL, the last 50 steps' means within
    LAST_MEAN_RTOL (spikes can flip on the order of a sum, so the curves part slowly; their level may not)."""
    first = abs(a[0] - b[0]) / max(abs(b[0]), 1e-12)
    tail = min(50, len(a))
    mean_a, mean_b = sum(a[-tail:]) / tail, sum(b[-tail:]) / tail
    last = abs(mean_a - mean_b) / max(abs(mean_b), 1e-12)
    return first <= FIRST_STEP_RTOL and last <= LAST_MEAN_RTOL, first, last


def stage_training(dry: bool, device: torch.device) -> dict:
    steps, warmup = (2, 1) if dry else (200, 20)
    rows, ok = [], True
    for label, build, shape, classes, loss_fn in _models(dry):
        for dtype in (torch.float16, torch.bfloat16):
            fused = train(build, shape, classes, loss_fn, device, dtype, True, steps, warmup)
            reference = train(build, shape, classes, loss_fn, device, dtype, False, steps, warmup)
            same, first, last = agree(fused["losses"], reference["losses"])
            ok &= same
            rows.append({"model": label, "dtype": str(dtype).replace("torch.", ""), "agree": same,
                         "first_step_rdiff": first, "last_mean_rdiff": last,
                         "fused_images_per_s": fused["images_per_s"], "torch_images_per_s": reference["images_per_s"],
                         "speedup": fused["images_per_s"] / reference["images_per_s"],
                         "fused_peak_mib": fused["peak_mib"], "torch_peak_mib": reference["peak_mib"],
                         "fused_losses": fused["losses"], "torch_losses": reference["losses"]})
    speedups = [r["speedup"] for r in rows]
    return {"ok": ok, "summary": f"{sum(r['agree'] for r in rows)}/{len(rows)} loss curves agree; fused/torch "
                                 f"images/s {min(speedups):.2f}x .. {max(speedups):.2f}x", "rows": rows}


# --- compile, ddp --------------------------------------------------------------------------------

def stage_compile(dry: bool, device: torch.device) -> dict:
    label, build, shape, classes, loss_fn = _models(dry)[0]
    steps, warmup = (2, 1) if dry else (40, 10)
    backend = "eager" if dry else "inductor"  # on CPU: dynamo's tracing of the custom ops, without a C++ build
    eager = train(build, shape, classes, loss_fn, device, torch.float16, True, steps, warmup)
    compiled = train(build, shape, classes, loss_fn, device, torch.float16, True, steps, warmup,
                     compiled=lambda m: torch.compile(m, backend=backend))
    first = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(compiled["losses"][:2], eager["losses"][:2])]
    ok = max(first) <= 1e-2
    return {"ok": ok, "summary": f"{label}, backend {backend}: first losses within {max(first):.1e} of eager; "
                                 f"{compiled['images_per_s']:.0f} vs {eager['images_per_s']:.0f} img/s",
            "compiled": compiled, "eager": eager}


def stage_ddp(dry: bool, tmp: Path) -> dict:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not dry and gpus < 2:
        return {"ok": True, "skipped": True, "summary": f"skipped: {gpus} GPU (two are needed)"}
    device, flags = ("cpu", ["--channels", "4", "-b", "700", "--workers", "0"]) if dry else \
        ("cuda", ["--channels", "32", "-b", "64", "--workers", "2"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "cifar10" / "train.py"), "--dataset", "digits", *flags, "--epochs", "1", "--device", device,
           "--output-dir", str(tmp / "ddp"), "--run-name", "r"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode != 0:
        return {"ok": False, "summary": "torchrun failed", "output": out.stderr[-3000:]}
    record = json.loads(out.stdout.strip().splitlines()[-1])
    backend = "gloo" if dry else "nccl"
    return {"ok": record["epochs_done"] == 1, "summary": f"2 processes ({backend}): an epoch, test acc1 "
                                                         f"{record['last_test_acc1']:.2f}", "record": record}


def run_stage(name: str, fn, *args) -> dict:
    started = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 - one stage's failure must not hide the others' results
        result = {"ok": False, "summary": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                  "output": traceback.format_exc()[-3000:]}
    result["seconds"] = time.perf_counter() - started
    result["stage"] = name
    return result


def table(env: dict, stages: list[dict]) -> str:
    lines = [f"GPU check on {env['gpu'] or env['device']} (torch {env['torch']}, Triton {env['triton']}, "
             f"CUDA {env['cuda']})", "", "| stage | result | seconds | numbers |", "| --- | --- | --- | --- |"]
    for s in stages:
        verdict = "skipped" if s.get("skipped") else ("ok" if s["ok"] else "FAILED")
        lines.append(f"| {s['stage']} | {verdict} | {s['seconds']:.0f} | {s['summary']} |")
    training = next((s for s in stages if s["stage"] == "training" and "rows" in s), None)
    if training:
        lines += ["", "| model | dtype | fused img/s | torch img/s | speed-up | fused / torch peak MiB | "
                  "first-step / last-50 loss rdiff |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in training["rows"]:
            peak = "—" if r["fused_peak_mib"] is None else f"{r['fused_peak_mib']:.0f} / {r['torch_peak_mib']:.0f}"
            lines.append(f"| {r['model']} | {r['dtype']} | {r['fused_images_per_s']:.0f} | "
                         f"{r['torch_images_per_s']:.0f} | {r['speedup']:.2f}x | {peak} | "
                         f"{r['first_step_rdiff']:.1e} / {r['last_mean_rdiff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every stage at toy sizes on CPU (Triton's interpreter)")
    p.add_argument("--json", default="gpu_check.json", help="write every number here")
    p.add_argument("--stages", nargs="+", default=["tests", "benchmark", "training", "compile", "ddp"],
                   choices=["tests", "benchmark", "training", "compile", "ddp"])
    args = p.parse_args(argv)
    if args.dry_run:
        import warnings

        device = torch.device("cpu")
        kernels.INTERPRET_ON_CPU = True  # the fused path on CPU tensors, through the interpreter
        # The interpreter computes masked-out lanes too (numpy warns about their NaNs; they are never stored).
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    elif not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; --dry-run runs every stage on CPU instead.", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    env = _environment(device)
    stages = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.stages:
            fn = {"tests": lambda: stage_tests(args.dry_run, tmp),
                  "benchmark": lambda: stage_benchmark(args.dry_run, tmp, device),
                  "training": lambda: stage_training(args.dry_run, device),
                  "compile": lambda: stage_compile(args.dry_run, device),
                  "ddp": lambda: stage_ddp(args.dry_run, tmp)}[name]
            stages.append(run_stage(name, fn))
            print(f"{name}: {'ok' if stages[-1]['ok'] else 'FAILED'} ({stages[-1]['seconds']:.0f} s) "
                  f"{stages[-1]['summary']}", file=sys.stderr, flush=True)
    print(table(env, stages))
    Path(args.json).write_text(json.dumps({"environment": env, "dry_run": args.dry_run, "stages": stages}, indent=1))
    return 0 if all(s["ok"] for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
