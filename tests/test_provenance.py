"""A run records what made it, tested in real git repositories made here: a copy of the project's code,
committed, then modified, then committed again, and a copy outside git."""
import json
import shutil
import subprocess
import sys

import torch

from conftest import QUICK, ROOT, last_json, script_env

FAST = [*map(str, QUICK), "-b", "700"]


def _copy_code(dest):
    """The code a run needs (common/, cifar10/, scripts/), as it is in this working tree."""
    for folder in ("common", "cifar10", "scripts"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _git(repo, *args):
    env = script_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
                     GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _train(repo, *args):
    # The copy's own code, not the clone this environment installed: PYTHONPATH, as README says for a second clone.
    out = subprocess.run([sys.executable, str(repo / "cifar10" / "train.py"), *FAST, *map(str, args)], cwd=repo,
                         env=script_env(PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _provenance_lines(run_dir):
    return [json.loads(line.split(": ", 1)[1]) for line in (run_dir / "args.txt").read_text().splitlines()
            if line.startswith("# provenance: ")]


def test_commits_diffs_versions_and_resumes_are_recorded(tmp_path):
    repo = _copy_code(tmp_path / "repo")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    first = _git(repo, "rev-parse", "HEAD")
    run_dir = tmp_path / "runs" / "r"
    flags = ["--epochs", 3, "--output-dir", tmp_path / "runs", "--run-name", "r", "--resume", "auto"]
    one = last_json(_train(repo, *flags, "--stop-after", 1).stdout)

    record = one["provenance"][0]
    assert record["code"] == {"commit": first, "dirty": False, "untracked": []}
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or record["versions"]["torch"] == \
        torch.__version__
    assert {"python", "torchvision", "spikingjelly", "timm", "triton", "cuda", "cudnn"} <= set(record["versions"])
    assert record["world_size"] == 1 and record["hostname"] and record["started"][:2] == "20"
    assert record["hardware"]["device"] == "cpu" and "gpu_count" in record["hardware"]
    assert _provenance_lines(run_dir) == [record] == json.loads((run_dir / "summary.json").read_text())["provenance"]
    assert torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)["provenance"] == [record]
    assert not (run_dir / "code.diff").exists()

    # The code changed without a commit: the second segment says so, and keeps the diff.
    models = repo / "cifar10" / "models.py"
    models.write_text(models.read_text() + "\n# an experiment in progress\n")
    (repo / "notes.py").write_text("NOTE = 1\n")
    second = _train(repo, *flags, "--stop-after", 1)
    assert "with other code or libraries than its last segment ran with: a modified tree" in second.stderr
    code = last_json(second.stdout)["provenance"][1]["code"]
    assert code["commit"] == first and code["dirty"] is True and code["untracked"] == ["notes.py"]
    diff = (run_dir / "code.2.diff").read_text()
    assert "+# an experiment in progress" in diff and "+NOTE = 1" in diff

    # Committed: the third segment names the commit it moved to.
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "second")
    third = _train(repo, *flags)
    assert f"commit {first[:7]} -> {_git(repo, 'rev-parse', 'HEAD')[:7]}" in third.stderr
    segments = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)["provenance"]
    assert [s["code"]["dirty"] for s in segments] == [False, True, False] and len(_provenance_lines(run_dir)) == 3

    evaluated = last_json(_train(repo, "--test-only", "--resume", run_dir / "checkpoint_latest.pth").stdout)
    assert evaluated["provenance"]["code"]["commit"] == _git(repo, "rev-parse", "HEAD")

    tables = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_tables.py"), str(tmp_path / "runs"),
                             "--commits"], capture_output=True, text=True, env=script_env()).stdout
    assert f"r ({first[:7]} > {first[:7]}+dirty > {_git(repo, 'rev-parse', 'HEAD')[:7]})" in tables


def test_a_copy_outside_git_records_that_it_has_no_commit(tmp_path):
    repo = _copy_code(tmp_path / "tarball")
    out = last_json(_train(repo, "--epochs", 1, "--output-dir", tmp_path / "runs", "--run-name", "r").stdout)
    code = out["provenance"][0]["code"]
    assert code["commit"] is None and "not a git checkout" in code["source"]


# --- git as it is found on users' machines: their configuration, their environment, their file names -----

def _repo_with_a_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "common").mkdir(parents=True)
    (repo / "common" / "model.py").write_text("WIDTH = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def _state_of(repo, monkeypatch):
    from common import provenance

    monkeypatch.setattr(provenance, "ROOT", repo)
    return provenance.code_state()


def test_git_runs_none_of_the_users_programs(tmp_path, monkeypatch):
    repo = _repo_with_a_commit(tmp_path)
    marker = tmp_path / "ran"
    hook = f"sh -c 'touch {marker}; echo HIJACKED'"
    for key, value in (("diff.external", hook), ("diff.evil.textconv", hook), ("core.fsmonitor", hook)):
        _git(repo, "config", key, value)
    (repo / ".gitattributes").write_text("*.py diff=evil\n")
    _git(repo, "add", ".gitattributes")
    _git(repo, "commit", "-q", "-m", "attributes")
    (repo / "common" / "model.py").write_text("WIDTH = 2\n")
    marker.unlink(missing_ok=True)  # the test's own git commands above ran the user's programs: ours must not
    state, diff = _state_of(repo, monkeypatch)
    assert state["dirty"] is True and "-WIDTH = 1" in diff and "+WIDTH = 2" in diff
    assert "HIJACKED" not in diff and not marker.exists()


def test_another_repository_named_by_the_environment_is_not_recorded(tmp_path, monkeypatch):
    repo = _repo_with_a_commit(tmp_path)
    other = _repo_with_a_commit(tmp_path / "elsewhere")
    (other / "common" / "model.py").write_text("WIDTH = 3\n")
    _git(other, "commit", "-qam", "other")
    mine = _git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    state, diff = _state_of(repo, monkeypatch)
    assert state == {"commit": mine, "dirty": False, "untracked": []} and diff is None


def test_every_new_file_is_in_the_diff_whatever_its_name(tmp_path, monkeypatch):
    repo = _repo_with_a_commit(tmp_path)
    names = ["with space.py", "ünïcode.py", 'qu"ote.py', " leading.py", "new\nline.py", "folder/a.py", "folder/b.py"]
    for n, name in enumerate(names):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(f"VALUE_{n} = {n}\n")
    state, diff = _state_of(repo, monkeypatch)
    assert state["untracked"] == sorted(names) and state["dirty"] is True
    for n in range(len(names)):
        assert f"+VALUE_{n} = {n}" in diff, names[n]


def test_a_file_too_large_is_named_and_the_small_edits_beside_it_are_kept(tmp_path, monkeypatch):
    from common import provenance

    repo = _repo_with_a_commit(tmp_path)
    (repo / "common" / "model.py").write_text("WIDTH = 2\n")
    (repo / "data.bin").write_bytes(b"\0" * (provenance.MAX_FILE_DIFF_BYTES + 1))
    state, diff = _state_of(repo, monkeypatch)
    assert state["dirty"] is True and "+WIDTH = 2" in diff
    assert f"left out of this diff (too large, or git failed on them): data.bin " \
           f"({provenance.MAX_FILE_DIFF_BYTES + 1} bytes)" in diff and len(diff) < 10_000


def test_a_git_that_cannot_answer_is_recorded_as_such(tmp_path, monkeypatch):
    repo = _repo_with_a_commit(tmp_path)
    (repo / "common" / "model.py").write_text("WIDTH = 2\n")
    (repo / ".git" / "index").write_bytes(b"DIRC garbage")  # a corrupt index: git status fails
    state, diff = _state_of(repo, monkeypatch)
    assert state["dirty"] is None and "unknown" in state["source"] and diff is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    state, _ = _state_of(repo, monkeypatch)
    assert state["commit"] is None and state["source"].startswith("git is not installed here")
