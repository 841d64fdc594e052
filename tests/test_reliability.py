"""Hostile conditions, third pass: a resume racing a stopping run, a corpus of damaged checkpoints, flag
values at the edges, weights that go non-finite, a damaged latest checkpoint, forks, full disks, odd run
files, bursts of Ctrl-C, flipped bits, and fuzzed logs for the table tool."""
import dataclasses
import errno
import io
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cifar10 import train as cifar10
from common import runlog
from common.checkpoint import content_digest, read_checkpoint
from common.engine import TrainingDiverged
from common.errors import UserError
from common.run_dir import RunLock
from common.start import open_run
from common.distributed import DistEnv
from common.run import run
from conftest import QUICK, ROOT, run_script, script_env

SCRIPT = "cifar10/train.py"
FAST = [*QUICK, "-b", "700"]  # two steps an epoch on digits: a resume reaches the optimizer in seconds


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A real run of ours: 1 epoch of 2 done, SGD momenta in its checkpoint."""
    out = tmp_path_factory.mktemp("good")
    run(cifar10.TASK, [*FAST, "--epochs", "2", "--stop-after", "1", "--output-dir", str(out), "--run-name", "r"])
    return out / "r" / "checkpoint_latest.pth"


def _one_sentence(error: BaseException) -> None:
    assert isinstance(error, UserError), repr(error)
    assert "\n" not in str(error).strip() and "Traceback" not in str(error)


# --- 1. races ----------------------------------------------------------------------------------

def test_the_lock_is_taken_before_the_checkpoint_is_read(good_run, tmp_path, monkeypatch):
    """Deterministically the race of a resume started while the run was stopping: the run writes a later
    checkpoint and leaves just before the lock is taken. The resume continues from that later one."""
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(good_run.parent, run_dir)
    later = read_checkpoint(run_dir / runlog.LATEST).to_dict()
    later.update(epoch=0, step=1, epoch_sums=[1.0, 1.0, 700.0, 0.5], step_samples=700)
    later["digest"] = content_digest(later)
    claim = RunLock.claim

    def run_a_saves_and_leaves_first(lock):
        torch.save(later, run_dir / runlog.LATEST)  # run A's mid-epoch checkpoint, written as it stopped
        return claim(lock)

    monkeypatch.setattr(RunLock, "claim", run_a_saves_and_leaves_first)
    for resume in ("auto", str(run_dir / runlog.LATEST)):
        torch.save(read_checkpoint(good_run).to_dict(), run_dir / runlog.LATEST)  # end of epoch 1 again
        cli = cifar10.TASK.parse([*FAST, "--epochs", "2", "--output-dir", str(tmp_path), "--run-name", "r",
                                  "--resume", resume])
        start = open_run(cifar10.TASK, cli, DistEnv())
        start.lock.release()
        assert start.ckpt.state.position == (1, 1), resume  # epoch 2, after its step 1: not the stale end of epoch 1


def test_a_resume_racing_a_stopping_run_never_rewinds_it(tmp_path):
    """Two real processes: run A is stopped by SIGUSR1 while B starts with --resume auto; B is refused (A still
    holds the directory) or continues from A's mid-epoch checkpoint; the run's position never goes back."""
    flags = [*map(str, QUICK), "--epochs", "3", "--print-freq", "1", "--output-dir", str(tmp_path), "--run-name", "r"]
    for trial in range(2):
        a = subprocess.Popen([sys.executable, str(ROOT / SCRIPT), *flags, "--resume", "auto"], cwd=ROOT,
                             env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in a.stdout:
            if " step 5/" in line:
                break
        b = subprocess.Popen([sys.executable, str(ROOT / SCRIPT), *flags, "--resume", "auto", "--stop-after", "1"],
                             cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5 + trial)  # B is importing torch; A stops now, saves and leaves
        a.send_signal(signal.SIGUSR1)
        _, a_err = a.communicate(timeout=120)
        b_out, b_err = b.communicate(timeout=300)
        stopped = read_checkpoint_position_from(a_err)
        assert a.returncode == 138, a_err
        if b.returncode == 2:
            assert "is in use by process" in b_err, b_err
        else:
            assert b.returncode == 0, b_err
            begun = next(line for line in b_out.splitlines() if line.startswith("run directory:"))
            assert f"(epoch {stopped[0] + 1} of 3, step {stopped[1] + 1})" in begun, (begun, stopped)
        latest = read_checkpoint(tmp_path / "r" / runlog.LATEST)
        assert latest.state.position >= stopped


def read_checkpoint_position_from(stderr: str) -> tuple[int, int]:
    """(epoch 0-based, step) from 'SIGUSR1: stopped in epoch E after step S; ...'."""
    words = stderr.split("stopped in epoch ")[1].split()
    return int(words[0]) - 1, int(words[3].rstrip(";"))


# --- 2. a corpus of damaged checkpoints --------------------------------------------------------

def _crafted(good: dict) -> list[tuple[str, dict]]:
    """Every field given wrong types and out-of-range values; the digest recomputed, as a careful forger would."""
    sparse = torch.zeros(3, 3).to_sparse()
    model = good["model"]
    first = next(iter(model))
    cases = []

    def case(name, **changes):
        cases.append((name, {**good, **changes}))

    def arg(name, value):
        case(f"args.{name}={str(value)[:12]}", args={**good["args"], name: value})

    for field in ("epoch", "step", "best_acc1", "epoch_sums", "step_samples", "args", "task_state", "rng",
                  "optimizer", "scaler", "model_ema", "model", "task", "model_settings", "provenance"):
        for value in ("x", [1, 2], 10**30, float("nan"), {"a": [1]}, -1):
            case(f"{field}={str(value)[:10]}", **{field: value})
    for name, value in (("T", 10**9), ("channels", 10**9), ("amp_dtype", "bogus"), ("seed", 2**70), ("seed", -1),
                        ("lr", 1e308), ("lr", float("inf")), ("opt", "rmsprop"), ("epochs", 0), ("batch_size", 0),
                        ("momentum", 5.0), ("neuron", 5), ("neuron", "lif"), ("print_freq", 0), ("cos_lr_T", -3),
                        ("warmup_epochs", 10**7), ("model_ema_decay", 2.0), ("label_smoothing", 1.5)):
        arg(name, value)
    case("model_settings.channels huge", model_settings={"channels": 10**9})
    case("a sparse weight", model={**model, first: sparse})
    case("a NaN weight", model={**model, first: torch.full_like(model[first], math.nan)})
    case("an infinite BatchNorm variance", model={**model, "conv.1.running_var": torch.full((8,), math.inf)})
    case("a weight of the wrong shape", model={**model, first: torch.zeros(2, 2)})
    optimizer = good["optimizer"]
    state0 = optimizer["state"][0]
    for name, state in (("momentum of the wrong shape", {0: {"momentum_buffer": torch.zeros(3)}}),
                        ("state a string", {0: "x"}), ("state for parameter 999", {999: state0}),
                        ("momentum NaN", {0: {"momentum_buffer": torch.full_like(state0["momentum_buffer"], math.nan)}}),
                        ("Adam's state", {0: {"step": torch.tensor(1.0), "exp_avg": state0["momentum_buffer"]}})):
        case(f"optimizer {name}", optimizer={**optimizer, "state": {**optimizer["state"], **state}})
    group = optimizer["param_groups"][0]
    for key, value in (("lr", "fast"), ("momentum", [0.9]), ("nesterov", 3.5), ("params", [0, 10**8]),
                       ("betas", "x"), ("params", "all")):
        case(f"optimizer group {key}={value}", optimizer={**optimizer, "param_groups": [{**group, key: value}]})
    adam_group = {**group, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
    adam_group.pop("momentum"), adam_group.pop("nesterov"), adam_group.pop("dampening")
    case("an AdamW state", optimizer={"state": {}, "param_groups": [adam_group]})
    rng = good["rng"]
    case("numpy key huge", rng={**rng, "numpy": {**rng["numpy"], "key": torch.full((624,), 2**40)}})
    case("numpy has_gauss huge", rng={**rng, "numpy": {**rng["numpy"], "has_gauss": 2**70}})
    case("torch state short", rng={**rng, "torch": rng["torch"][:100]})
    case("python state short", rng={**rng, "python": [3, [1] * 10, None]})
    case("scaler scale -1", scaler={"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                    "growth_interval": 2000, "_growth_tracker": 0})
    for name, raw in cases:
        raw.pop("digest", None)
        raw["digest"] = content_digest(raw)
    return cases


def _damaged_bytes(data: bytes) -> list[tuple[str, bytes]]:
    cases = [("empty", b""), ("a text file", b"hello, this is not a checkpoint\n" * 20)]
    for cut in (1, 10, 100, 1000, len(data) // 4, len(data) // 2, len(data) - 100, len(data) - 10, len(data) - 1):
        cases.append((f"cut at {cut}", data[:cut]))
    for at in (0, 3, 30, 60, 200, 500, len(data) // 3, len(data) // 2, 2 * len(data) // 3, len(data) - 200,
               len(data) - 30, len(data) - 5):
        flipped = bytearray(data)
        flipped[at] ^= 0x41
        cases.append((f"byte {at} flipped", bytes(flipped)))
    return cases


def _corpus(good_path: Path, folder: Path) -> list[tuple[str, Path]]:
    good = torch.load(good_path, weights_only=True)
    files = []
    for name, raw in _crafted(good):
        path = folder / f"crafted_{len(files)}.pth"
        torch.save(raw, path)
        files.append((name, path))
    for name, data in _damaged_bytes(good_path.read_bytes()):
        path = folder / f"bytes_{len(files)}.pth"
        path.write_bytes(data)
        files.append((name, path))
    legacy = io.BytesIO()
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    for name, data in _damaged_bytes(legacy.getvalue())[2::3]:
        path = folder / f"legacy_{len(files)}.pth"
        path.write_bytes(data)
        files.append((f"legacy file, {name}", path))
    return files


def _must_fail_in_one_sentence_or_load_as_the_original(name, call):
    try:
        call()
    except UserError as e:
        _one_sentence(e)
    except BaseException as e:  # noqa: BLE001
        pytest.fail(f"{name}: {type(e).__name__}: {e}")


def test_every_damaged_checkpoint_is_one_sentence_when_read(good_run, tmp_path):
    good = read_checkpoint(good_run)
    for name, path in _corpus(good_run, tmp_path):
        try:
            ckpt = read_checkpoint(path)
        except UserError as e:
            _one_sentence(e)
            continue
        except BaseException as e:  # noqa: BLE001
            pytest.fail(f"{name}: {type(e).__name__}: {e}")
        if name.startswith("byte") or name.startswith("legacy"):  # a flip in bytes nobody reads: the same checkpoint
            assert content_digest(ckpt.to_dict()) == content_digest(good.to_dict()), name


# The variants that pass read_checkpoint but must be refused later (settings, shapes, optimizer) run through
# --resume and --test-only in-process; the rest of the corpus with -m slow.
LATE = ("args.", "model_settings", "a weight of the wrong shape", "optimizer", "an AdamW state", "numpy")


# --resume's pass trains what loads (90 s): with the whole corpus under -m slow; the default suite keeps 20 minutes.
@pytest.mark.parametrize("mode", [pytest.param("--resume", marks=pytest.mark.slow), "--test-only"])
def test_damaged_checkpoints_through_resume_and_test_only(good_run, tmp_path, mode):
    _through_the_script(good_run, tmp_path, mode, lambda name: name.startswith(LATE))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--resume", "--test-only"])
def test_the_whole_damaged_corpus_through_resume_and_test_only(good_run, tmp_path, mode):
    _through_the_script(good_run, tmp_path, mode, lambda name: True)


def _through_the_script(good_run, tmp_path, mode, chosen):
    (tmp_path / "corpus").mkdir()
    for n, (name, path) in enumerate(_corpus(good_run, tmp_path / "corpus")):
        if not chosen(name):
            continue
        argv = [*FAST, "--epochs", "2", "--output-dir", str(tmp_path / f"out{n}"), "--resume", str(path)]
        if mode == "--test-only":
            argv.append("--test-only")
        _must_fail_in_one_sentence_or_load_as_the_original(name, lambda: run(cifar10.TASK, argv))


# --- 4. flag values at the edges; 5. weights that go non-finite --------------------------------

def test_ordinary_large_seeds_train_and_values_out_of_range_are_refused(tmp_path):
    from common.data import sample_seed

    record = run(cifar10.TASK, [*FAST, "--epochs", "1", "--seed", "20231130", "--output-dir", str(tmp_path)])
    assert record["epochs_done"] == 1
    torch.manual_seed(sample_seed(2**63 - 1, 10**6, 10**9))  # the largest seed, epoch and index: still a seed
    assert sample_seed(2023, 5, 7) == (2023 * 1_000_003 + 5) * 10_000_019 + 7  # as before, where it fitted
    for flags in (["--lr", "1e38"], ["--lr", "1e30"], ["--seed", str(2**64)], ["-T", "1000000000"],
                  ["--channels", "1000000000"], ["--epochs", "1000000000"], ["--momentum", "1.5"],
                  ["--weight-decay", "1e9"], ["--workers", "100000"], ["--clip-grad", "inf"]):
        with pytest.raises(UserError) as caught:
            cifar10.TASK.parse([*FAST, *flags])
        _one_sentence(caught.value)
        assert flags[0] in str(caught.value)


def test_weights_that_become_non_finite_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    argv = [*FAST, "--epochs", "3", "--output-dir", str(tmp_path), "--run-name", "r", "--print-freq", "1"]
    run(cifar10.TASK, [*argv, "--stop-after", "1"])
    latest = tmp_path / "r" / runlog.LATEST
    good = latest.read_bytes()
    healthy = cifar10.TASK.train_loss

    def infinite_gradients(settings):
        def loss(out, target):  # the loss stays finite, the gradients it sends back do not
            out.register_hook(lambda grad: grad * math.inf)
            return healthy(settings)(out, target)
        return loss

    exploding = dataclasses.replace(cifar10.TASK, train_loss=infinite_gradients)
    with pytest.raises(TrainingDiverged, match="weights or BatchNorm statistics became NaN or infinite in epoch 2"):
        run(exploding, [*argv, "--resume", "auto"])
    assert latest.read_bytes() == good and read_checkpoint(latest).state.position == (1, 0)


# --- 6. a damaged checkpoint_latest; 7. forks; 8. full disks; 9. odd run files -----------------

@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    run(cifar10.TASK, [*FAST, "--epochs", "3", "--stop-after", "2", "--output-dir", str(folder), "--run-name", "r"])
    return folder / "r"


def _two_epoch_run(two_epochs: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(two_epochs, folder / "r")
    return folder / "r"


def test_a_damaged_latest_gives_way_to_the_best(two_epochs, tmp_path, capsys):
    run_dir = _two_epoch_run(two_epochs, tmp_path)
    latest, best = run_dir / runlog.LATEST, run_dir / runlog.BEST
    best_position = read_checkpoint(best).state.position
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(UserError) as caught:  # asked for by name: how to go on
        run(cifar10.TASK, [*FAST, "--epochs", "3", "--resume", str(latest)])
    _one_sentence(caught.value)
    assert f"--resume {best}" in str(caught.value) and "--run-name" in str(caught.value)
    with pytest.raises(UserError, match="already holds"):  # a new run there: refused, pointing at --resume auto
        run(cifar10.TASK, [*FAST, "--epochs", "3", "--output-dir", str(tmp_path), "--run-name", "r"])
    capsys.readouterr()
    record = run(cifar10.TASK, [*FAST, "--epochs", "3", "--output-dir", str(tmp_path), "--run-name", "r",
                                "--resume", "auto"])
    err = capsys.readouterr().err
    assert "corrupted" in err and f"Continuing from {best.name}" in err
    assert (run_dir / "checkpoint_latest.pth.damaged").read_bytes() == bytes(data)  # kept, never deleted
    assert record["epochs_done"] == 3 and best_position[0] <= 2


def test_a_fork_keeps_its_own_best_and_writes_its_own_best_checkpoint(two_epochs, tmp_path):
    run_dir = _two_epoch_run(two_epochs, tmp_path)
    fork = run(cifar10.TASK, [*FAST, "--epochs", "3", "--lr", "1e-9", "--resume", str(run_dir / runlog.BEST),
                              "--output-dir", str(tmp_path), "--run-name", "fork"])
    assert (tmp_path / "fork" / runlog.BEST).is_file()
    assert fork["best_test_acc1"] == read_checkpoint(tmp_path / "fork" / runlog.BEST).state.best_acc1


class _FullDisk:
    """A file whose disk fills after `room` bytes: writes then fail as the kernel fails them (ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_names_the_checkpoint_that_is_there(tmp_path, monkeypatch):
    """The disk fills below the code under test (the files it opens fail with ENOSPC, as a full file system's
    do; no root or mount needed): the first epoch's checkpoints fit, the second's latest does not. The run
    ends in one sentence naming the checkpoint that is there, the previous latest is intact, no temporary
    file is left."""
    real_fdopen = os.fdopen
    epochs_saved = []

    def filling(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{runlog.LATEST}."):
            epochs_saved.append(name)
            return _FullDisk(f, 1 << 40 if len(epochs_saved) == 1 else 4096)
        return f

    monkeypatch.setattr(os, "fdopen", filling)
    with pytest.raises(UserError) as caught:
        run(cifar10.TASK, [*FAST, "--epochs", "2", "--output-dir", str(tmp_path), "--run-name", "r"])
    message = str(caught.value)
    assert "is full (No space left on device)" in message and "previous version is kept" in message, message
    assert f"--resume {tmp_path / 'r' / runlog.BEST}" in message or f"--resume {tmp_path / 'r' / runlog.LATEST}" \
        in message
    assert "no epoch had finished" not in message
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "r" / runlog.LATEST).state.epoch == 1  # epoch 1's, whole
    assert not list((tmp_path / "r").glob(".checkpoint_*.tmp")) and len(epochs_saved) == 2


@pytest.mark.parametrize("name", ["args.txt", "metrics.jsonl", "summary.json", "checkpoint_latest.pth"])
def test_a_run_file_that_is_a_folder_is_refused_before_training(tmp_path, name):
    (tmp_path / "r" / name).mkdir(parents=True)
    with pytest.raises(UserError) as caught:
        run(cifar10.TASK, [*FAST, "--epochs", "1", "--output-dir", str(tmp_path), "--run-name", "r"])
    _one_sentence(caught.value)
    assert "is a folder" in str(caught.value) and name in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [name]


# --- 10. bursts of Ctrl-C; 12. flipped bits ----------------------------------------------------

def test_bursts_of_ctrl_c_end_without_a_traceback(tmp_path):
    for burst, wait_for in enumerate((" step 2/", " step 40/")):
        proc = subprocess.Popen([sys.executable, str(ROOT / SCRIPT), *map(str, QUICK), "--epochs", "2",
                                 "--print-freq", "1", "--output-dir", str(tmp_path), "--run-name", f"r{burst}"],
                                cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if wait_for in line:
                break
        for _ in range(30):
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err and "Exception ignored" not in err, err


def test_a_flipped_bit_in_a_weight_is_caught_by_the_digest(good_run, tmp_path):
    data = bytearray(good_run.read_bytes())
    with zipfile.ZipFile(good_run) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 1000)
    name_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0x01  # one bit of one weight
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupted: its contents no longer match the digest") as caught:
        read_checkpoint(tmp_path / "flipped.pth")
    _one_sentence(caught.value)
    from conftest import FIXTURES

    assert read_checkpoint(FIXTURES / "cifar10_psn_c32_T4.pth").layout == "net"  # the original layouts: as before


# --- 11. fuzzed logs for the table tool ---------------------------------------------------------

def _paper_run(folder: Path) -> Path:
    source = ROOT / "paper" / "logs" / "sequential_cifar" / "scf10" / "lif_e256_b128_sgd_lr0.1_c128_amp"
    folder.mkdir(parents=True)
    events = sorted(source.glob("events.out.tfevents*"))[0]
    (folder / events.name).write_bytes(events.read_bytes())
    return folder / events.name


def test_damaged_event_files_are_reported_never_silently_wrong(tmp_path, capsys):
    from common import run_logs

    intact = _paper_run(tmp_path / "intact" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    data = intact.read_bytes()
    truth = max(v for _, v in run_logs.read_scalars(intact.parent)["test_acc"])
    variants = [(f"cut{n}", data[:cut]) for n, cut in enumerate((5, 13, 100, len(data) // 2, len(data) - 3))]
    for n, at in enumerate((9, 20, len(data) // 3, len(data) // 2, len(data) - 2)):
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        variants.append((f"flip{n}", bytes(flipped)))
    for name, content in variants:
        folder = tmp_path / name / "lif_e256_b128_sgd_lr0.1_c128_amp"
        folder.mkdir(parents=True)
        (folder / intact.name).write_bytes(content)
    capsys.readouterr()
    runs = {Path(r.path).parent.name: r for r in run_logs.find_runs([tmp_path])}
    err = capsys.readouterr().err
    assert runs["intact"].best == pytest.approx(100 * truth)
    for name, _ in variants:
        assert f"{tmp_path / name}" in err, name  # every damaged copy is named on stderr
        if name in runs:  # what is read is the intact prefix: never more than the truth
            assert runs[name].best <= runs["intact"].best and len(runs[name].curve) < len(runs["intact"].curve)


def test_hostile_args_and_a_fifo_end_in_warnings_not_tracebacks_or_hangs(tmp_path):
    for n, text in enumerate(['{"task": "sequential_cifar", "T": ' + "9" * 5000 + "}",
                              '{"task": "cifar10", "T": "\u00b2"}', "[" * 100000 + "]" * 100000,
                              "Namespace(T=" + "-" * 100000 + "1, neu='lif')", "Namespace(T=²³, neu='lif')",
                              '{"task": "sequential_cifar", "order": "' + "7" * 5000 + '", "neuron": "masked_psn"}']):
        folder = tmp_path / f"a{n}"
        _paper_run(folder / "lif_e256_b128_sgd_lr0.1_c128_amp")
        (folder / "lif_e256_b128_sgd_lr0.1_c128_amp" / "args.txt").write_text(text)
    fifo_run = tmp_path / "fifo" / "lif_e256_b128_sgd_lr0.1_c128_amp"
    fifo_run.mkdir(parents=True)
    os.mkfifo(fifo_run / "events.out.tfevents.1.fifo")
    os.mkfifo(tmp_path / "a0" / "lif_e256_b128_sgd_lr0.1_c128_amp" / "events.out.tfevents.2.fifo")
    _paper_run(tmp_path / "good" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    out = run_script("scripts/paper_tables.py", tmp_path, check=False, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "| LIF |" in out.stdout and "not a regular file" in out.stderr
    assert out.stderr.count("warning: skipped") >= 5, out.stderr
