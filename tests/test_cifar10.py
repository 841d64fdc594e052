"""cifar10/train.py end to end on the digits dataset, and the released-weights fixture in float64."""
import json
import shlex
import signal
import subprocess
import sys

import pytest
import torch

from cifar10.models import CIFAR10Net
from common.weights import load_model_weights
from conftest import FIXTURES, QUICK, ROOT, last_json, manifest, read_scalars, run_script, script_env

SCRIPT = "cifar10/train.py"
TAGS = {"train/loss", "train/acc1", "test/loss", "test/acc1", "test/acc5", "lr", "train/images_per_s",
        "train/epoch_time_s"}
TIMING = {"train/images_per_s", "train/epoch_time_s"}


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_go")
    result = run_script(SCRIPT, *QUICK, "--epochs", 2, "--output-dir", out, "--run-name", "run")
    return out / "run", result


def test_released_cifar10_checkpoint_gives_the_original_outputs_in_float64():
    model = CIFAR10Net(channels=32, T=4)
    load_model_weights(model, FIXTURES / "cifar10_psn_c32_T4.pth")
    io = torch.load(FIXTURES / "cifar10_psn_c32_T4.io.pt")
    model = model.double().eval()
    with torch.no_grad():
        y = model(io["x"])
    assert y.shape == io["y"].shape == (8, 10)
    assert (y - io["y"]).abs().max() < 1e-9


def test_paper_model_has_the_released_keys_and_shapes():
    rows = manifest("cifar10_psn_c256_T4.tsv")
    ours = CIFAR10Net(channels=256, T=4).state_dict()
    assert len(rows) == len(ours)
    for key, expected, _ in rows:
        if key.split(".")[0] == "conv" or key.startswith("fc.2."):
            key = key.replace(".fc.", ".")  # the original PSN held an nn.Linear named fc
        if key.endswith(".bias") and len(expected) == 1 and ours[key].dim() == 2:
            expected = (expected[0], 1)  # the PSN bias is [T, 1] in SpikingJelly's layout
        assert tuple(ours[key].shape) == expected, key


def test_two_epoch_run_writes_args_events_checkpoints_and_json(two_epoch_run):
    run_dir, result = two_epoch_run
    record = last_json(result.stdout)
    assert record["run_dir"] == str(run_dir)
    assert record["epochs_done"] == 2
    assert 0 <= record["last_test_acc1"] <= record["best_test_acc1"] <= 100
    assert (run_dir / "args.txt").read_text().splitlines()[1].endswith("--run-name run")
    assert (run_dir / "checkpoint_latest.pth").is_file() and (run_dir / "checkpoint_max.pth").is_file()
    scalars = read_scalars(run_dir)
    assert TAGS <= set(scalars)
    for tag in TAGS:
        assert [step for step, _ in scalars[tag]] == [1, 2], tag  # epochs numbered from 1
    assert scalars["test/acc1"][-1][1] == pytest.approx(record["last_test_acc1"], abs=1e-4)
    assert scalars["lr"][0][1] == pytest.approx(0.1)
    assert scalars["lr"][1][1] == pytest.approx(0.05)  # cosine over 2 epochs, stepped per epoch
    ckpt = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "rng", "best_acc1", "step"}
    assert ckpt["step"] == 0 and ckpt["epoch_sums"] is None  # an epoch's end


def _assert_same_weights_and_momenta(run_a, run_b):
    """The two runs' last checkpoints hold the same weights and SGD momenta, bit for bit; returns both."""
    a = torch.load(run_a / "checkpoint_latest.pth", weights_only=True)
    b = torch.load(run_b / "checkpoint_latest.pth", weights_only=True)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][pid]["momentum_buffer"])
    return a, b


def test_stopped_and_resumed_run_is_bit_identical_to_one_go(two_epoch_run, tmp_path):
    one_go, _ = two_epoch_run
    first = run_script(SCRIPT, *QUICK, "--epochs", 2, "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "run")
    assert last_json(first.stdout)["epochs_done"] == 1
    split = tmp_path / "run"
    second = run_script(SCRIPT, *QUICK, "--epochs", 2, "--resume", split / "checkpoint_latest.pth")
    assert last_json(second.stdout)["epochs_done"] == 2

    a, b = _assert_same_weights_and_momenta(one_go, split)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]  # the learning rate among them

    sa, sb = read_scalars(one_go), read_scalars(split)
    for tag in TAGS - TIMING:
        assert sa[tag] == sb[tag], tag
    assert len(list(split.glob("events.out.tfevents.*"))) == 2

    # Resuming a finished run only reports it.
    again = run_script(SCRIPT, *QUICK, "--epochs", 2, "--resume", split / "checkpoint_latest.pth")
    assert last_json(again.stdout) == last_json(second.stdout)


def test_test_only_evaluates_a_checkpoint(two_epoch_run):
    run_dir, result = two_epoch_run
    out = run_script(SCRIPT, *QUICK, "--test-only", "--resume", run_dir / "checkpoint_latest.pth")
    record = last_json(out.stdout)
    assert record["samples"] == 360
    assert set(record) == {"test_acc1", "test_acc5", "test_loss", "samples", "provenance"}
    assert record["test_acc1"] == pytest.approx(last_json(result.stdout)["last_test_acc1"], abs=1e-9)
    assert record["test_acc5"] >= record["test_acc1"]


def test_original_checkpoint_format_loads_with_resume_and_test_only(tmp_path):
    # The fixture is a finished 1024-epoch run of the original script (net layout, channels 32).
    out = run_script(SCRIPT, *QUICK[:2], "--channels", 32, "--workers", 0, "--device", "cpu", "--test-only",
                     "--resume", FIXTURES / "cifar10_psn_c32_T4.pth")
    assert last_json(out.stdout)["samples"] == 360
    done = run_script(SCRIPT, *QUICK[:2], "--channels", 32, "--workers", 0, "--device", "cpu",
                      "--output-dir", tmp_path, "--resume", FIXTURES / "cifar10_psn_c32_T4.pth")
    record = last_json(done.stdout)
    assert record["epochs_done"] == 1024 and record["best_test_acc1"] == pytest.approx(95.32)
    assert list(FIXTURES.glob("checkpoint_*.pth")) == []  # nothing written beside the user's file


def test_torchrun_two_processes_match_single_process_evaluation(tmp_path, torchrun):
    # A setting that learns within one epoch, so that BatchNorm statistics and spikes matter.
    learns = ["-b", 16, "--opt", "adamw", "--lr", 0.003, "--label-smoothing", 0]
    out = run_script(SCRIPT, *QUICK, *learns, "--epochs", 1, "--output-dir", tmp_path, "--run-name", "ddp",
                     launcher=torchrun + ["--standalone", "--nproc_per_node=2"])
    record = last_json(out.stdout)
    assert record["epochs_done"] == 1 and record["last_test_acc1"] > 25
    single = last_json(run_script(SCRIPT, *QUICK, "--test-only", "--resume",
                                  tmp_path / "ddp" / "checkpoint_latest.pth").stdout)
    scalars = read_scalars(tmp_path / "ddp")
    assert single["test_acc1"] == pytest.approx(record["last_test_acc1"], abs=1e-9)
    assert single["test_acc1"] == pytest.approx(scalars["test/acc1"][-1][1], abs=1e-4)
    assert single["test_loss"] == pytest.approx(scalars["test/loss"][-1][1], rel=1e-5)
    assert single["test_acc5"] == pytest.approx(scalars["test/acc5"][-1][1], abs=1e-4)


def _fails_cleanly(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_dataset_says_what_to_do(tmp_path):
    result = run_script(SCRIPT, "--data-dir", tmp_path / "nowhere", "--device", "cpu", "--output-dir",
                        tmp_path / "runs", check=False)
    _fails_cleanly(result, "CIFAR10 was not found", "--download")
    assert not (tmp_path / "runs").exists()


def test_occupied_run_directory_is_refused_and_left_alone(two_epoch_run):
    run_dir, finished = two_epoch_run
    before = (run_dir / "checkpoint_latest.pth").read_bytes()
    result = run_script(SCRIPT, *QUICK, "--epochs", 3, "--output-dir", run_dir.parent, "--run-name", "run",
                        check=False)
    _fails_cleanly(result, "already holds", "--resume")
    assert (run_dir / "checkpoint_latest.pth").read_bytes() == before
    # The very command of the finished run, again: its summary, nothing trained or written.
    again = run_script(SCRIPT, *QUICK, "--epochs", 2, "--output-dir", run_dir.parent, "--run-name", "run")
    assert "holds a finished run of these settings" in again.stdout and "nothing to train" in again.stdout
    summary, earlier = last_json(again.stdout), last_json(finished.stdout)
    assert summary["best_test_acc1"] == earlier["best_test_acc1"] and summary["epochs_done"] == 2
    assert (run_dir / "checkpoint_latest.pth").read_bytes() == before


def test_wrong_architecture_names_the_keys(two_epoch_run, tmp_path):
    run_dir, _ = two_epoch_run
    sd = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)["model"]
    sd["head.weight"] = sd.pop("fc.3.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    result = run_script(SCRIPT, *QUICK, "--test-only", "--resume", tmp_path / "renamed.pth", check=False)
    _fails_cleanly(result, "missing keys: fc.3.weight", "unexpected keys: head.weight")
    torch.save(torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)["model"], tmp_path / "bare.pth")
    result = run_script(SCRIPT, *QUICK[:2], "--channels", 16, "--workers", 0, "--device", "cpu", "--test-only",
                        "--resume", tmp_path / "bare.pth", check=False)
    _fails_cleanly(result, "--channels 16 contradicts", "whose tensors say channels=8")  # bare weights tell
    # Our own checkpoints know their width: a contradicting flag is refused naming both values.
    result = run_script(SCRIPT, *QUICK[:2], "--channels", 16, "--workers", 0, "--device", "cpu", "--test-only",
                        "--resume", run_dir / "checkpoint_latest.pth", check=False)
    _fails_cleanly(result, "--channels 16 contradicts", "channels=8")


def test_truncated_checkpoint_is_refused_and_left_alone(two_epoch_run, tmp_path):
    run_dir, _ = two_epoch_run
    data = (run_dir / "checkpoint_latest.pth").read_bytes()
    broken = tmp_path / "run" / "checkpoint_latest.pth"
    broken.parent.mkdir()
    broken.write_bytes(data[: len(data) // 2])
    result = run_script(SCRIPT, *QUICK, "--epochs", 3, "--resume", broken, check=False)
    _fails_cleanly(result, "not readable", "truncated")
    assert broken.read_bytes() == data[: len(data) // 2]
    assert not list(broken.parent.glob("events*"))


def test_a_first_run_with_fewer_epochs_resumed_to_more_matches_one_go(two_epoch_run, tmp_path):
    one_go, _ = two_epoch_run
    run_script(SCRIPT, *QUICK, "--epochs", 1, "--output-dir", tmp_path, "--run-name", "run")
    run_script(SCRIPT, *QUICK, "--epochs", 2, "--resume", tmp_path / "run" / "checkpoint_latest.pth")
    a = torch.load(one_go / "checkpoint_latest.pth", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint_latest.pth", weights_only=True)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert read_scalars(one_go)["lr"] == read_scalars(tmp_path / "run")["lr"]


def test_results_do_not_depend_on_the_number_of_loader_workers(two_epoch_run, tmp_path):
    one_go, _ = two_epoch_run  # --workers 0
    quick_with_workers = [a if a != "0" else "2" for a in QUICK]  # QUICK's only "0" is --workers
    run_script(SCRIPT, *quick_with_workers, "--epochs", 2, "--output-dir", tmp_path, "--run-name", "run")
    a = torch.load(one_go / "checkpoint_latest.pth", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint_latest.pth", weights_only=True)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def _stop_at(args, signum, epoch, step):
    """Run the script (args, or a whole command), send `signum` once its progress line says `epoch`/`step`,
    and wait for it to end. Returns (exit status, stdout, stderr, the resume command it printed)."""
    cmd = args if args[0] == sys.executable else [sys.executable, str(ROOT / SCRIPT), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"epoch {epoch}/") and f" step {step}/" in line:
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    resume = err.split("Resume with:\n", 1)[1].splitlines()[0] if "Resume with:\n" in err else None
    return proc.returncode, "".join(lines) + out, err, shlex.split(resume) if resume else None


def test_signals_stop_cleanly_and_a_mid_epoch_checkpoint_resumes_bit_identically(two_epoch_run, tmp_path):
    """SIGUSR1 in epoch 1, Ctrl-C in epoch 2, SIGTERM later in epoch 2: each stop exits 128 + signal without a
    traceback and prints the command that resumes; the run ends exactly as the one that never stopped."""
    one_go, _ = two_epoch_run
    run = tmp_path / "run"
    args = [*QUICK, "--epochs", 2, "--print-freq", 1, "--output-dir", tmp_path, "--run-name", "run"]

    code, _, err, again = _stop_at(args, signal.SIGUSR1, 1, 10)
    assert code == 128 + signal.SIGUSR1 and "Traceback" not in err, err
    assert "SIGUSR1: stopped in epoch 1 after step" in err and "--resume" in again
    mid = torch.load(run / "checkpoint_latest.pth", weights_only=True)
    assert mid["epoch"] == -1 and 10 <= mid["step"] < 44 and mid["epoch_sums"][2] == 32 * mid["step"]
    assert not (run / "checkpoint_max.pth").exists()  # no epoch was evaluated yet
    assert json.loads((run / "summary.json").read_text())["stopped"] == "SIGUSR1"

    code, out, err, again = _stop_at(again, signal.SIGINT, 2, 5)
    assert f"(epoch 1 of 2, step {mid['step'] + 1})" in out  # continued where it stopped
    assert code == 130 and "Traceback" not in err and "SIGINT: stopped in epoch 2" in err, err
    assert torch.load(run / "checkpoint_latest.pth", weights_only=True)["epoch"] == 0  # epoch 1's, intact

    code, _, err, again = _stop_at(again, signal.SIGTERM, 2, 20)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    finished = subprocess_run(again)
    assert last_json(finished.stdout)["epochs_done"] == 2

    _assert_same_weights_and_momenta(one_go, run)
    sa, sb = read_scalars(one_go), read_scalars(run)
    for tag in TAGS - TIMING:  # train/loss and train/acc1 included: the running sums went on exactly
        assert sa[tag] == sb[tag], tag


def subprocess_run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def test_an_original_checkpoint_evaluates_without_model_flags():
    """The released layout says channels = 32 and T = 4 through its tensors; an explicit contradiction is refused."""
    flags = ["--dataset", "digits", "--workers", "0", "--device", "cpu", "--test-only", "--resume",
             FIXTURES / "cifar10_psn_c32_T4.pth"]
    assert last_json(run_script(SCRIPT, *flags).stdout)["samples"] == 360
    refused = run_script(SCRIPT, *flags, "--channels", 8, check=False)
    assert refused.returncode == 2 and "--channels 8 contradicts" in refused.stderr and "channels=32" in refused.stderr
