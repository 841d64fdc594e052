"""docs/architecture.md's example task, carried out: a folder of three files, written outside the
repository from the document's own code blocks, trains, resumes, evaluates and appears in the tables,
with a neuron it registers itself; nothing in common/ or scripts/ knows of it."""
import json
import re
import subprocess
import sys

from conftest import ROOT, last_json, read_scalars, script_env


def _write_example_task(folder):
    text = (ROOT / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"^`(digits_mlp/[\w.]+)`:\n\n```\w*\n(.*?)^```$", text, flags=re.S | re.M)
    assert sorted(name for name, _ in blocks) == ["digits_mlp/README.md", "digits_mlp/models.py",
                                                   "digits_mlp/train.py"]
    for name, code in blocks:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)
    return folder / "digits_mlp" / "train.py"


def _run(script, *args, cwd):
    env = script_env(PYTHONPATH=f"{cwd}:{ROOT}")  # the task's folder and the repository, unchanged
    out = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_the_documented_new_task_runs_with_nothing_changed_in_common(tmp_path):
    script = _write_example_task(tmp_path)
    flags = ["--device", "cpu", "--workers", 0, "--epochs", 2, "--output-dir", tmp_path / "runs", "--resume", "auto",
             "--hidden", 64, 32]  # a list-valued flag (nargs="+"): recorded, restored on resume and --test-only
    first = last_json(_run(script, *flags, "--stop-after", 1, "--spike-stats", cwd=tmp_path).stdout)
    assert first["epochs_done"] == 1
    second = last_json(_run(script, *flags, cwd=tmp_path).stdout)
    assert second["epochs_done"] == 2 and second["run_dir"] == first["run_dir"]
    run_dir = tmp_path / "runs" / "if_hard_w64-32_T4_e2_b32_adamw_lr0.001"
    recorded = json.loads((run_dir / "args.txt").read_text().splitlines()[0])
    assert recorded["task"] == "digits_mlp" and recorded["hidden"] == [64, 32]
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["test/acc1"]] == [1, 2] and "spikes/net.2" in scalars  # its neuron counted
    assert second["best_test_acc1"] > 50  # it learns: chance is 10 %

    evaluated = _run(script, "--device", "cpu", "--workers", 0, "--test-only", "--resume",
                     run_dir / "checkpoint_latest.pth", cwd=tmp_path).stdout
    assert "hidden=(64, 32)" in evaluated  # taken from the checkpoint, as the tuple the command line gave
    assert last_json(evaluated)["test_acc1"] == second["last_test_acc1"]  # settings (widths, neuron, T) from it

    tables = _run(ROOT / "scripts" / "paper_tables.py", tmp_path / "runs", cwd=tmp_path).stdout
    assert "## digits_mlp" in tables and "| if_hard | 4 |" in tables
