"""scripts/gpu_check.py, the GPU acceptance in one call, kept from rotting: its --dry-run runs every stage at toy
sizes on CPU (the kernels under Triton's interpreter) within the deadline CI gives it, writes its JSON after every
stage with every goal present, and its checks, budgets and verdicts can fail."""
import json
import time

import pytest
import torch

from common import kernels
from conftest import run_script

pytestmark = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="Triton is not installed")
GOALS = {"neuron_vs_spikingjelly", "neuron_vs_copy_floor", "memory_vs_spikingjelly", "network_vs_original",
         "correctness_at_scale"}


def test_the_dry_run_fits_its_deadline_and_reports_every_goal(tmp_path):
    from scripts.gpu_check import STAGES

    started = time.monotonic()
    out = run_script("scripts/gpu_check.py", "--dry-run", "--deadline", "120", "--out", tmp_path, timeout=400)
    wall = time.monotonic() - started
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["dry_run"] and data["elapsed_s"] <= 120 and wall < 150, (data["elapsed_s"], wall)
    stages = {s["stage"]: s for s in data["stages"]}
    assert list(stages) == list(STAGES)
    assert all(s["ok"] is True and not s.get("skipped") for s in stages.values()), \
        {k: v["summary"] for k, v in stages.items()}
    assert set(data["goals"]) == GOALS and {g["verdict"] for g in data["goals"].values()} == {"toy sizes"}
    rows = stages["neurons"]["rows"]
    assert {(r["dtype"], r["T"]) for r in rows} == {("float32", 4), ("float32", 64), ("bfloat16", 4), ("bfloat16", 64)}
    for r in rows:
        for impls in r["neurons"].values():
            assert set(impls) == {"ours", "sj", "original"}
            for result in impls.values():
                assert all(result[m]["ms"] > 0 and result[m]["gbps"] > 0 for m in ("forward", "backward", "both"))
                assert result["peak_mib"] > 0  # on CPU from the profiler's allocation records
    assert all(c["ok"] for c in stages["correctness"]["cases"])
    assert {c["paths"]["backward"] for c in stages["correctness"]["cases"]} == {"small", "dot", "split", "tiled"}
    assert any(c.get("large") for c in stages["correctness"]["cases"])
    fp16 = [r for r in stages["networks"]["rows"] if r["dtype"] == "float16"]
    assert len(fp16) == 3 and all({"fused", "torch", "sj", "original", "free"} <= set(r) for r in fp16)
    assert all(r["curves"]["agree"] for r in stages["networks"]["rows"])
    assert all("best" in c for c in stages["sweep"]["cases"]) and len(stages["sweep"]["cases"]) == 4
    assert stages["tests"]["tests"] > 0 and stages["tests"]["skipped"] == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.strip() in out.stdout and "| correctness_at_scale |" in table and "| ddp | ok |" in table


def test_a_stage_that_cannot_fit_is_skipped_with_a_note(tmp_path):
    """A 12-second call cannot hold the DDP stage (15 s at the least, dry): it is skipped, and said so."""
    run_script("scripts/gpu_check.py", "--dry-run", "--deadline", "12", "--stages", "sweep", "ddp", "--out", tmp_path,
               timeout=300)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["sweep"]["ok"] and not stages["sweep"].get("skipped")
    assert stages["ddp"]["skipped"] and "s needed" in stages["ddp"]["summary"]
    assert set(data["goals"]) == GOALS and data["goals"]["correctness_at_scale"]["verdict"] == "not measured"


def test_the_deadline_cuts_the_stage_in_flight_and_keeps_what_finished(tmp_path, monkeypatch):
    """A stage that outruns the whole call is cut at the deadline; the JSON, rewritten after each stage, keeps the
    stage before it, and the later stages are marked skipped."""
    from scripts import gpu_check

    def quick(ctx):
        return {"ok": True, "summary": "quick"}

    def stuck(ctx):
        ctx.partial["rows"] = ["half"]
        ctx.report.write()
        time.sleep(30)
        return {"ok": True, "summary": "never"}

    monkeypatch.setattr(gpu_check, "STAGE_FUNCTIONS", {**gpu_check.STAGE_FUNCTIONS, "sweep": quick, "tests": stuck})
    monkeypatch.setattr(gpu_check, "MINIMUM", {k: (0, 0) for k in gpu_check.MINIMUM})
    monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", kernels.INTERPRET_ON_CPU)  # main() sets it for a dry run
    started = time.monotonic()
    code = gpu_check.main(["--dry-run", "--deadline", "3", "--stages", "sweep", "tests", "compile", "--out",
                           str(tmp_path)])
    assert time.monotonic() - started < 10 and code == 0
    stages = {s["stage"]: s for s in json.loads((tmp_path / "gpu_check.json").read_text())["stages"]}
    assert stages["sweep"]["summary"] == "quick"
    assert stages["tests"]["ok"] is None and "deadline" in stages["tests"]["summary"]
    assert stages["tests"]["rows"] == ["half"]  # what the stage had written before the cut
    assert stages["compile"]["skipped"]


def test_out_defaults_to_the_OUT_folder(tmp_path, monkeypatch):
    from scripts import gpu_check

    monkeypatch.setenv("OUT", str(tmp_path / "device-out"))
    assert gpu_check._default_out() == tmp_path / "device-out"
    monkeypatch.delenv("OUT")
    assert gpu_check._default_out().name.startswith("gpu_check-")


def _report(dry=False, neurons=(), networks=(), cases=()):
    from scripts.gpu_check import Report

    report = Report.__new__(Report)
    report.dry = dry
    report.stages = [{"stage": "neurons", "rows": list(neurons)}, {"stage": "networks", "rows": list(networks)},
                     {"stage": "correctness", "cases": list(cases)}]
    return report


def _neuron_row(T, dtype, ours_ms, sj_ms, floor_ms, ours_mib, sj_mib):
    def impl(ms, mib):
        return {"both": {"ms": ms, "host_bound": False}, "peak_mib": mib}

    return {"T": T, "dtype": dtype, "floor_ms": {"both": floor_ms},
            "neurons": {"PSN": {"ours": impl(ours_ms, ours_mib), "sj": impl(sj_ms, sj_mib)}}}


def test_goal_verdicts_follow_the_numbers():
    from scripts.gpu_check import goals

    good = [_neuron_row(4, "float32", 1.0, 6.0, 0.6, 1.0, 3.0), _neuron_row(64, "bfloat16", 1.0, 5.5, 0.2, 4.0, 9.0)]
    net = [{"network": "CIFAR10Net c256 T4 b128", "dtype": "float16", "vs_original": 1.8}]
    cases = [{"T": 4, "dtype": "float32", "M": 8, "layout": "contiguous", "ok": True},
             {"T": 64, "dtype": "bfloat16", "M": 9, "layout": "contiguous", "ok": True, "large": True,
              "elements": 2**31 + 1}]
    g = goals(_report(neurons=good, networks=net, cases=cases))
    assert {k: v["verdict"] for k, v in g.items()} == dict.fromkeys(GOALS, "met")
    bad = [_neuron_row(4, "float32", 1.0, 4.9, 0.4, 1.0, 1.9), _neuron_row(64, "bfloat16", 1.0, 5.5, 0.2, 4.0, 9.0)]
    g = goals(_report(neurons=bad, networks=[{**net[0], "vs_original": 1.69}],
                      cases=[{**cases[0], "ok": False}, cases[1]]))
    assert {k: v["verdict"] for k, v in g.items()} == dict.fromkeys(GOALS, "not met")
    assert g["neuron_vs_spikingjelly"]["per_T"][4]["min"] == pytest.approx(4.9)
    assert g["neuron_vs_copy_floor"]["per_T"][4]["max"] == pytest.approx(2.5)
    assert g["memory_vs_spikingjelly"]["per_T"][4]["max"] == pytest.approx(1 / 1.9)
    g = goals(_report(neurons=good, cases=cases[:1]))  # no network row, no large case
    assert g["network_vs_original"]["verdict"] == "not measured"
    assert g["correctness_at_scale"]["verdict"] == "met (the large case not run)"
    partial = _report(neurons=good, cases=[*cases, {**cases[1], "ok": None, "why": "skipped: 40 GiB needed"}])
    partial.stages[0]["not_started"] = ["float16 T=64"]
    partial.stages[2]["not_started"] = [cases[0]]
    g = goals(partial)
    assert g["neuron_vs_spikingjelly"]["verdict"] == "met (on 2 rows; not started: float16 T=64)"
    assert g["correctness_at_scale"]["verdict"] == "met (1 cases not started)"
    assert {v["verdict"] for v in goals(_report(dry=True, neurons=good)).values()} == {"toy sizes", "not measured"}


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", True)
    monkeypatch.setattr(kernels, "_ENABLED", True)  # whatever an earlier test's fall back left
    monkeypatch.setattr(kernels, "_FORCED", True)  # a kernel that cannot run is an error here, not the torch path


@pytest.mark.skipif(not kernels._INTERPRET, reason="runs the kernels on CPU tensors, under Triton's interpreter")
@pytest.mark.parametrize("fault", ["spikes", "grad_x", "grad_w"])
def test_the_correctness_check_catches_a_wrong_kernel(interpreted, fault):
    """check_case against float64 passes the real kernels and fails each kind of wrong answer."""
    from common.kernel_check import check_case

    case = {"T": 16, "dtype": "float32", "M": 33, "layout": "contiguous"}
    assert check_case(case, torch.device("cpu"))["ok"]

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight, bias)
            spikes = kernels._forward(x, weight, bias)
            return 1 - spikes if fault == "spikes" else spikes

        @staticmethod
        def backward(ctx, grad):
            gx, gw, gb = kernels._backward(grad, *ctx.saved_tensors, 2.0)
            return (gx * 1.01 if fault == "grad_x" else gx), (gw * 1.01 if fault == "grad_w" else gw), gb

    result = check_case(case, torch.device("cpu"), fire=lambda x, w, b, alpha: Wrong.apply(x, w, b))
    assert not result["ok"]


def test_the_sweep_choice_and_its_application(tmp_path):
    """--apply-sweep keeps, per band, the setting with the best geometric mean over dtypes when it beats the default
    by 3 % or more, compiles it for sm_80 / sm_90 first, and writes the overrides file the kernels read."""
    from common.launch_sweep import apply_sweep, choose_overrides

    default = kernels.default_setting("forward", 4)
    faster = {**default, "BLOCK": 128}
    slower = {**default, "BLOCK": 512}
    cases = [{"direction": "forward", "band": "1-8", "T": 4, "dtype": d, "timings": [
        {"setting": default, "ms": 1.0}, {"setting": faster, "ms": ms}, {"setting": slower, "ms": 2.0}]}
        for d, ms in (("float32", 0.9), ("bfloat16", 0.95))]
    assert choose_overrides({"cases": cases}) == {"forward:1-8": faster}
    cases[1]["timings"][1]["ms"] = 1.1  # geometric mean 0.995: within 3 % of the default
    assert choose_overrides({"cases": cases}) == {}
    cases[1]["timings"][1] = {"setting": faster, "error": "failed"}  # failed once: out
    cases[0]["timings"][1]["ms"] = 0.5
    assert choose_overrides({"cases": cases}) == {}
    cases[1]["timings"][1] = {"setting": faster, "ms": 0.5}
    # A second band whose winner leaves 8 warps per SM (203-246 registers without the 128 cap): compiled for sm_80
    # and sm_90 first, and refused.
    greedy = {**kernels.default_setting("forward", 16), "BLOCK": 256, "maxnreg": 255}
    cases += [{"direction": "forward", "band": "9-16", "T": 16, "dtype": "float32", "timings": [
        {"setting": kernels.default_setting("forward", 16), "ms": 1.0}, {"setting": greedy, "ms": 0.5}]}]
    run = tmp_path / "gpu_check.json"
    run.write_text(json.dumps({"environment": {"gpu": "test"}, "stages": [{"stage": "sweep", "cases": cases}]}))
    target = tmp_path / "launch_overrides.json"
    assert apply_sweep(run, target) == 0
    written = json.loads(target.read_text())
    assert written["overrides"] == {"forward:1-8": faster} and written["from"]["gpu"] == "test"
    try:  # the file as the kernels read it: the setting applies to the whole band, and only to it
        kernels.set_launch_overrides(written["overrides"])
        assert kernels.launch_config("forward", 3).block == kernels.launch_config("forward", 8).block == 128
        assert kernels.launch_config("forward", 17).block == 32
    finally:
        kernels.set_launch_overrides({})
    assert kernels.launch_config("forward", 3).block == 256


def test_launch_overrides_are_checked_and_reach_the_kernels(monkeypatch, tmp_path):
    """A setting that cannot run is one sentence; PSN_LAUNCH_CONFIG names a file the kernels read at import."""
    import subprocess
    import sys

    from conftest import ROOT, script_env

    for bad, words in (({"forward:1-8": {"path": "split"}}, "not one of"),
                       ({"forward:1-8": {"precision": "tf32x3"}}, "'ieee' forward"),
                       ({"backward:65-128": {"path": "dot"}}, "runs up to T = 64"),
                       ({"sideways:1-8": {}}, "keys are 'forward' or 'backward'"),
                       ({"forward:1-8": {"BLOCK": 100}}, "power of two")):
        with pytest.raises(ValueError, match=words):
            kernels.set_launch_overrides(bad)
    assert kernels.launch_overrides_now() == {}
    (tmp_path / "o.json").write_text(json.dumps({"overrides": {"backward:33-64": {"path": "tiled", "BLOCK": 64}}}))
    code = "from common import kernels; print(kernels.launch_config('backward', 40).name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=script_env(PSN_LAUNCH_CONFIG=str(tmp_path / "o.json")), timeout=120)
    assert out.stdout.strip() == "tiled", out.stderr
    (tmp_path / "o.json").write_text("{not json")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=script_env(PSN_LAUNCH_CONFIG=str(tmp_path / "o.json")), timeout=120)
    assert out.returncode != 0 and "launch settings in" in out.stderr and "cannot be used" in out.stderr
