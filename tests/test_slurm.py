"""The batch scripts of `scripts/reproduce.py slurm`, run as SLURM would run them, on this machine.

Stand-ins for `srun` and `scontrol` on PATH record every call: `srun --nodes=N` starts its command once per
"node" (each a torchrun agent on 127.0.0.1) and passes SIGUSR1 on to them, as SLURM signals a job step
before the time limit; `scontrol show hostnames` names 127.0.0.1, `scontrol requeue` is only recorded.
A tiny real training run (digits, 8 channels, CPU) goes through the generated script: stopped by the
signal, it requeues its job; requeued (SLURM_RESTART_COUNT), it continues and finishes without a
requeue; a crash, or a stop past --max-requeues, requeues nothing.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, free_port, last_json, script_env
from scripts import reproduce

TINY = "--dataset digits --channels 8 --workers 0 --device cpu --epochs 2 --print-freq 1"

SRUN = f"""#!{sys.executable}
import json, os, signal, subprocess, sys
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps(["srun", *sys.argv[1:]]) + "\\n")
args, nodes = sys.argv[1:], 1
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option.startswith("--nodes="):
        nodes = int(option.split("=")[1])
children = []
signal.signal(signal.SIGUSR1, lambda signum, frame: [c.send_signal(signum) for c in children])
touch = os.environ.get("STANDIN_SRUN_TOUCH")  # instead of running the step: mark that file as written now
if touch:
    os.utime(touch)
    sys.exit(138)
for node in range(nodes):
    children.append(subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(node)}}))
with open(os.path.join(os.environ["STANDIN_DIR"], "srun.pid"), "w") as f:
    f.write(str(os.getpid()))
codes = [c.wait() for c in children]
sys.exit(max(abs(c) for c in codes))
"""

SCONTROL = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps(["scontrol", *sys.argv[1:]]) + "\\n")
if sys.argv[1:3] == ["show", "hostnames"]:
    print("127.0.0.1\\n127.0.0.1")
"""


@pytest.fixture
def slurm(tmp_path):
    """Run a batch script as one job of SLURM: its stand-ins, its environment; returns (run, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    port = free_port()
    while not 20000 <= port < 40000:  # the script's port is 20000 + job id % 20000: pick a free one
        port = free_port()
    job = str(port - 20000)

    def run(script: str, restarts: int = 0, stop_at: str | None = None, **extra_env) -> tuple[int, str, str]:
        path = tmp_path / "job.sh"
        path.write_text(script)
        env = script_env(PATH=f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}"
                              f"{os.environ['PATH']}", STANDIN_LOG=str(log), STANDIN_DIR=str(tmp_path),
                         SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID=job, SLURM_JOB_NODELIST="node[1-2]",
                         SLURM_JOB_NUM_NODES="2", SLURM_RESTART_COUNT=str(restarts), **extra_env)
        proc = subprocess.Popen(["bash", str(path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if stop_at is not None and line.startswith(stop_at):
                os.kill(int((tmp_path / "srun.pid").read_text()), signal.SIGUSR1)  # SLURM's time-limit warning
                stop_at = None
        out = "".join(lines) + proc.stdout.read()
        err = proc.stderr.read()
        return proc.wait(timeout=300), out, err

    def calls(command: str) -> list[list[str]]:
        if not log.exists():
            return []
        return [c for c in map(json.loads, log.read_text().splitlines()) if c[0] == command]

    return run, calls, job


def _script(capsys, *flags) -> str:
    assert reproduce.main(["slurm", "cifar10_psn", *flags]) == 0
    return capsys.readouterr().out


def test_two_nodes_stop_together_requeue_and_finish_in_the_next_job(tmp_path, slurm, capsys):
    run, calls, job = slurm
    runs = tmp_path / "runs"
    script = _script(capsys, "--nodes", "2", "--gpus", "1", "--accept-bn-batch", "--runs", str(runs),
                     "--extra", TINY)
    run_dir = runs / "cifar10" / "cifar10_psn"

    code, out, err = run(script, stop_at="epoch 1/2  step 3/11")
    assert code == 0, err
    assert "psn-repro: cifar10_psn stopped before its end (job segment 1): requeued to continue." in out
    assert calls("scontrol")[-1] == ["scontrol", "requeue", job]
    srun = calls("srun")[0]
    # One torchrun per node, meeting at the head node that scontrol named, at the job's port.
    assert srun[1:9] == ["--nodes=2", "--ntasks-per-node=1", "torchrun", "--nnodes=2", "--nproc_per_node=1",
                         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{20000 + int(job)}",
                         f"--rdzv-id=psn-{job}"]
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in srun
    b = srun.index("-b")
    assert srun[b + 1] == "64"  # 2 nodes x 1 GPU keep the global batch of 128
    mid = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)
    assert mid["epoch"] == -1 and 3 <= mid["step"] < 11 and mid["step_samples"] == 128
    assert err.count("SIGUSR1: stopped in epoch 1 after step") == 1  # both processes stopped, rank 0 said so

    code, out, err = run(script, restarts=1)  # the requeued job: the same script continues the run
    assert code == 0, err
    assert f"(epoch 1 of 2, step {mid['step'] + 1})" in out
    assert "psn-repro: cifar10_psn is finished (job segment 2)." in out
    assert [c for c in calls("scontrol") if c[1] == "requeue"] == [["scontrol", "requeue", job]]  # no second one
    assert last_json(out.split("psn-repro:")[0])["epochs_done"] == 2

    assert reproduce.main(["status", str(runs), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "finished" and status["segments"] == 2 and status["epochs_done"] == 2


def test_a_crash_and_a_stop_past_the_bound_requeue_nothing(tmp_path, slurm, capsys):
    run, calls, job = slurm
    runs = tmp_path / "runs"
    run_dir = runs / "cifar10" / "cifar10_psn"
    run_dir.mkdir(parents=True)
    summary = run_dir / "summary.json"  # an earlier job's stop: not this one's
    summary.write_text(json.dumps({"epochs_done": 1, "epochs": 2, "stopped": "SIGUSR1"}))
    os.utime(summary, (time.time() - 60, time.time() - 60))

    crash = _script(capsys, "--runs", str(runs), "--extra", f"{TINY} --device cuda")  # no GPU here: it fails
    code, out, err = run(crash)
    assert code == 1 and "error: --device cuda was asked for, but this machine has no CUDA GPU" in err, err
    assert "psn-repro: cifar10_psn failed: not requeued" in err
    assert calls("scontrol") == [] and calls("srun")[0][1:4] == ["--nodes=1", "--ntasks-per-node=1", "python"]

    bounded = _script(capsys, "--runs", str(runs), "--max-requeues", "2", "--extra", TINY)
    code, out, err = run(bounded, restarts=1, STANDIN_SRUN_TOUCH=str(summary))  # stopped in its 2nd job
    assert code == 0 and calls("scontrol") == [["scontrol", "requeue", job]], err
    code, out, err = run(bounded, restarts=2, STANDIN_SRUN_TOUCH=str(summary))  # and in its 3rd: no more
    assert code == 1 and "was requeued 2 times already (--max-requeues)" in err
    assert len(calls("scontrol")) == 1
