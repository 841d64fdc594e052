"""The run state: one object, one serializer following its fields by name, the file's conventions at the file
boundary only; and settings that round-trip through a checkpoint whatever a flag holds."""
import argparse
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_env

from common import cli
from common.checkpoint import LEGACY_FORMAT, Checkpoint, content_digest, read_checkpoint, save_checkpoint
from common.errors import UserError
from common.run_state import EpochSums, RunState
from common.settings import from_command_line, resolve


def _mid_epoch_state() -> RunState:
    return RunState(task="cifar10", epoch=3, step=7, epoch_sums=EpochSums(1.5, 20.0, 224.0, 2.25), step_samples=32,
                    best_acc1=40.0, settings={"lr": 0.1, "milestones": [5, 9]}, model_settings={"T": 4},
                    last_acc1=38.5, rng={"torch": torch.get_rng_state()}, provenance=[{"code": {"commit": "abc"}}])


def test_the_file_keeps_its_own_conventions_and_the_state_comes_back_whole(tmp_path):
    state = _mid_epoch_state()
    record = Checkpoint(None, "ours", {"w": torch.ones(2)}, state).to_dict()
    # The file's conventions, converted at the boundary: the last finished epoch, sums as a list, the last
    # accuracy under task_state, the settings under args.
    assert record["epoch"] == 2 and record["step"] == 7 and record["epoch_sums"] == [1.5, 20.0, 224.0, 2.25]
    assert record["task_state"] == {"last_acc1": 38.5} and record["args"]["milestones"] == [5, 9]
    back = read_checkpoint(_saved(record, tmp_path / "c.pth")).state
    assert back.position == (3, 7) and back.where() == "epoch 4, step 7"
    assert back.epoch_sums == state.epoch_sums and isinstance(back.epoch_sums, EpochSums)
    for name in ("task", "step_samples", "best_acc1", "settings", "model_settings", "last_acc1", "provenance"):
        assert getattr(back, name) == getattr(state, name), name
    assert torch.equal(back.rng["torch"], state.rng["torch"])


def _saved(record: dict, path: Path) -> Path:
    save_checkpoint(record, path)
    return path


def test_a_file_from_before_a_field_existed_loads_with_its_default_and_a_missing_epoch_is_damage(tmp_path):
    record = Checkpoint(None, "ours", {"w": torch.ones(2)}, _mid_epoch_state()).to_dict()
    old = {k: v for k, v in record.items() if k not in ("task", "model_settings", "provenance", "digest")}
    old["format"] = LEGACY_FORMAT  # as the versions before those fields wrote it
    state = read_checkpoint(_saved(old, tmp_path / "old.pth")).state
    assert state.task is None and state.model_settings == {} and state.provenance == [] and state.position == (3, 7)
    no_epoch = {k: v for k, v in old.items() if k != "epoch"}
    with pytest.raises(UserError, match=r"epoch must be an integer from -1 to \d+ \(found nothing\)"):
        read_checkpoint(_saved(no_epoch, tmp_path / "e.pth"))


@pytest.mark.parametrize("field,value,message", [
    ("epoch", "MAX_EPOCH", r"epoch must be an integer from -1 to \d+"), ("epoch", -2, "epoch must be"),
    ("step", "MAX_STEP", "step must be a non-negative integer"), ("step", -1, "step must be"),
    ("step_samples", 0, "step_samples must be a positive integer"), ("best_acc1", 100.5, "percentage")])
def test_positions_and_records_out_of_range_are_refused(tmp_path, field, value, message):
    """Each bound, at its edge: a crafted file one past it is refused in one sentence, before anything replays."""
    from common import checkpoint_checks

    record = Checkpoint(None, "ours", {"w": torch.ones(2)}, _mid_epoch_state()).to_dict()
    record[field] = getattr(checkpoint_checks, value) if isinstance(value, str) else value
    record["digest"] = content_digest(record)  # crafted with a valid digest: the bound alone must refuse it
    with pytest.raises(UserError, match=message):
        read_checkpoint(_saved(record, tmp_path / "crafted.pth"))
    record[field] = (getattr(checkpoint_checks, value) - 1) if isinstance(value, str) else None
    if record[field] is not None:  # the last value inside the bound reads
        record["digest"] = content_digest(record)
        read_checkpoint(_saved(record, tmp_path / "edge.pth"))


def test_adding_a_checkpoint_field_is_one_field_with_its_check(tmp_path):
    """What docs/architecture.md says, done to a copy of the package: one line added to RunState, and the new
    field is saved, read back, checked, and absent from older files without harm."""
    package = tmp_path / "common"
    shutil.copytree(ROOT / "common", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = (package / "run_state.py").read_text()
    anchor = re.search(r"^    provenance: list = stored\(.*?\n(?=\n)", source, flags=re.S | re.M)
    field_line = '    samples_seen: int = stored(0, check=is_int, what="samples_seen must be an integer")\n'
    (package / "run_state.py").write_text(source[:anchor.end()] + field_line + source[anchor.end():])
    old = tmp_path / "old.pth"
    save_checkpoint(Checkpoint(None, "ours", {"w": torch.ones(2)}, RunState(epoch=1)).to_dict(), old)
    probe = textwrap.dedent(f"""
        import torch
        from common.checkpoint import Checkpoint, content_digest, read_checkpoint, save_checkpoint
        from common.errors import UserError
        from common.run_state import RunState

        state = RunState(epoch=2, samples_seen=1234)
        save_checkpoint(Checkpoint(None, "ours", {{"w": torch.ones(2)}}, state).to_dict(), "new.pth")
        assert read_checkpoint("new.pth").state.samples_seen == 1234
        assert read_checkpoint({str(old)!r}).state.samples_seen == 0  # a file from before the field
        record = torch.load("new.pth", weights_only=True)
        record["samples_seen"] = "many"
        record["digest"] = content_digest(record)  # as a careful forger would: the field's own check must refuse it
        save_checkpoint(record, "bad.pth")
        try:
            read_checkpoint("bad.pth")
        except UserError as e:
            assert "samples_seen must be an integer (found 'many')" in str(e), e
        else:
            raise AssertionError("a crafted value was read")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=script_env(PYTHONPATH=str(tmp_path)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_the_serializer_follows_names_not_positions():
    """Every stored field reaches the file under its own key and comes back to itself: no value can land in
    another field, whatever the order the fields are declared in."""
    fields = RunState.stored_fields()
    record = _mid_epoch_state().to_record()
    keys = [f.metadata["key"] or f.name for f in fields]
    assert sorted(record) == sorted(keys) and len(set(keys)) == len(keys)
    shuffled = dict(reversed(list(record.items())))
    state, problems = RunState.from_record(shuffled)
    assert not problems and state == _mid_epoch_state().__class__(**{
        f.name: getattr(state, f.name) for f in fields}) and state.to_record() == record


# --- settings that round-trip ---------------------------------------------------------------------

def _parser() -> cli.RecipeParser:
    p = cli.build_parser("a task with list-valued and optional flags", epochs=3)
    p.add_argument("--milestones", type=int, nargs="+", default=[10, 20], bounds=cli.Bounds(1, 10**6))
    p.add_argument("--widths", type=int, nargs="*", default=[], kind=cli.MODEL, bounds=cli.Bounds(1, 4096))
    p.add_argument("--pair", type=float, nargs=2, default=None)
    p.add_argument("--tag", default=None)
    p.add_argument("--level", action="count", default=0)
    return p


class _Task:
    name, upgrade_recorded, check_settings, legacy_settings = "t", None, None, {}


def test_every_kind_of_flag_is_recorded_and_restored_exactly():
    given = from_command_line(_parser(), ["--milestones", "5", "7", "--widths", "8", "16", "--pair", "0.5", "2",
                                          "--tag", "x", "--level", "--level"])
    assert (given.milestones, given.widths, given.pair, given.tag, given.level) == ((5, 7), (8, 16), (0.5, 2.0),
                                                                                   "x", 2)
    record = given.record()
    assert (record["milestones"], record["widths"], record["pair"]) == ([5, 7], [8, 16], [0.5, 2.0])
    ckpt = Checkpoint(Path("c.pth"), "ours", {}, RunState(settings=record, model_settings=given.record(cli.MODEL)))
    resumed = resolve(_Task(), from_command_line(_parser(), ["--resume", "c.pth"]), ckpt)
    for key in ("milestones", "widths", "pair", "tag", "level", "epochs"):
        assert resumed[key] == given[key] and type(resumed[key]) is type(given[key]), key
    defaults = from_command_line(_parser(), [])
    assert defaults.milestones == (10, 20) and defaults.widths == () and defaults.pair is None


def test_recorded_lists_are_checked_like_the_command_line():
    record = from_command_line(_parser(), []).record()
    cli_settings = from_command_line(_parser(), ["--resume", "c.pth"])
    for bad in ([0, 5], ["5"], 7, [1.5], list(range(5000))):
        ckpt = Checkpoint(Path("c.pth"), "ours", {}, RunState(settings={**record, "milestones": bad}))
        with pytest.raises(UserError, match="not a valid value for --milestones"):
            resolve(_Task(), cli_settings, ckpt)
    with pytest.raises(UserError, match="--pair .*takes 2 values"):
        resolve(_Task(), cli_settings, Checkpoint(Path("c.pth"), "ours", {}, RunState(settings={**record,
                                                                                                "pair": [1.0]})))
    with pytest.raises(UserError, match=r"--widths 4 contradicts .*widths=8;"):
        resolve(_Task(), from_command_line(_parser(), ["--resume", "c.pth", "--widths", "4"]),
                Checkpoint(Path("c.pth"), "ours", {}, RunState(settings={**record, "widths": [8]})))
    with pytest.raises(UserError, match="--milestones must lie from 1"):
        from_command_line(_parser(), ["--milestones", "0"])


@pytest.mark.parametrize("declaration", [
    {"type": Path}, {"action": "append"}, {"nargs": argparse.REMAINDER}, {"type": lambda text: text},
    {"action": type("Custom", (argparse.Action,), {"__call__": lambda *a: None})},
], ids=["type=Path", "append", "remainder", "unannotated type", "custom action"])
def test_a_flag_that_could_not_round_trip_is_refused_where_it_is_declared(declaration):
    p = cli.build_parser("x")
    with pytest.raises(ValueError, match="flag --bad: "):
        p.add_argument("--bad", **declaration)
    p.add_argument("--bad", type=int)  # the refused declaration left nothing behind


def test_a_default_the_flag_cannot_hold_is_the_task_authors_error():
    p = cli.build_parser("x")
    p.add_argument("--milestones", type=int, nargs="+", default=5)
    with pytest.raises(ValueError, match="--milestones's default 5 cannot be recorded"):
        from_command_line(p, [])


@pytest.mark.parametrize("name", ["..", ".", "/tmp/elsewhere", "a/../../b", "", "two\nlines", "x" * 256])
def test_a_run_name_stays_inside_the_output_dir(name):
    with pytest.raises(UserError, match="--run-name .* must be a plain folder name"):
        from_command_line(_parser(), ["--run-name", name])
    assert from_command_line(_parser(), ["--run-name", "my run, v2 (ünïcode)"]).run_name == "my run, v2 (ünïcode)"


def test_values_in_run_files_cannot_forge_lines(tmp_path, monkeypatch):
    import json

    from common import runlog

    forged = 'a\n# provenance: {"code": {"commit": "f00d"}}\nb'
    monkeypatch.setattr(sys, "argv", ["cifar10/train.py", "--data-dir", forged, "--run-name", "x\u2028y"])
    runlog.write_args(tmp_path, {"data_dir": forged}, None, "cifar10", {"code": {"commit": "abc"}})
    runlog.write_args(tmp_path, {"data_dir": forged}, forged, "cifar10", {"code": {"commit": "abc"}})
    lines = (tmp_path / "args.txt").read_text().split("\n")
    assert len(lines) == 8 and lines[-1] == ""  # two segments of three lines, one more for the resume's origin
    assert [json.loads(line.split(": ", 1)[1])["code"]["commit"] for line in lines if line.startswith("# prov")] \
        == ["abc", "abc"]
    assert "--data-dir $'a\\x0a# provenance: " in lines[1] and "$'x\\u2028y'" in lines[1]
    bash = subprocess.run(["bash", "-c", f"set -- {lines[1]}; printf '%s|%s' \"$3\" \"$5\""], capture_output=True,
                          text=True)
    assert bash.stdout == f"{forged}|x\u2028y"  # the words mean what was typed


def test_an_error_naming_a_value_with_a_newline_is_still_one_line(tmp_path):
    from conftest import QUICK, run_script

    out = run_script("cifar10/train.py", *QUICK, "--resume", tmp_path / "a\nb.pth", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr == f"error: Checkpoint {tmp_path}/a\\nb.pth does not exist.\n"
