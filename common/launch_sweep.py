"""The launch-setting sweep: which settings the GPU check times, and how its best become the defaults.

`sweep_candidates` lists the settings timed per direction and T (the default first); `choose_overrides`
keeps, per direction and band of T, the setting with the best geometric mean time over the dtypes measured
when it beats the default by 3 % or more; `apply_sweep` compiles those for sm_80 and sm_90 first
(scripts/kernel_resources.py, no GPU needed), refuses any that spills or leaves fewer than 16 warps per SM,
and writes the overrides file that `common.kernels` reads at import.
"""
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import kernels

ROOT = Path(__file__).resolve().parents[1]


def sweep_candidates(direction: str, T: int, dry: bool) -> list[dict]:
    """Launch settings to time at T, the default first. Only what the kernels accept (kernels._config checks)."""
    default = kernels.default_setting(direction, T)
    options = [default]

    def add(**change):
        s = {**default, **change}
        if s not in options:
            try:
                kernels._config(direction, T, s)
            except ValueError:
                return
            options.append(s)

    if direction == "forward":
        if T <= 8:
            add(BLOCK=128), add(BLOCK=512), add(num_warps=8)
        elif T <= 16:
            add(BLOCK=64), add(BLOCK=256), add(path="dot", BLOCK=32, num_warps=8)
        else:
            add(BLOCK=64), add(num_warps=4 if default["num_warps"] == 8 else 8), add(path="tiled", BLOCK=64,
                                                                                     num_warps=8)
    else:
        if T <= 8:
            add(BLOCK=64), add(BLOCK=256), add(num_warps=8)
        elif T <= 32:
            add(BLOCK=32 if default["BLOCK"] == 64 else 64), add(precision="tf32x3"), add(num_stages=2),
            add(path="split", BLOCK=32, num_warps=16)
        else:
            add(path="tiled", BLOCK=64, num_warps=8), add(precision="tf32x3"), add(BLOCK=16, num_warps=8),
            add(path="dot", BLOCK=32, num_warps=16)
    return options[:2] if dry else options


def choose_overrides(sweep: dict, min_gain: float = 1.03) -> dict:
    """Per direction and band of T, the setting with the best geometric mean time over the dtypes measured,
    kept when it beats the default by min_gain or more (settings that failed anywhere are out)."""
    by_key: dict = {}
    for case in sweep.get("cases", []):
        key = f"{case['direction']}:{case['band']}"
        for t in case["timings"]:
            entry = by_key.setdefault(key, {}).setdefault(json.dumps(t["setting"], sort_keys=True), [])
            entry.append(t.get("ms"))
    chosen = {}
    for key, settings in by_key.items():
        direction, _, high = kernels.band_of(key)
        default = json.dumps(kernels.default_setting(direction, high), sort_keys=True)
        counts = max(len(v) for v in settings.values())
        scores = {s: math.exp(statistics.mean(math.log(m) for m in v)) for s, v in settings.items()
                  if len(v) == counts and all(m for m in v)}
        if default not in scores or not scores:
            continue
        best = min(scores, key=scores.get)
        if best != default and scores[default] / scores[best] >= min_gain:
            chosen[key] = json.loads(best)
    return chosen


def apply_sweep(path: Path, target: Path) -> int:
    """--apply-sweep: the sweep's best settings into common/launch_overrides.json, each compiled ahead of time for
    sm_80 and sm_90 first (scripts/kernel_resources.py with the new settings, no GPU needed): a setting that spills
    or leaves fewer than 16 warps per SM is not adopted."""
    try:
        data = json.loads(Path(path).read_text())
        sweep = next(s for s in data["stages"] if s["stage"] == "sweep")
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        print(f"error: {path} holds no sweep stage of a gpu_check run.", file=sys.stderr)
        return 2
    chosen = choose_overrides(sweep)
    refused = {}
    if chosen:
        with tempfile.TemporaryDirectory() as tmp:
            trial = Path(tmp) / "overrides.json"
            trial.write_text(json.dumps({**kernels.launch_overrides_now(), **chosen}))
            bands = [kernels.band_of(key) for key in chosen]
            Ts = sorted({T for _, low, high in bands for T in (low, high)})
            directions = sorted({direction for direction, _, _ in bands})
            out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--T", *map(str, Ts),
                                  "--direction", *directions],
                                 cwd=ROOT, capture_output=True, text=True,
                                 env=dict(os.environ, PSN_LAUNCH_CONFIG=str(trial), TRITON_INTERPRET="0"))
            results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            if not results:
                print(f"error: the settings could not be compiled: {out.stderr.strip()[-500:]}", file=sys.stderr)
                return 1
        for r in results:
            key = f"{r['direction']}:{kernels.t_range(r['T'])}"
            if key in chosen and not r["ok"]:
                refused[key] = chosen[key]
    adopted = {k: v for k, v in chosen.items() if k not in refused}
    merged = {**kernels.launch_overrides_now(), **adopted}
    target.write_text(json.dumps({"overrides": merged, "from": {"file": str(path),
                                                                "gpu": data.get("environment", {}).get("gpu")}},
                                 indent=1) + "\n")
    for key, setting in adopted.items():
        print(f"adopted {key}: {setting}")
    for key, setting in refused.items():
        print(f"not adopted {key}: {setting} (spills or leaves fewer than 16 warps per SM on sm_80 or sm_90)")
    if not chosen:
        print("the defaults were best everywhere (within 3 %): nothing to change")
    print(f"wrote {target}; run `python -m pytest tests/test_kernels.py tests/test_kernel_resources.py` and commit it")
    return 0
