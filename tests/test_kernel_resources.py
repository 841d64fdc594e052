"""The fused kernels' GPU code, checked without a GPU: every variant the dispatcher can launch is
compiled ahead of time for sm_80 and sm_90, aligned and unaligned, and ptxas (shipped with Triton)
reports its resources.

No variant may spill registers to local memory, use more than 255 registers or more shared memory
than the target gives one block, and up to T = 64 each must leave room for 16 resident warps per SM.
"""
import json
import subprocess
import sys

import pytest

from common import kernels
from conftest import ROOT, run_script, script_env

pytestmark = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="Triton is not installed")


def _check(*flags, expected: int):
    out = run_script("scripts/kernel_resources.py", "--jobs", "2", *flags, check=False, timeout=1800)
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == expected and {r["arch"] for r in results} == {80, 90}
    assert {r["aligned"] for r in results} == {True, False}  # both specialisations a launch can get
    bad = [(r["direction"], r["T"], r["dtype"], r["arch"], r["aligned"], r["registers"], r["spill_stores"],
            r["shared"], r["warps_per_sm"]) for r in results if not r["ok"]]
    assert not bad and out.returncode == 0, bad
    assert all(r["warps_per_sm"] >= 16 for r in results if r["T"] <= 64)
    return results


def test_no_kernel_variant_spills_at_the_path_boundaries():
    """Each path at both ends of its T range, fp32 and bf16, aligned and unaligned, both targets."""
    # 9 T x 2 directions x 2 dtypes x 2 targets x 2 alignments, and the split backward's second kernel at 33, 64
    results = _check("--T", "8", "9", "16", "17", "32", "33", "64", "65", "256", "--dtype", "fp32", "bf16",
                     expected=9 * 2 * 2 * 2 * 2 + 2 * 2 * 2 * 2)
    assert {r["path"] for r in results} == {"small", "dot", "split", "split:tiled", "tiled"}


@pytest.mark.slow  # every compiled variant: ~2 minutes on 2 cores with an empty Triton cache
def test_no_kernel_variant_spills_or_exceeds_a_limit():
    from scripts.kernel_resources import T_VALUES

    # 2 directions x one T per compiled kernel x 3 dtypes x 2 targets x aligned / unaligned; the split backward
    # launches two kernels
    split = sum(kernels.launch_config("backward", T).prelude is not None for T in T_VALUES)
    _check(expected=(2 * len(T_VALUES) + split) * 3 * 2 * 2)


def test_the_check_sees_a_spilling_kernel():
    """The measurement can fail: 64 x 64 fp32 tiles on 4 warps (the old forward setting) spill on sm_80."""
    code = ("import json, dataclasses; from scripts import kernel_resources as R; from common import kernels as K; "
            "cfg = K.LaunchConfig('dot', K._psn_forward_kernel, {'T_PAD': 64, 'BLOCK': 64}, 4, 1); "
            "r = R.measure_config(cfg, 'forward', 64, 'fp32', 80); print(json.dumps([r.spill_stores, r.ok]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=script_env(TRITON_INTERPRET="0"), check=True)
    spill_stores, ok = json.loads(out.stdout.strip().splitlines()[-1])
    assert spill_stores > 0 and not ok
