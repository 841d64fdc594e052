"""The GPU acceptance in one call that fits its time: one table and one JSON, rewritten after every stage.

    python scripts/gpu_check.py                          # on a GPU: --deadline 540, into $OUT or a new folder
    python scripts/gpu_check.py --out DIR --deadline 300
    python scripts/gpu_check.py --dry-run --deadline 120  # every stage at toy sizes on CPU (the suite runs it)
    python scripts/gpu_check.py --apply-sweep DIR/gpu_check.json   # adopt the sweep's best launch settings

Stages, in this order, each given a share of the time left (a stage that cannot fit is skipped with a
note; rows a stage has no time for are not started; at the deadline the stage in flight is cut):
  neurons      PSN, MaskedPSN and SlidingPSN: ours against SpikingJelly 2.0 and the original code path, at
               2^26 neurons x steps, T = 4 ... 64, fp32 / fp16 / bf16: forward, backward, both, host us,
               GB/s, the copy floor and the peak memory each adds (common/benchmarking.py, as
               scripts/benchmark_psn.py runs it).
  correctness  every kernel path (T = 4, 16, 32, 64, 128) at 2^20 elements and at an odd count, fp32 and
               bf16, channels-last too, against float64; one bf16 case at T = 64 above 2^31 elements.
  networks     CIFAR10Net c256 T4 b128, the sequential network T32 b128 and SEW ResNet-18 T4 b64 under fp16
               AMP: ours fused, ours torch path, SpikingJelly's neurons, the original code path and a free
               spike (the ceiling); images/s and peak memory; the fused and torch loss curves compared.
  sweep        launch settings (block, warps, stages, path, dot precision) timed at T = 4, 16, 32, 64 in fp32
               and bf16; the best per case, to adopt with --apply-sweep.
  tests        tests/test_kernels.py and tests/test_neurons.py on CUDA: none may fail or skip.
  compile      CIFAR10Net under torch.compile: its first losses are the eager ones; images/s.
  ddp          one torchrun run of two processes with NCCL, when two GPUs or more are there.
gpu_check.json holds every number and a `goals` object, one entry per performance claim, each with what
was measured, the target and a verdict (met / not met / toy sizes / not measured).
`--dry-run` runs each stage at toy sizes on CPU, the kernels under Triton's interpreter, so this script
cannot rot before a GPU comes (tests/test_gpu_check.py). Exit status 1 when a stage failed.
"""
import argparse
import datetime
import json
import math
import os
import signal
import statistics
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

from common import kernels  # noqa: E402

from common import benchmarking as bench  # noqa: E402
from common.kernel_check import case_name, check_case, correctness_cases  # noqa: E402
from common.launch_sweep import apply_sweep, sweep_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FIRST_STEP_RTOL = 1e-3
LAST_MEAN_RTOL = 0.05
STAGES = ("neurons", "correctness", "networks", "sweep", "tests", "compile", "ddp")
# A stage's share of the time left when it starts, against the stages still to come.
SHARES = {"neurons": 22, "correctness": 14, "networks": 22, "sweep": 16, "tests": 10, "compile": 8, "ddp": 8}
# Below this many seconds a stage is skipped rather than started (real run / dry run).
MINIMUM = {"neurons": (30, 5), "correctness": (15, 5), "networks": (30, 5), "sweep": (20, 3), "tests": (20, 10),
           "compile": (20, 5), "ddp": (40, 15)}
GOAL_NETWORK = "CIFAR10Net"  # the first network of benchmark_psn.networks: the 1.7x goal


class DeadlineReached(Exception):
    pass


class Clock:
    """Seconds left: to the whole call's deadline, or to the end of one stage's budget within it."""

    def __init__(self, seconds: float, parent: "Clock | None" = None):
        self.end = time.monotonic() + seconds
        self.parent = parent

    def left(self) -> float:
        own = self.end - time.monotonic()
        return min(own, self.parent.left()) if self.parent else own


# --- output ----------------------------------------------------------------------------------------

class Report:
    """Everything so far, rewritten (atomically) into gpu_check.json and gpu_check.md whenever asked."""

    def __init__(self, out: Path, env: dict, dry: bool, deadline: float):
        self.out, self.env, self.dry, self.deadline = out, env, dry, deadline
        self.stages: list[dict] = []
        self.started = time.monotonic()

    def data(self) -> dict:
        return {"environment": self.env, "dry_run": self.dry, "deadline_s": self.deadline,
                "elapsed_s": time.monotonic() - self.started, "stages": self.stages, "goals": goals(self)}

    def write(self) -> None:
        data = self.data()
        for name, text in (("gpu_check.json", json.dumps(data, indent=1, default=str)),
                           ("gpu_check.md", markdown(data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def stage(self, name: str) -> dict | None:
        return next((s for s in self.stages if s["stage"] == name), None)


def _environment(device: torch.device) -> dict:
    import platform

    import triton

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_count": gpus, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "launch_overrides": kernels.launch_overrides_now(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# --- neurons -----------------------------------------------------------------------------------------

def stage_neurons(ctx) -> dict:
    if ctx.dry:  # both ends of the goals: a T <= 32 and the bf16 T = 64 of the memory claim
        Ts, dtypes, numel, warmup, reps = (4, 64), ("float32", "bfloat16"), 2**8, 0, 1
    else:
        Ts, dtypes, numel, warmup, reps = (4, 8, 16, 32, 64), tuple(bench.DTYPES), 2**26, 2, 8
    result = ctx.partial
    result["rows"] = []
    result["not_started"] = [f"{d} T={T}" for d in dtypes for T in Ts]

    def on_row(rows):
        result["rows"] = rows
        done = {(r["dtype"], r["T"]) for r in rows}
        result["not_started"] = [f"{d} T={T}" for d in dtypes for T in Ts if (d, T) not in done]
        ctx.report.write()

    rows = bench.bench_neurons(ctx.device, Ts, dtypes, numel, warmup, reps, clock=ctx.clock, on_row=on_row)
    result["rows"] = rows
    done = {(r["dtype"], r["T"]) for r in rows}
    result["not_started"] = [f"{d} T={T}" for d in dtypes for T in Ts if (d, T) not in done]
    ratios = [impls["sj"]["both"]["ms"] / impls["ours"]["both"]["ms"] for r in rows for impls in r["neurons"].values()]
    result["ok"] = bool(rows)
    result["summary"] = (f"{len(rows)} of {len(Ts) * len(dtypes)} (dtype, T) rows; SpikingJelly / ours "
                         f"{min(ratios):.2f}x .. {max(ratios):.2f}x" if ratios else "no row fitted")
    return result


# --- correctness at scale ------------------------------------------------------------------------------

def stage_correctness(ctx) -> dict:
    result = ctx.partial
    result["cases"] = []
    for case in correctness_cases(ctx.dry, ctx.device):
        if ctx.clock.left() <= 0:
            result.setdefault("not_started", []).append(case)
            continue
        if case.get("large") and ctx.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(ctx.device)
            need = case["T"] * case["M"] * (2 * 4 + 4) + 2**32  # x, dL/dS, spikes, dL/dx (bf16) and gh (fp32)
            if free < need:
                result["cases"].append({**case, "ok": None, "why": f"skipped: {need / 2**30:.0f} GiB needed, "
                                                                  f"{free / 2**30:.0f} GiB free"})
                continue
        with kernels.enabled(True):
            result["cases"].append(check_case(case, ctx.device))
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        ctx.report.write()
    cases = result["cases"]
    failed = [c for c in cases if c["ok"] is False]
    result["ok"] = bool(cases) and not failed
    result["summary"] = (f"{sum(c['ok'] is True for c in cases)} of {len(cases)} cases within tolerance"
                         + (f"; failed: {', '.join(case_name(c) for c in failed)}" if failed else ""))
    return result


# --- networks -----------------------------------------------------------------------------------------

def agree(a: list[float], b: list[float]) -> tuple[bool, float, float]:
    """Whether two loss curves agree: the first step within FIRST_STEP_RTOL, the last 50 steps' means within
    LAST_MEAN_RTOL (spikes can flip on the order of a sum, so the curves part slowly; their level may not)."""
    first = abs(a[0] - b[0]) / max(abs(b[0]), 1e-12)
    tail = min(50, len(a))
    mean_a, mean_b = sum(a[-tail:]) / tail, sum(b[-tail:]) / tail
    last = abs(mean_a - mean_b) / max(abs(mean_b), 1e-12)
    return first <= FIRST_STEP_RTOL and last <= LAST_MEAN_RTOL, first, last


def stage_networks(ctx) -> dict:
    steps, warmup = (2, 1) if ctx.dry else (40, 10)
    result = ctx.partial
    result["rows"] = []

    def on_row(rows):
        result["rows"] = done + rows
        ctx.report.write()

    done = []
    done += bench.bench_networks(ctx.device, ctx.dry, steps, warmup, clock=ctx.clock, on_row=on_row)
    # bf16 autocast: the fused and torch paths' curves (the speed rows are fp16's); one network in a dry run
    done += bench.bench_networks(ctx.device, ctx.dry, steps, warmup, clock=ctx.clock, variants=("fused", "torch"),
                                 on_row=on_row, dtype="bfloat16", first=1 if ctx.dry else None)
    ok = True
    for row in done:
        if "fused" in row and "torch" in row:
            same, first, last = agree(row["fused"]["losses"], row["torch"]["losses"])
            row["curves"] = {"agree": same, "first_step_rdiff": first, "last_mean_rdiff": last}
            ok &= same
    result["rows"] = done
    curves = [r["curves"]["agree"] for r in done if "curves" in r]
    result["ok"] = ok and bool(curves)
    ceiling = [r["ceiling_fraction"] for r in done if "ceiling_fraction" in r]
    result["summary"] = (f"{sum(curves)}/{len(curves)} fused/torch loss curves agree"
                         + (f"; fused at {100 * min(ceiling):.0f}-{100 * max(ceiling):.0f} % of the free-spike "
                            "ceiling" if ceiling else ""))
    return result


# --- the launch-setting sweep -----------------------------------------------------------------------

def stage_sweep(ctx) -> dict:
    Ts, dtypes, numel, warmup, reps = ((4, 64), ("float32",), 2**8, 0, 1) if ctx.dry else \
        ((4, 16, 32, 64), ("float32", "bfloat16"), 2**26, 2, 6)
    result = ctx.partial
    result["cases"] = []
    for T in Ts:
        for dtype_name in dtypes:
            g0 = torch.Generator(device=ctx.device).manual_seed(T)
            x = torch.randn(T, numel // T, device=ctx.device, generator=g0).to(bench.DTYPES[dtype_name])
            grad = torch.randn_like(x)
            w = torch.randn(T, T, device=ctx.device, generator=g0) / math.sqrt(T)
            b = torch.zeros(T, device=ctx.device)
            for direction in ("forward", "backward"):
                case = {"T": T, "dtype": dtype_name, "direction": direction, "band": kernels.t_range(T), "timings": []}
                for setting in sweep_candidates(direction, T, ctx.dry):
                    if ctx.clock.left() <= 0:
                        case["cut"] = True
                        break
                    key = f"{direction}:{kernels.t_range(T)}"
                    with kernels.launch_overrides({key: setting}):
                        run = (lambda _: kernels._forward(x, w, b)) if direction == "forward" else \
                            (lambda _: kernels._backward(grad, x, w, b, 2.0))
                        try:
                            ms = bench.timed(ctx.device, run, None, warmup + 1, reps)["ms"]  # + 1: the compile
                            case["timings"].append({"setting": setting, "ms": ms})
                        except Exception as e:  # noqa: BLE001 - a setting that fails to compile is a result
                            case["timings"].append({"setting": setting, "error": f"{type(e).__name__}: {e}"[:300]})
                timed_ok = [t for t in case["timings"] if "ms" in t]
                if timed_ok:
                    best = min(timed_ok, key=lambda t: t["ms"])
                    case["best"] = best["setting"]
                    case["default_ms"] = case["timings"][0].get("ms")
                    case["best_ms"] = best["ms"]
                result["cases"].append(case)
                ctx.report.write()
            x = grad = None  # freed before the next case's tensors
    cases = result["cases"]
    gains = [c["default_ms"] / c["best_ms"] for c in cases if c.get("default_ms") and c.get("best_ms")]
    result["ok"] = bool(cases)
    result["summary"] = (f"{len(cases)} cases; the best setting beats the default by up to {max(gains):.2f}x; "
                         "--apply-sweep adopts them" if gains else "no case timed")
    return result


# --- tests, compile, ddp --------------------------------------------------------------------------------

def stage_tests(ctx) -> dict:
    files = ["tests/test_kernels.py", "tests/test_neurons.py"]
    select = ["-k", "fp32 and psn-4 and shape1 or autocast and psn"] if ctx.dry else []
    report = ctx.tmp / "tests.xml"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not ctx.dry:
        env.pop("TRITON_INTERPRET", None)  # the real kernels on the GPU
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *files, *select,
                          f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=max(1, ctx.clock.left()))
    suites = ET.parse(report).getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    clean = counts["failures"] == counts["errors"] == counts["skipped"] == 0
    ok = out.returncode == 0 and clean and counts["tests"] > 0
    tail = "" if ok else out.stdout[-3000:]
    return {"ok": ok, "summary": f"{counts['tests']} tests, {counts['failures'] + counts['errors']} failed, "
                                 f"{counts['skipped']} skipped", **counts, "output": tail}


def stage_compile(ctx) -> dict:
    label, build, shape, classes, _ = bench.networks(ctx.dry)[0]
    steps, warmup = (2, 1) if ctx.dry else (40, 10)
    backend = "eager" if ctx.dry else "inductor"  # on CPU: dynamo's tracing of the custom ops, without a C++ build
    eager = bench.train_steps(build, shape, classes, ctx.device, "fused", steps, warmup)
    compiled = bench.train_steps(build, shape, classes, ctx.device, "fused", steps, warmup,
                                 wrap=lambda m: torch.compile(m, backend=backend))
    first = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(compiled["losses"][:2], eager["losses"][:2])]
    ok = max(first) <= 1e-2
    return {"ok": ok, "summary": f"{label}, backend {backend}: first losses within {max(first):.1e} of eager; "
                                 f"{compiled['images_per_s']:.0f} vs {eager['images_per_s']:.0f} img/s",
            "compiled": compiled, "eager": eager}


def stage_ddp(ctx) -> dict:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not ctx.dry and gpus < 2:
        return {"ok": True, "skipped": True, "summary": f"skipped: {gpus} GPU (two are needed)"}
    device, flags = ("cpu", ["--channels", "4", "-b", "700", "--workers", "0"]) if ctx.dry else \
        ("cuda", ["--channels", "32", "-b", "64", "--workers", "2"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "cifar10" / "train.py"), "--dataset", "digits", *flags, "--epochs", "1", "--device", device,
           "--output-dir", str(ctx.tmp / "ddp"), "--run-name", "r"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1, ctx.clock.left()),
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode != 0:
        return {"ok": False, "summary": "torchrun failed", "output": out.stderr[-3000:]}
    record = json.loads(out.stdout.strip().splitlines()[-1])
    backend = "gloo" if ctx.dry else "nccl"
    return {"ok": record["epochs_done"] == 1, "summary": f"2 processes ({backend}): an epoch, test acc1 "
                                                         f"{record['last_test_acc1']:.2f}", "record": record}


STAGE_FUNCTIONS = {"neurons": stage_neurons, "correctness": stage_correctness, "networks": stage_networks,
                   "sweep": stage_sweep, "tests": stage_tests, "compile": stage_compile, "ddp": stage_ddp}


# --- goals ------------------------------------------------------------------------------------------

def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def goals(report: Report) -> dict:
    """One entry per performance claim: what was measured, the target, and a verdict."""
    def verdict(met: bool | None, partial: str | None = None) -> str:
        if met is None:
            return "not measured"
        said = "toy sizes" if report.dry else ("met" if met else "not met")
        return f"{said} ({partial})" if partial else said

    neuron_stage = report.stage("neurons") or {}
    neurons = neuron_stage.get("rows", [])
    missing = neuron_stage.get("not_started") or []
    rows_note = f"on {len(neurons)} rows; not started: {', '.join(missing)}" if missing else None
    sj, floor, memory, memory_t64 = {}, {}, {}, []
    host_bound = []
    for r in neurons:
        for name, impls in r["neurons"].items():
            ours = impls["ours"]
            if ours["both"].get("host_bound"):
                host_bound.append(f"{r['dtype']} T={r['T']} {name}")
            if "sj" in impls:
                sj.setdefault(r["T"], []).append(impls["sj"]["both"]["ms"] / ours["both"]["ms"])
                if ours.get("peak_mib") and impls["sj"].get("peak_mib"):
                    ratio = ours["peak_mib"] / impls["sj"]["peak_mib"]
                    memory.setdefault(r["T"], []).append(ratio)
                    if r["T"] == 64 and r["dtype"] == "bfloat16":
                        memory_t64.append({"neuron": name, "ratio": ratio})
            if r["T"] <= 32:
                floor.setdefault(r["T"], []).append(ours["both"]["ms"] / r["floor_ms"]["both"])
    out = {
        "neuron_vs_spikingjelly": {
            "target": ">= 5x (SpikingJelly 2.0's time / ours, forward + backward), every neuron and dtype, per T",
            "per_T": {T: _spread(v) for T, v in sj.items()},
            "verdict": verdict(all(min(v) >= 5 for v in sj.values()) if sj else None, rows_note)},
        "neuron_vs_copy_floor": {
            "target": "<= 2x (ours / the copy floor moving the same bytes, forward + backward) at T <= 32",
            "per_T": {T: _spread(v) for T, v in floor.items()},
            "verdict": verdict(all(max(v) <= 2 for v in floor.values()) if floor else None, rows_note)},
        "memory_vs_spikingjelly": {
            "target": "<= 0.5x (peak memory a forward + backward adds, ours / SpikingJelly's), every row; "
                      "<= 1x at T = 64 in bf16",
            "per_T": {T: _spread(v) for T, v in memory.items()}, "t64_bfloat16": memory_t64,
            "verdict": verdict(all(max(v) <= 0.5 for v in memory.values()) if memory else None, rows_note)},
    }
    if host_bound:
        for key in ("neuron_vs_spikingjelly", "neuron_vs_copy_floor"):
            out[key]["host_bound_rows"] = host_bound  # the GPU waited for the host there: Python was measured
    rows = [r for r in (report.stage("networks") or {}).get("rows", []) if r.get("dtype") == "float16"]
    target = next((r for r in rows if r["network"].startswith(GOAL_NETWORK) and "vs_original" in r
                   and "channels-last" not in r["network"]), None)
    out["network_vs_original"] = {
        "target": ">= 1.7x training images/s, ours fused / the original code path, CIFAR10Net c256 T4 b128 fp16 AMP",
        "measured": target and target["vs_original"],
        "reported": {r["network"]: {k: r.get(k) for k in ("vs_original", "vs_sj", "ceiling_fraction")} for r in rows},
        "verdict": verdict(None if target is None else target["vs_original"] >= 1.7)}
    correctness = report.stage("correctness") or {}
    cases = correctness.get("cases", [])
    run = [c for c in cases if c.get("ok") is not None]
    large = next((c for c in run if c.get("large")), None)
    notes = []
    if correctness.get("not_started"):
        notes.append(f"{len(correctness['not_started'])} cases not started")
    if large is None:
        skipped = next((c for c in cases if c.get("large")), None)
        notes.append(f"the large case not run{': ' + skipped['why'] if skipped else ''}")
    out["correctness_at_scale"] = {
        "target": "every kernel path at 2^20 elements and an odd count, fp32 and bf16, channels-last, and bf16 T = 64 "
                  "above 2^31 elements, within tolerance of float64",
        "cases": len(run), "failed": [case_name(c) for c in run if not c["ok"]],
        "large_case": None if large is None else {k: large.get(k) for k in ("elements", "ok")},
        "verdict": verdict(None if not run else all(c["ok"] for c in run), "; ".join(notes) or None)}
    return out


# --- the table ----------------------------------------------------------------------------------------

def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"GPU check on {env['gpu'] or env['device']} (torch {env['torch']}, Triton {env['triton']}, "
             f"CUDA {env['cuda']}){' — dry run, toy sizes' if data['dry_run'] else ''}; "
             f"{data['elapsed_s']:.0f} of {data['deadline_s']:.0f} s", "",
             "| stage | result | seconds | numbers |", "| --- | --- | --- | --- |"]
    for s in data["stages"]:
        verdict = {True: "ok", False: "FAILED", None: "cut"}.get(s.get("ok"), "?")
        verdict = "skipped" if s.get("skipped") else verdict
        lines.append(f"| {s['stage']} | {verdict} | {s.get('seconds', 0):.0f} | {s.get('summary', '')} |")
    lines += ["", "| goal | target | measured | verdict |", "| --- | --- | --- | --- |"]
    for name, g in data["goals"].items():
        measured = g.get("per_T") or g.get("measured") or g.get("failed") or g.get("cases")
        if isinstance(measured, dict):
            measured = "; ".join(f"T={T}: {v['min']:.2f}-{v['max']:.2f}x" for T, v in measured.items())
        elif isinstance(measured, float):
            measured = f"{measured:.2f}x"
        lines.append(f"| {name} | {g['target']} | {measured if measured not in (None, []) else '—'} | "
                     f"{g['verdict']} |")
    stage = {s["stage"]: s for s in data["stages"]}
    if stage.get("neurons", {}).get("rows"):
        lines += ["", *bench.neuron_table(stage["neurons"]["rows"])]
    if stage.get("networks", {}).get("rows"):
        lines += ["", *bench.network_table(stage["networks"]["rows"])]
    if stage.get("sweep", {}).get("cases"):
        lines += ["", "### Launch-setting sweep: the best per case", "",
                  "| direction | T | dtype | default ms | best ms | best setting |", "|" + " --- |" * 6]
        for c in stage["sweep"]["cases"]:
            if "best" in c:
                lines.append(f"| {c['direction']} | {c['T']} | {c['dtype']} | {bench.fmt(c['default_ms'])} | "
                             f"{bench.fmt(c['best_ms'])} | {json.dumps(c['best'])} |")
    return "\n".join(lines) + "\n"


# --- the call -----------------------------------------------------------------------------------------

class StageContext:
    def __init__(self, dry, device, tmp, clock, report, partial):
        self.dry, self.device, self.tmp, self.clock = dry, device, tmp, clock
        self.report, self.partial = report, partial  # partial: the stage's result so far, written as it grows


def run_stages(names, dry: bool, device, report: Report, overall: Clock, tmp: Path) -> None:
    margin = min(10.0, 0.05 * report.deadline)  # for the last writes after the stages
    for i, name in enumerate(names):
        left = overall.left() - margin
        shares = sum(SHARES[n] for n in names[i:])
        budget = left * SHARES[name] / shares
        minimum = MINIMUM[name][1 if dry else 0]
        partial = {"stage": name, "budget_s": round(budget, 1)}
        report.stages.append(partial)
        if budget < minimum:
            partial.update(ok=True, skipped=True, seconds=0.0,
                           summary=f"skipped: {budget:.0f} s of budget left, {minimum} s needed")
            report.write()
            print(f"{name}: {partial['summary']}", file=sys.stderr, flush=True)
            continue
        started = time.monotonic()
        ctx = StageContext(dry, device, tmp, Clock(budget, overall), report, partial)
        try:
            result = STAGE_FUNCTIONS[name](ctx)
            partial.update(result)
        except DeadlineReached:
            partial.update(ok=None, summary="cut at the deadline (what it finished is kept)")
        except subprocess.TimeoutExpired:
            partial.update(ok=None, summary=f"cut: it outran its {budget:.0f} s budget")
        except Exception as e:  # noqa: BLE001 - one stage's failure must not hide the others' results
            partial.update(ok=False, summary=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                           output=traceback.format_exc()[-3000:])
        partial["seconds"] = time.monotonic() - started
        report.write()
        verdict = {True: "ok", False: "FAILED", None: "cut"}[partial.get("ok")]
        print(f"{name}: {verdict} ({partial['seconds']:.0f} s of {budget:.0f}) {partial.get('summary', '')}",
              file=sys.stderr, flush=True)
        if partial.get("ok") is None and overall.left() <= margin:  # the deadline: nothing more fits
            for rest in names[i + 1:]:
                report.stages.append({"stage": rest, "ok": True, "skipped": True, "seconds": 0.0,
                                      "summary": "skipped: the deadline was reached"})
            report.write()
            return


def _default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return Path(f"gpu_check-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every stage at toy sizes on CPU (Triton's interpreter)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds the whole call may take")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for gpu_check.json and gpu_check.md (default: $OUT when set, else a new folder "
                        "gpu_check-DATE-TIME, named on stderr)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--apply-sweep", type=Path, default=None, metavar="GPU_CHECK_JSON",
                   help="adopt the best launch settings of a run's sweep into common/launch_overrides.json, and exit")
    args = p.parse_args(argv)
    if args.apply_sweep:
        return apply_sweep(args.apply_sweep, Path(kernels.OVERRIDES_FILE))
    if args.deadline <= 0:
        print("error: --deadline must be a positive number of seconds.", file=sys.stderr)
        return 2
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
    out = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: writing {out / 'gpu_check.json'} and gpu_check.md after every stage; deadline "
          f"{args.deadline:.0f} s", file=sys.stderr, flush=True)
    report = Report(out, _environment(device), args.dry_run, args.deadline)
    overall = Clock(args.deadline)

    def at_deadline(signum, frame):
        raise DeadlineReached()

    signal.signal(signal.SIGALRM, at_deadline)
    signal.setitimer(signal.ITIMER_REAL, args.deadline)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_stages([s for s in STAGES if s in args.stages], args.dry_run, device, report, overall, Path(tmp))
    except DeadlineReached:  # between two stages: what finished is written below
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    report.write()
    print((out / "gpu_check.md").read_text())
    return 0 if all(s.get("ok") is not False for s in report.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
