"""scripts/gpu_check.py, the GPU acceptance in one command, kept from rotting: its --dry-run runs every stage
at toy sizes on CPU (the kernels under Triton's interpreter) and must pass, and its checks can fail."""
import json

import pytest

from common import kernels
from conftest import run_script

pytestmark = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="Triton is not installed")


def test_the_dry_run_runs_every_stage(tmp_path):
    out = run_script("scripts/gpu_check.py", "--dry-run", "--json", tmp_path / "gpu.json", timeout=900)
    data = json.loads((tmp_path / "gpu.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    assert list(stages) == ["tests", "benchmark", "training", "compile", "ddp"] and data["dry_run"]
    assert all(s["ok"] for s in stages.values()), {k: v["summary"] for k, v in stages.items()}
    assert stages["tests"]["tests"] > 0 and stages["tests"]["skipped"] == 0
    rows = stages["training"]["rows"]
    assert {(r["model"].split()[0], r["dtype"]) for r in rows} == {
        (m, d) for m in ("CIFAR10Net", "SequentialCIFARNet", "SEW") for d in ("float16", "bfloat16")}
    assert all(len(r["fused_losses"]) == 2 and r["agree"] for r in rows)
    assert "| training | ok |" in out.stdout and "| ddp | ok |" in out.stdout


def test_the_loss_curve_check_can_fail():
    from scripts.gpu_check import agree

    base = [2.3] + [1.0] * 60
    assert agree(base, list(base))[0]
    assert not agree([2.31] + base[1:], base)[0]  # the first step off by 4e-3
    assert not agree(base[:1] + [1.1] * 60, base)[0]  # the end 10 % higher
