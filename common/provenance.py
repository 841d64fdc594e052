"""What made a run: the code (git commit, and the diff when the tree was modified), the libraries,
the machine, the processes, the start time. One record per segment of a run (a resume adds one),
kept in args.txt, summary.json, every checkpoint and the --test-only JSON line."""
import datetime
import os
import platform
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_DIFF_BYTES = 1 << 20  # a changed or new file larger than this is named in the diff, not copied into it
MAX_DIFF_BYTES = 8 << 20  # the whole diff; the files past it are named, not copied
MAX_DIFF_FILES = 200
GIT_TIMEOUT_S = 20
_LIBRARIES = ("torch", "torchvision", "spikingjelly", "timm", "triton", "numpy", "tensorboard")
# git runs no program of the user's configuration here (external diff, textconv, fsmonitor, hooks) and reads
# no repository but this clone's, whatever GIT_DIR or GIT_WORK_TREE say.
_GIT_SAFE = ["-c", "diff.external=", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
             "-c", "core.quotePath=false"]


class GitFailed(Exception):
    pass


def _git(*args: str, ok: tuple[int, ...] = (0,)) -> bytes:
    """git's output for this clone; GitFailed (with why) when git is missing, fails or hangs. A hanging git
    is killed with every process it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        proc = subprocess.Popen(["git", "-C", str(ROOT), *_GIT_SAFE, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    except FileNotFoundError:
        raise GitFailed("git is not installed here") from None
    except OSError as e:
        raise GitFailed(f"git could not be started ({e.strerror})") from None
    try:
        out, err = proc.communicate(timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise GitFailed(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from None
    if proc.returncode not in ok:
        first = err.decode("utf-8", "replace").strip().splitlines()[:1]
        raise GitFailed(f"git {args[0]} failed ({first[0][:200] if first else proc.returncode})")
    return out


def code_state() -> tuple[dict, str | None]:
    """({'commit', 'dirty', 'untracked'} or {'commit': None, 'source': why}, the diff when the tree is modified:
    each changed tracked file and each new file, up to MAX_FILE_DIFF_BYTES a file and MAX_DIFF_BYTES in all;
    the files left out are named in it). A git that fails says so in the record ('dirty': None)."""
    try:
        top = Path(os.fsdecode(_git("rev-parse", "--show-toplevel").strip()))
        inside = top.resolve() == ROOT.resolve()  # not a repository this copy merely sits in
    except GitFailed as e:
        if "not installed" in str(e) or "could not be started" in str(e):
            return {"commit": None, "source": f"{e}: the commit could not be recorded"}, None
        inside = False
    if not inside:
        return {"commit": None, "source": "not a git checkout (a copy or a package: no commit to record)"}, None
    try:
        commit = _git("rev-parse", "HEAD").decode().strip() or None
    except GitFailed:
        commit = None  # a repository without a commit yet
    try:
        entries = _git("status", "--porcelain=v1", "-z", "--untracked-files=all").split(b"\0")
    except GitFailed as e:
        return {"commit": commit, "dirty": None, "source": f"{e}: whether the tree was modified is unknown"}, None
    changed, untracked = _status_names(entries)
    dirty = bool(changed or untracked)
    state = {"commit": commit, "dirty": dirty, "untracked": untracked[:100]}
    if not dirty:
        return state, None
    return state, _bounded_diff(changed, untracked)


def _status_names(entries: list[bytes]) -> tuple[list[str], list[str]]:
    """(changed tracked files, untracked files) from `git status -z`: names as they are, whatever they hold."""
    changed, untracked, skip = [], [], False
    for entry in entries:
        if skip:  # the source name of a rename or copy
            skip = False
            continue
        if len(entry) < 4:
            continue
        code, name = entry[:2].decode(), os.fsdecode(entry[3:])
        (untracked if code == "??" else changed).append(name)
        skip = code[0] in "RC"
    return sorted(changed), sorted(untracked)


def _bounded_diff(changed: list[str], untracked: list[str]) -> str:
    """The diff of each file on its own, so that one file too large (data committed by mistake) leaves out only
    itself: it is named, with its size, and the small source edits beside it are kept."""
    parts, left_out, total = [], [], 0
    files = [(n, False) for n in changed] + [(n, True) for n in untracked]
    if len(files) > MAX_DIFF_FILES:
        left_out.append(f"{len(files) - MAX_DIFF_FILES} more files (only the first {MAX_DIFF_FILES} are diffed)")
    for name, new in files[:MAX_DIFF_FILES]:
        path = ROOT / name
        size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
        if size > MAX_FILE_DIFF_BYTES or total + size > MAX_DIFF_BYTES:
            left_out.append(f"{name} ({size} bytes)")
            continue
        try:
            if new:
                text = _git("diff", "--no-index", "--binary", "--no-ext-diff", "--no-textconv", "--", "/dev/null",
                            name, ok=(0, 1))
            else:
                text = _git("diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--", name)
        except GitFailed as e:
            left_out.append(f"{name} ({e})")
            continue
        if total + len(text) > MAX_DIFF_BYTES:
            left_out.append(f"{name} ({len(text)} bytes of diff)")
            continue
        total += len(text)
        parts.append(text.decode("utf-8", "replace"))
    if left_out:
        parts.append("# left out of this diff (too large, or git failed on them): " + "; ".join(left_out) + "\n")
    return "".join(parts)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    found["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return found


def hardware(device: torch.device) -> dict:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    record = {"device": str(device), "gpu_count": gpus, "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def segment(device: torch.device, world_size: int, code: dict | None = None) -> dict:
    """This invocation's record."""
    return {"code": code if code is not None else code_state()[0], "versions": versions(),
            "hardware": hardware(device), "world_size": world_size, "hostname": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def changes(earlier: dict, now: dict) -> list[str]:
    """What differs between two segments' code and libraries, as short phrases (empty: nothing that matters)."""
    found = []
    code_then, code_now = earlier.get("code") or {}, now.get("code") or {}
    if code_then.get("commit") != code_now.get("commit"):
        found.append(f"commit {_short(code_then.get('commit'))} -> {_short(code_now.get('commit'))}")
    elif code_now.get("dirty") or code_then.get("dirty"):
        found.append("a modified tree" + (" (before and now)" if code_then.get("dirty") and code_now.get("dirty")
                                          else ""))
    then, current = earlier.get("versions") or {}, now.get("versions") or {}
    for name, version in current.items():
        if name in then and then[name] != version:
            found.append(f"{name} {then[name]} -> {version}")
    return found


def short(code: dict | None) -> str:
    """'abc1234', 'abc1234+dirty', or '-' outside git: for tables."""
    if not code or not code.get("commit"):
        return "-"
    return _short(code["commit"]) + ("+dirty" if code.get("dirty") else "")


def _short(commit) -> str:
    return str(commit)[:7] if commit else "none"
