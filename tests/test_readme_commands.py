"""Every command written in a README runs: each `python ...` / `torchrun ...` of every Markdown file is parsed
by its script, and run on tiny local data (digits, a fake CIFAR10-DVS and ImageFolder tree, checkpoints
built from the released models' manifests, a local figshare); by default one of each kind runs, with -m slow
all of them. A command whose script has no rule here fails the suite: add its rule."""
import argparse
import importlib
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, ROOT, manifest, script_env

DOCS = sorted(p for p in ROOT.rglob("*.md") if "fixtures" not in p.parts and ".git" not in p.parts)
TASKS = ("cifar10", "sequential_cifar", "cifar10dvs", "imagenet")
SHELL_ENDS = {"&&", "||", ";", "|", ">", ">>"}


def commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every python / torchrun command in the Markdown files, continuation lines joined."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        lines = []
        for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
            if language in ("", "bash", "sh"):
                lines += block.replace("\\\n", " ").splitlines()
        # Inline code in prose is a command when it gives flags (`python scripts/reproduce.py slurm` names a verb).
        lines += [span for span in re.findall(r"`((?:python|torchrun|srun torchrun) [^`]+)`",
                                              re.sub(r"```.*?```", "", text, flags=re.S)) if " -" in span]
        for line in lines:
            line = line.strip()
            for start in ("pip install -r requirements.txt && ", "srun "):
                line = line.removeprefix(start)
            if not line.startswith(("python ", "torchrun ")):
                continue
            words = shlex.split(line, comments=True)
            cut = next((i for i, w in enumerate(words) if w in SHELL_ENDS), len(words))
            words = words[:cut]
            if "..." in words or words[:3] == ["python", "-m", "pytest"] or words[:3] == ["python", "-m", "venv"]:
                continue
            found.append((f"{doc.relative_to(ROOT)}: {line[:90]}", words))
    return found


def script_and_args(words: list[str]) -> tuple[str, list[str]]:
    """The script a command runs and its arguments (torchrun's own options left out)."""
    if words[0] == "torchrun":
        i = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return words[i], words[i + 1:]
    return words[1], words[2:]


COMMANDS = commands()


def test_the_readmes_hold_commands_and_every_script_has_a_rule():
    scripts = {script_and_args(w)[0] for _, w in COMMANDS}
    assert len(COMMANDS) > 40 and {f"{t}/train.py" for t in TASKS} <= scripts
    unknown = scripts - set(RULES)
    assert not unknown, f"README commands of scripts without a rule here: {sorted(unknown)}"


# --- tiny stand-ins for what the commands name ---------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, weights and checkpoints to substitute for the READMEs' placeholders (D, W, FILE, RUN)."""
    import torchvision

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    for c, name in enumerate(classes):
        folder = root / "CIFAR10DVS" / "events_np" / name
        folder.mkdir(parents=True)
        for i in (0, 7, 100, 513):
            n = 2000
            np.savez(folder / f"cifar10_{name}_{i}.npz", t=np.sort(rng.integers(0, 10**6, n)),
                     x=rng.integers(0, 128, n), y=rng.integers(0, 128, n), p=rng.integers(0, 2, n))
    for split, per in (("train", 6), ("val", 3)):
        for c in range(6):
            folder = root / "ImageNet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.JPEG")
    (root / "W").mkdir()
    for depth in (18, 34):
        net = getattr(torchvision.models, f"resnet{depth}")()
        torch.save(net.state_dict(), root / "W" / {18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth"}[depth])
    files = {"cifar10": FIXTURES / "cifar10_psn_c32_T4.pth", "sequential_cifar": FIXTURES / "seqcifar10_sliding_psn_P8_c16.pth"}
    dvs = {k: torch.randn(s) * 0.1 if not d.startswith("int") else torch.zeros(s, dtype=torch.int64)
           for k, s, d in manifest("cifar10dvs_vgg_spsn.tsv")}
    torch.save({"model": dvs, "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 82.3}, root / "dvs.pth")
    inet = {k: (torch.rand(s) + 0.5 if k.endswith("running_var") else torch.randn(s) * 0.05)
            if not d.startswith("int") else torch.zeros(s, dtype=torch.int64)
            for k, s, d in manifest("imagenet_sew_resnet18_T4.tsv")}
    torch.save({"model": inet, "optimizer": {}, "lr_scheduler": {}, "epoch": 319, "max_test_acc1": 67.6,
                "args": argparse.Namespace(model="sew_resnet18")}, root / "inet.pth")
    files.update(cifar10dvs=root / "dvs.pth", imagenet=root / "inet.pth")
    return {"root": root, "files": files}


def _value_after(args: list[str], *flags: str):
    for i, a in enumerate(args[:-1]):
        if a in flags:
            return i
    return None


def training_argv(task: str, args: list[str], world: dict, out: Path) -> list[str]:
    """A README's train.py arguments on tiny data: the placeholders replaced, a step or two per epoch."""
    args = list(args)
    root, files = world["root"], world["files"]
    data = _value_after(args, "--data-dir", "-data-dir", "--data-path")
    resume = _value_after(args, "--resume", "-resume")
    from_file = resume is not None and args[resume + 1] != "auto"
    if task in ("cifar10", "sequential_cifar"):
        if data is not None:
            del args[data:data + 2]
        args += ["--dataset", "digits", "-b", "700", *([] if from_file else ["--channels", "8"])]
    elif data is not None:
        args[data + 1] = str(root / ("CIFAR10DVS" if task == "cifar10dvs" else "ImageNet"))
    else:  # the task's default folder (./data/...): the tiny one instead
        args += ["--data-dir", str(root / ("CIFAR10DVS" if task == "cifar10dvs" else "ImageNet"))]
    if task == "cifar10dvs":
        args += ["-b", "10"]
    if task == "imagenet":
        args += ["-b", "18", "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32",
                 "--clip-grad", "1", "--cache-dir", str(out / "cache")]
        load = _value_after(args, "--load")
        if load is not None:
            args[load + 1] = str(root / "W" / Path(args[load + 1]).name)
    resume = _value_after(args, "--resume", "-resume")
    if from_file:
        args[resume + 1] = str(files[task])
        if task == "cifar10dvs" and _value_after(args, "-T", "--T") is None:
            args += ["-T", "4"]
    return [*args, "--epochs", "1", "--stop-after", "1", "--workers", "0", "--device", "cpu", "--print-freq", "1",
            "--output-dir", str(out / "runs")]


def _train(script: str, args: list[str], world: dict, out: Path, run: bool):
    task = script.split("/")[0]
    module = importlib.import_module(f"{task}.train")
    argv = training_argv(task, args, world, out)
    module.TASK.parse(argv)  # every command: its flags parse
    if run:
        from common.run import run as run_task

        record = run_task(module.TASK, argv)
        if "test_acc1" in record:  # --test-only: the whole tiny test set, scored
            assert record["samples"] > 0 and 0 <= record["test_acc1"] <= 100 and math.isfinite(record["test_loss"])
            return
        if record["epochs_done"] > 1:  # a finished file given to --resume: nothing to train, its summary
            assert record["best_test_acc1"] is None or 0 <= record["best_test_acc1"] <= 100, record
            return
        # Training: the one epoch it was given, and the files say what the final line says.
        run_dir = Path(record["run_dir"])
        assert record["epochs_done"] == 1 and 0 <= record["last_test_acc1"] <= 100, record
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1] and metrics[0]["test/acc1"] == record["last_test_acc1"]
        assert json.loads((run_dir / "summary.json").read_text())["last_test_acc1"] == record["last_test_acc1"]


def _download(script, args, world, out, run: bool):
    from figshare import FakeFigshare
    from scripts import download_checkpoints

    server = FakeFigshare({"cifar10_psn.pth": b"c" * 1000, "sew_resnet18_imagenet.pth": b"i" * 1000})
    try:
        argv = [*args, "--api", server.url, "--dest", str(out / "checkpoints")]
        assert download_checkpoints.main(argv) == 0
    finally:
        server.close()


def _tables(script, args, world, out, run: bool):
    from scripts import paper_tables

    args = [str(ROOT / "paper" / "logs") if a == "paper/logs" else a for a in args]
    args = [str(out) if a == "runs" else str(out / "plots") if a == "plots" else a for a in args]
    assert paper_tables.main(args) == 0


def _reproduce(script, args, world, out, run: bool):
    from scripts import reproduce

    args = [str(out) if a == "runs" else "cifar10dvs_T4" if a == "ID" else a for a in args]
    assert reproduce.main(args) == 0


def _subprocess(script, args, world, out, run: bool):
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=out, env=script_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def _help_only(script, args, world, out, run: bool):
    """Commands that need a GPU or minutes (benchmarks, every kernel compiled): their flags parse."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    parser = module.parser() if hasattr(module, "parser") else None
    if parser is not None:
        parser.parse_args(args)
    else:
        result = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, env=script_env(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr


RULES = {**{f"{t}/train.py": _train for t in TASKS}, "scripts/download_checkpoints.py": _download,
         "scripts/paper_tables.py": _tables, "scripts/reproduce.py": _reproduce, "scripts/psn_demo.py": _subprocess,
         "scripts/kernel_resources.py": _help_only, "scripts/benchmark_psn.py": _help_only,
         "scripts/gpu_check.py": _help_only, "digits_mlp/train.py": None}  # the example task: test_new_task.py


def _representatives() -> set[int]:
    """One command of each script and mode (train, resume/test-only) that runs for real in the default suite."""
    chosen, seen = set(), set()
    for i, (_, words) in enumerate(COMMANDS):
        script, args = script_and_args(words)
        kind = (script, "--test-only" in args, "--streaming" in args, any(a.startswith("-data-dir") for a in args))
        if kind not in seen:
            seen.add(kind)
            chosen.add(i)
    return chosen


REPRESENTATIVES = _representatives()


@pytest.mark.parametrize("index", [pytest.param(i, marks=() if i in REPRESENTATIVES else pytest.mark.slow)
                                   for i in range(len(COMMANDS))], ids=[c[0] for c in COMMANDS])
def test_a_readme_command_runs(index, world, tmp_path, monkeypatch):
    where, words = COMMANDS[index]
    script, args = script_and_args(words)
    rule = RULES.get(script)
    if rule is None:
        pytest.skip(f"{script}: carried out by its own test")
    monkeypatch.chdir(tmp_path)
    rule(script, args, world, tmp_path, run=True)


def test_every_readme_command_parses(world, tmp_path):
    """The cheap half for every command, in the default suite: the arguments parse (and the placeholders map)."""
    for where, words in COMMANDS:
        script, args = script_and_args(words)
        if script.endswith("/train.py") and script.split("/")[0] in TASKS:
            try:
                _train(script, args, world, tmp_path, run=False)
            except SystemExit as e:
                pytest.fail(f"{where}: argparse refused it ({e})")
