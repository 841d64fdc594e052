"""What made a run: the code (git commit, and the diff when the tree was modified), the libraries,
the machine, the processes, the start time. One record per segment of a run (a resume adds one),
kept in args.txt, summary.json, every checkpoint and the --test-only JSON line."""
import datetime
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_DIFF_BYTES = 8 << 20  # a diff larger than this (data committed by mistake, say) is cut, and says so
_LIBRARIES = ("torch", "torchvision", "spikingjelly", "timm", "triton", "numpy", "tensorboard")


def _git(*args: str, ok: tuple[int, ...] = (0,)) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace") if out.returncode in ok else None


def code_state() -> tuple[dict, str | None]:
    """({'commit', 'dirty', 'untracked'} or {'commit': None, 'source': why}, the diff when the tree is modified:
    `git diff HEAD` and every new file under 1 MiB)."""
    if _git("rev-parse", "--show-toplevel") is None:
        return {"commit": None, "source": "not a git checkout (a copy or a package: no commit to record)"}, None
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = (_git("status", "--porcelain", "--untracked-files=normal") or "").splitlines()
    untracked = sorted(line[3:] for line in status if line.startswith("?? "))
    dirty = any(line and not line.startswith("?? ") for line in status) or bool(untracked)
    state = {"commit": commit, "dirty": dirty, "untracked": untracked[:100]}
    if not dirty:
        return state, None
    diff = _git("diff", "HEAD", "--binary") or ""
    for name in untracked[:100]:  # new files are part of the code that ran, too
        path = ROOT / name
        if path.is_file() and path.stat().st_size <= 1 << 20:
            diff += _git("diff", "--no-index", "--binary", "/dev/null", name, ok=(0, 1)) or ""
    if len(diff.encode()) > MAX_DIFF_BYTES:
        diff = diff.encode()[:MAX_DIFF_BYTES].decode("utf-8", "ignore") + "\n# ... cut at 8 MiB\n"
    return state, diff


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
