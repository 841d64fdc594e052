"""The run lifecycle: one run per directory, resumes that never rewind, the best checkpoint kept."""
import signal
import subprocess
import sys
import time

import torch

from conftest import QUICK, ROOT, last_json, run_script, script_env

SCRIPT = "cifar10/train.py"


def _fails_cleanly(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_a_second_run_into_a_live_run_directory_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    cmd = [sys.executable, str(ROOT / SCRIPT), *map(str, QUICK), "--epochs", "50", "--output-dir", str(tmp_path),
           "--run-name", "r"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "r" / ".run.lock"
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lock.exists() and lock.read_text().split()[1] == str(first.pid)
        second = run_script(SCRIPT, *QUICK, "--epochs", 1, "--output-dir", tmp_path, "--run-name", "r", check=False)
        _fails_cleanly(second, "is in use by process", str(first.pid))
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: the lock stays behind, its process gone
        first.wait()
    assert lock.exists()
    # The killed run may or may not have finished an epoch: --resume auto continues it or starts anew.
    third = run_script(SCRIPT, *QUICK, "--epochs", 2, "--output-dir", tmp_path, "--run-name", "r", "--resume", "auto")
    assert "taking it over" in third.stderr and last_json(third.stdout)["epochs_done"] >= 2
    assert not lock.exists()  # released at exit


def test_resume_never_rewinds_and_forks_on_request(tmp_path):
    run = tmp_path / "r"
    run_script(SCRIPT, *QUICK, "--epochs", 3, "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "r")
    old = tmp_path / "epoch1.pth"
    old.write_bytes((run / "checkpoint_latest.pth").read_bytes())
    run_script(SCRIPT, *QUICK, "--epochs", 3, "--stop-after", 1, "--resume", run / "checkpoint_latest.pth")
    older = run / "checkpoint_epoch1.pth"
    older.write_bytes(old.read_bytes())
    before = (run / "checkpoint_latest.pth").read_bytes()
    refused = run_script(SCRIPT, *QUICK, "--epochs", 3, "--resume", older, check=False)
    _fails_cleanly(refused, "would rewind the run", "--run-name")
    assert (run / "checkpoint_latest.pth").read_bytes() == before
    fork = run_script(SCRIPT, *QUICK, "--epochs", 2, "--resume", older, "--output-dir", tmp_path, "--run-name", "f")
    assert last_json(fork.stdout)["epochs_done"] == 2 and (tmp_path / "f" / "checkpoint_latest.pth").is_file()
    assert f"# started from {older}" in (tmp_path / "f" / "args.txt").read_text()  # the fork is recorded
    assert (run / "checkpoint_latest.pth").read_bytes() == before


def test_resume_auto_restores_a_missing_best_checkpoint_and_removes_stray_temporaries(tmp_path):
    flags = [*QUICK, "--epochs", 2, "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "r", "--resume", "auto"]
    assert last_json(run_script(SCRIPT, *flags).stdout)["epochs_done"] == 1  # nothing there yet: a new run
    run = tmp_path / "r"
    (run / "checkpoint_max.pth").unlink()  # as a kill between the two saves of a new best epoch could
    (run / ".checkpoint_latest.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    assert last_json(run_script(SCRIPT, *flags).stdout)["epochs_done"] == 2  # the same command continues
    assert not list(run.glob(".checkpoint_*.tmp"))
    best = torch.load(run / "checkpoint_max.pth", weights_only=True)
    assert best["best_acc1"] is not None and best["epoch"] in (0, 1)
