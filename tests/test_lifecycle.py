"""The run directory: one run per directory, resumes that never rewind, the best checkpoint kept."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.errors import UserError
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
    flags = [*QUICK, "--epochs", 3, "--output-dir", tmp_path, "--run-name", "r", "--resume", "auto"]
    assert last_json(run_script(SCRIPT, *flags, "--stop-after", 1).stdout)["epochs_done"] == 1  # a new run
    run = tmp_path / "r"
    (run / "checkpoint_max.pth").unlink()  # as a kill between the two saves of a new best epoch could
    (run / ".checkpoint_latest.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    assert last_json(run_script(SCRIPT, *flags, "--stop-after", 1).stdout)["epochs_done"] == 2  # the same command
    assert not list(run.glob(".checkpoint_*.tmp"))
    best = torch.load(run / "checkpoint_max.pth", weights_only=True)
    assert best["best_acc1"] is not None and best["epoch"] in (0, 1)
    # Killed after checkpoint_max of a new best epoch, before checkpoint_latest: the same command continues
    # from checkpoint_max (the epochs after it are replayed).
    (run / "checkpoint_latest.pth").unlink()
    assert last_json(run_script(SCRIPT, *flags).stdout)["epochs_done"] == 3


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    for child in open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split():
        environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


def test_a_hung_ddp_peer_ends_the_run_with_one_error_line_within_the_dist_timeout(tmp_path, torchrun):
    """torchrun, 2 processes (gloo); rank 1 is frozen with SIGSTOP mid-epoch; rank 0 must give up within
    --dist-timeout (0.15 min = 9 s) with one `error:` line, not wait for torch's default 30 minutes."""
    import threading

    cmd = torchrun + ["--standalone", "--nproc_per_node=2", str(ROOT / SCRIPT), *map(str, QUICK), "--epochs", "3",
                      "--print-freq", "1", "--dist-timeout", "0.15", "--output-dir", str(tmp_path), "--run-name", "h"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors, stopped_at, everything = [], [], []

    def read_stderr():
        for line in proc.stderr:
            everything.append(line)
            if line.startswith("error: "):
                errors.append((time.monotonic(), line.strip()))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        for line in proc.stdout:
            if " step 3/" in line:
                break
        frozen = _worker_of_rank(proc.pid, 1)
        os.kill(frozen, signal.SIGSTOP)
        stopped_at.append(time.monotonic())
        deadline = time.monotonic() + 120
        while not errors and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(frozen, signal.SIGKILL)  # torchrun would take 30 s more to kill a frozen process
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(errors) == 1, "".join(everything)[-5000:]
    waited, line = errors[0][0] - stopped_at[0], errors[0][1]
    assert "--dist-timeout 0.15 min" in line and "stops too" in line, line
    assert 9 <= waited < 60, waited  # the timeout, plus a step's worth of slack on a loaded machine
    assert proc.returncode != 0


def test_crafted_checkpoint_and_unusable_output_dir_end_in_one_sentence(tmp_path):
    net = torch.nn.Linear(1, 1)  # whatever the model: the epoch is refused before the weights are looked at
    from common.checkpoint import LEGACY_FORMAT

    torch.save({"format": LEGACY_FORMAT, "model": net.state_dict(), "epoch": 10**30, "best_acc1": 1.0}, tmp_path / "e.pth")
    started = time.monotonic()
    _fails_cleanly(run_script(SCRIPT, *QUICK, "--resume", tmp_path / "e.pth", check=False),
                   "epoch must be an integer from -1 to", "found 1000000000000000000000000000000")
    assert time.monotonic() - started < 60  # refused, not replayed
    (tmp_path / "a_file").write_text("not a directory")
    _fails_cleanly(run_script(SCRIPT, *QUICK, "--epochs", 1, "--output-dir", tmp_path / "a_file", check=False),
                   "cannot be made or written", "--output-dir")


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path):
    """A 4 MiB tmpfs: epoch 1 fits; then the disk is filled to 64 KiB of free space, less than a checkpoint."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        flags = [*QUICK, "--epochs", 2, "--output-dir", disk, "--run-name", "r"]
        run_script(SCRIPT, *flags, "--stop-after", 1)
        latest = disk / "r" / "checkpoint_latest.pth"
        before = latest.read_bytes()
        from common.provenance import code_state

        diff = code_state()[1] or ""  # a modified working tree's code.diff must still fit: the checkpoint may not
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 64 * 1024 - len(diff.encode())))
        full = run_script(SCRIPT, *flags, "--resume", latest, check=False)
        _fails_cleanly(full, "is full", "previous version is kept", f"--resume {latest}")
        assert latest.read_bytes() == before
        assert not list((disk / "r").glob(".checkpoint_*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_under_torchrun_a_stop_signal_stops_every_process_at_one_step_and_the_run_resumes(tmp_path, torchrun):
    """SIGUSR1 to the launcher (told to forward it, as the README's SLURM example does): both processes stop at
    the same step, rank 0 writes the mid-epoch checkpoint and prints the resume command, which finishes the run."""
    import shlex

    args = [*map(str, QUICK), "--epochs", "2", "--print-freq", "3", "--output-dir", str(tmp_path), "--run-name", "d"]
    launcher = torchrun + ["--standalone", "--nproc_per_node=2", "--signals-to-handle=SIGTERM,SIGINT,SIGUSR1"]
    proc = subprocess.Popen(launcher + [str(ROOT / SCRIPT), *args], cwd=ROOT, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/2") and " step 3/" in line:
            proc.send_signal(signal.SIGUSR1)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Resume with:\n  torchrun --nproc_per_node=2 " in err, err
    assert err.count("SIGUSR1: stopped in epoch 1 after step") == 1  # rank 0 speaks for both
    mid = torch.load(tmp_path / "d" / "checkpoint_latest.pth", weights_only=True)
    # The processes agree at the --print-freq steps (3, 6, ...) and every 10th: after step 3, before the epoch's end.
    assert 3 < mid["step"] < 22 and (mid["step"] % 3 == 0 or mid["step"] % 10 == 0), mid["step"]
    assert mid["epoch_sums"][2] == 2 * 32 * mid["step"] and mid["step_samples"] == 64

    command = shlex.split(err.split("Resume with:\n", 1)[1].splitlines()[0])  # torchrun's own report follows
    assert command[:2] == ["torchrun", "--nproc_per_node=2"]
    resumed = run_script(SCRIPT, *command[3:], launcher=torchrun + ["--standalone", "--nproc_per_node=2"])
    assert f"(epoch 1 of 2, step {mid['step'] + 1})" in resumed.stdout
    assert last_json(resumed.stdout)["epochs_done"] == 2

    # The stopped and resumed run ends bit for bit where the uninterrupted one does: weights, BatchNorm
    # statistics, optimizer state and every logged number but the timings.
    whole = args[:args.index("--run-name")] + ["--run-name", "whole"]
    run_script(SCRIPT, *whole, launcher=torchrun + ["--standalone", "--nproc_per_node=2"])
    a, b = (torch.load(tmp_path / name / "checkpoint_latest.pth", weights_only=True) for name in ("whole", "d"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert a["best_acc1"] == b["best_acc1"] and a["epoch_sums"] == b["epoch_sums"]

    def logged(name):
        timing = ("train/images_per_s", "train/epoch_time_s")
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert logged("whole") == logged("d") and len(logged("d")) == 2


def test_a_lock_naming_a_pid_no_process_can_have_is_taken_over(tmp_path, capsys):
    import socket

    from common.run_dir import RunLock

    (tmp_path / ".run.lock").write_text(f"{socket.gethostname()} {'9' * 20}\n")
    lock = RunLock(tmp_path).claim()
    assert lock.held and "which is gone; taking it over" in capsys.readouterr().err
    lock.release()
    (tmp_path / ".run.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a live one still holds
    with pytest.raises(UserError, match="is in use by process"):
        RunLock(tmp_path).claim()
