"""The paper's experiments as data (paper/experiments.toml) and scripts/reproduce.py: every row against the
authors' logs and its task's parser, the commands, SLURM scripts, the status of runs; and the rough edges a
newcomer met (what --test-only loaded, a file that cannot tell its T, the table tool's output)."""
import importlib
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT, manifest, run_script, script_env
from common import experiments
from scripts import reproduce

ROWS = experiments.load()


def test_every_row_is_the_authors_run_and_parses_to_what_it_says():
    from common.run_logs import read_run

    assert len(ROWS) == 84 and len({r.id for r in ROWS}) == 84
    assert {r.table for r in ROWS} == {"CIFAR-10", "Sequential CIFAR-10", "Sequential CIFAR-100", "CIFAR10-DVS",
                                       "ImageNet", "Order sweep (sCIFAR-100)"}
    assert sorted(r.order for r in ROWS if r.sweep == "masked PSN order, sCIFAR-100") == list(range(1, 33))
    for row in ROWS:
        log = ROOT / row.log
        layout = {"te": "imagenet", "logs": "cifar10dvs"}
        event_dir = next(d for d in (log / "te", log / "logs", log) if d.is_dir() and any(d.glob("events*")))
        run = read_run(log, event_dir, layout.get(event_dir.name))
        assert (run.task, run.dataset, run.neuron, run.order, run.T) == row.key, row.id
        assert round(run.best, 2) == row.paper, row.id  # the authors' best, from their own log
        if row.paper_top5 is not None:
            assert round(max(v for _, v in run.top5), 2) == row.paper_top5
        settings = importlib.import_module(f"{row.task}.train").TASK.parse(row.arguments("/d", "/w"))
        neuron = settings.get("neuron", settings.get("method"))
        assert (neuron, settings.T) == (row.neuron, row.T), row.id
        assert row.order is None or settings.order == row.order, row.id
        assert settings.epochs == row.epochs and "{data}" in row.args


def test_the_readmes_row_tables_are_the_registrys():
    for task in experiments.TASKS:
        text = (ROOT / task / "README.md").read_text()
        block = text.split(f"<!-- rows: {task} (python scripts/reproduce.py table {task}) -->\n")[1]
        assert block.split("\n<!-- /rows -->")[0] == reproduce.readme_table(ROWS, task), task


def test_commands_and_a_slurm_script(tmp_path, capsys):
    assert reproduce.main(["command", "scifar10_sliding_psn_P32", "--data-root", "/data"]) == 0
    single = shlex.split(capsys.readouterr().out)
    assert single[:2] == ["python", "sequential_cifar/train.py"] and "--data-dir" in single
    assert single[single.index("--data-dir") + 1] == "/data/CIFAR10" and single[-3:] == ["-P", "32", "--amp"]
    assert reproduce.main(["command", "imagenet_sew_resnet18", "--runs", "runs"]) == 0  # the authors' 8 GPUs
    many = shlex.split(capsys.readouterr().out)
    assert many[:3] == ["torchrun", "--standalone", "--nproc_per_node=8"]
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in many
    assert many[-6:] == ["--output-dir", "runs/imagenet", "--run-name", "imagenet_sew_resnet18", "--resume", "auto"]

    assert reproduce.main(["slurm", "scifar100_masked_psn_P*", "--time", "12:00:00"]) == 0
    captured = capsys.readouterr()
    script = captured.out
    assert "#SBATCH --job-name=psn-repro --nodes=1 --ntasks-per-node=1 --gres=gpu:1 --time=12:00:00" in script
    assert "#SBATCH --signal=USR1@180 --requeue --array=0-31 " in script and script.count("--resume auto") == 32
    assert captured.err.count("global batch 128 = 1 process x 128, lr 0.1 (the authors': 1 GPU x 128).") == 32
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0  # valid shell
    assert reproduce.main(["slurm", "cifar10_psn", "cifar10dvs_T4"]) == 2  # 1 and 2 GPUs: one script each
    assert "different numbers of GPUs" in capsys.readouterr().err
    assert reproduce.main(["command", "nothing_like_it"]) == 2


def _run_dir(runs, row, epochs_done, best, lock=None, stopped=False):
    folder = runs / row.task / row.id
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "test/acc1": best - (epochs_done - e), "train/epoch_time_s": 60.0})
             for e in range(1, epochs_done + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + ('{"epoch": 9' if stopped else ""))
    (folder / "checkpoint_latest.pth").write_bytes(b"")
    if lock:
        (folder / ".run.lock").write_text(lock)


def test_status_of_runs_beside_the_paper(tmp_path, capsys):
    import socket

    rows = {r.id: r for r in ROWS}
    _run_dir(tmp_path, rows["cifar10dvs_T4"], 200, 83.0)  # finished
    _run_dir(tmp_path, rows["cifar10dvs_T8"], 50, 70.0, lock=f"{socket.gethostname()} {os.getpid()}")  # running
    _run_dir(tmp_path, rows["cifar10dvs_T10"], 20, 60.0, lock=f"{socket.gethostname()} 999999999", stopped=True)
    assert reproduce.main(["status", str(tmp_path), "cifar10dvs_*", "scifar10_psn", "--json"]) == 0
    states = {s["id"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    assert states["cifar10dvs_T4"]["state"] == "finished" and states["cifar10dvs_T4"]["difference"] == \
        pytest.approx(83.0 - 82.30)
    running = states["cifar10dvs_T8"]
    assert running["state"] == "running" and running["epochs_done"] == 50 and running["eta_s"] == 150 * 60.0
    assert states["cifar10dvs_T10"]["state"] == "stopped"  # its lock's process is gone
    assert states["scifar10_psn"]["state"] == "not started"
    assert reproduce.main(["status", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| cifar10dvs_T8 | running (" in table and "ETA 2:30)" in table and "scifar10_psn" not in table


def test_test_only_says_what_it_loaded_and_a_dvs_file_needs_its_T(tmp_path):
    ckpt = {"model": {k: torch.randn(s) * 0.1 if not d.startswith("int") else torch.zeros(s, dtype=torch.int64)
                      for k, s, d in manifest("cifar10dvs_vgg_spsn.tsv")}, "epoch": 199, "best_acc": 85.3}
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(ckpt, folder / "dvs.pth")
    from cifar10dvs import train as dvs
    from common.errors import UserError
    from common.settings import resolve
    from common.checkpoint import read_checkpoint

    loaded = read_checkpoint(folder / "dvs.pth")
    with pytest.raises(UserError, match=r"cannot tell its T; give --T \(the paper's runs: 4, 8, 10\)"):
        resolve(dvs.TASK, dvs.TASK.parse(["--test-only", "--resume", "x"]), loaded)
    assert resolve(dvs.TASK, dvs.TASK.parse(["-T", "10", "--test-only", "--resume", "x"]), loaded).T == 10
    (folder / "manifest.json").write_text(json.dumps({"files": {"dvs.pth": {"model": "cifar10dvs_sliding_psn_t8",
                                                                            "settings": {"T": 8}}}}))
    told = []
    assert resolve(dvs.TASK, dvs.TASK.parse(["--test-only", "--resume", "x"]), loaded, told).T == 8
    assert told == ["order=2 (from its tensors)", "T=8 (from manifest.json beside it)"]

    out = run_script("cifar10/train.py", "--dataset", "digits", "--workers", 0, "--device", "cpu", "--test-only",
                     "--resume", FIXTURES / "cifar10_psn_c32_T4.pth").stdout.splitlines()
    assert out[0] == (f"evaluating {FIXTURES / 'cifar10_psn_c32_T4.pth'} (the original net layout, end of epoch 1024, "
                      "best 95.32 %); model: channels=32, T=4 (from its tensors)")
    assert out[1] == "test set: 360 samples, the model scores 10 classes" and json.loads(out[-1])["samples"] == 360


def test_the_table_tool_writes_only_markdown_to_stdout(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_tables.py"), str(ROOT / "paper" / "logs"),
                          "--plots", str(tmp_path / "plots")], capture_output=True, text=True, env=script_env())
    assert out.returncode == 0 and "plot:" not in out.stdout and out.stderr.count("plot: ") == 6
    sections = [line for line in out.stdout.splitlines() if line.startswith("## ")]
    assert sections == ["## CIFAR-10", "## Sequential CIFAR (T = 32)",
                        "## Order sweep of the masked and sliding PSN (sequential CIFAR)", "## CIFAR10-DVS",
                        "## ImageNet"]
    main = out.stdout.split("## Sequential CIFAR (T = 32)")[1].split("## ")[0]
    assert len([line for line in main.splitlines() if line.startswith("| ") and "---" not in line]) == 1 + 9
    from common.run_logs import find_runs
    from scripts.paper_tables import curve_label

    imagenet = [curve_label(r) for r in find_runs([ROOT / "paper" / "logs" / "imagenet"])]
    assert len(set(imagenet)) == 2 and any(label.startswith("SEW ResNet-34, PSN, T=4") for label in imagenet)


def test_the_downloaders_help_gives_every_default():
    out = run_script("scripts/download_checkpoints.py", "--help").stdout
    for flag in ("--dest", "--api", "--article", "--timeout", "--deadline", "--retries"):
        assert flag in out
    assert out.count("(default:") >= 6 and "24454912" in out


@pytest.mark.parametrize("flags", [["--time", "1:00\n#SBATCH --x"], ["--partition", "gpu\nrm -rf ~"],
                                   ["--runs", "runs\n#SBATCH --x"], ["--time", "forever"], ["--gpus", "0"],
                                   ["--extra", "--workers 8\nrm -rf ~"], ["--extra", "'unclosed"],
                                   ["--max-requeues", "-1"], ["--nodes", "0"]])
def test_slurm_values_cannot_inject_lines_or_change_a_row(flags, capsys):
    assert reproduce.main(["slurm", "*", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err


def test_status_reads_damaged_metrics_and_locks_without_a_traceback(tmp_path, capsys):
    import socket

    run_dir = tmp_path / "cifar10" / "cifar10_psn"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        '{"epoch": 1, "test/acc1": 50.0, "train/epoch_time_s": NaN}\n'
        '{"epoch": 2, "test/acc1": 1e308, "train/epoch_time_s": 1e308}\n'
        f'{{"epoch": {"9" * 400}, "test/acc1": 60.0}}\n')
    (run_dir / ".run.lock").write_text(f"{socket.gethostname()} {'7' * 20}\n")  # no process has that PID
    assert reproduce.main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[0])
    assert status["epochs_done"] == 2 and status["best"] == 50.0 and status["state"] == "stopped"


def _words(capsys) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    return shlex.split(captured.out), captured.err


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_every_row_keeps_its_authors_global_batch_bn_batch_and_lr_on_any_gpu_count(gpus, capsys):
    """Each row's command on 1, 2, 4 and 8 GPUs, parsed by its task's own parser: the samples per optimizer step
    (-b x processes x --accum-steps, or -b where -b is the total), the samples each process's BatchNorm sees, and
    the lr are the authors'; where more GPUs would shrink BatchNorm's batch, the command refuses in one sentence
    unless --accept-bn-batch."""
    for row in ROWS:
        task = importlib.import_module(f"{row.task}.train").TASK
        assert task.global_batch == (row.task in experiments.TOTAL_BATCH_TASKS), row.task
        authors = task.parse(row.arguments("/d", "/w"))
        authors_step = authors.batch_size * (1 if task.global_batch else row.gpus)
        authors_bn = authors.batch_size // row.gpus if task.global_batch else authors.batch_size
        for accept in ([], ["--accept-bn-batch"]):
            code = reproduce.main(["command", row.id, "--gpus", str(gpus), *accept])
            words, err = _words(capsys)
            if gpus > row.gpus and not accept:
                assert code == 2 and words == [] and err.startswith(f"error: {row.id} ran on {row.gpus} GPU")
                assert f"each BatchNorm would see {authors_step // gpus} samples" in err
                continue
            assert code == 0, err
            processes = gpus
            assert (words[0] == "python") == (processes == 1), words[:3]
            if processes > 1:
                assert f"--nproc_per_node={gpus}" in words
            script = words.index(f"{row.task}/train.py")
            s = task.parse(words[script + 1:])
            step = s.batch_size * (1 if task.global_batch else processes * s.accum_steps)
            bn = s.batch_size // (processes * s.accum_steps) if task.global_batch else s.batch_size
            assert step == authors_step == row.global_batch, (row.id, gpus)
            assert s.lr == authors.lr and s.epochs == authors.epochs and s.cos_lr_T == authors.cos_lr_T
            assert (bn == authors_bn) == (gpus <= row.gpus), (row.id, gpus, bn)
            assert s.accum_steps == max(row.gpus // gpus, 1)
            assert err.startswith(f"{row.id}: global batch {authors_step} = ") and err.count("\n") == 1


def test_a_gpu_count_that_cannot_keep_the_recipe_is_one_sentence(capsys):
    assert reproduce.main(["command", "imagenet_sew_resnet18", "--gpus", "3"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: imagenet_sew_resnet18 ran on 8 GPUs with a global batch of 512 and 64 samples per "
                   "BatchNorm; 3 processes cannot keep both (gradients accumulate over a whole number of "
                   "micro-batches): use 1, 2, 4 or 8 processes.\n")
    assert reproduce.main(["command", "imagenet_sew_resnet18", "--nodes", "2"]) == 2  # no SLURM here
    assert "not in a SLURM allocation" in capsys.readouterr().err
    assert reproduce.main(["command", "cifar10dvs_T4", "--nodes", "3"]) == 2  # 2 GPUs over 3 nodes
    assert "do not share evenly" in capsys.readouterr().err


def test_ended_tells_a_stop_in_this_job_from_a_finish_a_crash_and_an_old_stop(tmp_path, capsys):
    import time

    row = {r.id: r for r in ROWS}["cifar10_psn"]
    folder = tmp_path / "cifar10" / "cifar10_psn"
    folder.mkdir(parents=True)
    summary = folder / "summary.json"

    def state(record, age=0.0):
        if record is None:
            summary.unlink(missing_ok=True)
        else:
            summary.write_text(record if isinstance(record, str) else json.dumps(record))
            os.utime(summary, (time.time() - age, time.time() - age))
        assert reproduce.main(["ended", row.id, "--runs", str(tmp_path), "--since", str(time.time() - 60)]) == 0
        return capsys.readouterr().out.strip()

    assert state({"epochs_done": 3, "epochs": 8, "stopped": "SIGUSR1"}) == "stopped"
    assert state({"epochs_done": 3, "epochs": 8, "stopped": "SIGUSR1"}, age=3600) == "failed"  # an earlier job's
    assert state({"epochs_done": 8, "epochs": 8}) == "finished"
    assert state({"epochs_done": 3}) == "failed"  # neither stopped nor done (the row's 1024 epochs)
    assert state({"epochs_done": 1024}) == "finished"  # from before summaries named their epochs
    assert state(None) == "failed"
    for damaged in ('{"epochs_done": true, "epochs": 8, "stopped": 1}', "[1]", "{", '{"epochs_done": 1e400}'):
        assert state(damaged) == "failed"
