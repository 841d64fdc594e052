"""Helpers shared by the tests: run a task script as a user would, read what it wrote."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (set before Triton is
# imported). Only tests that opt in send the neurons through them on the CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "original"

# Small, fast settings for the digits runs: 8 channels, no loader workers, 1 intra-op thread
# per process so that two-process runs do not fight over the 2 cores.
QUICK = ["--dataset", "digits", "--channels", "8", "-b", "32", "--workers", "0", "--device", "cpu"]


def script_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_script(script: str, *args, check: bool = True, launcher=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(ROOT / script), *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=script_env(), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def read_scalars(run_dir) -> dict:
    """{tag: [(step, value), ...]} through TensorBoard's own reader (purged steps dropped, as TensorBoard shows)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def torchrun():
    return [sys.executable, "-m", "torch.distributed.run"]


def manifest(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) rows of a released model's key manifest in tests/fixtures/original/manifests."""
    rows = []
    for line in open(FIXTURES / "manifests" / name):
        if line.startswith("#"):
            continue
        key, shape, dtype = line.rstrip("\n").split("\t")
        rows.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x")), dtype))
    return rows
