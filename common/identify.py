"""Which released model a checkpoint file holds, from its contents, and checkpoints inside archives.

A listed file's name may not tell its model: the authors' scripts saved `checkpoint_max.pth` into run
folders (`T4_opt_SGD0.1_..._2gpu/`), an upload may be an archive of such folders, a name may mislead.
Then the file itself says: its tensors give the architecture and its settings (as `--test-only`
infers them: the task's `infer_settings`), the settings it recorded where it has them (ours), and
for what tensors cannot tell (a CIFAR10-DVS file's T: its weights are the same for every T) the best
accuracy the file records, against the paper's table. What remains unknown is said, never guessed.

Archives (.zip, .tar, .tar.gz, .tgz) are opened member by member, never extracted wholesale: only
regular files with checkpoint suffixes, each under a plain flattened name inside the destination
(no absolute path, no '..', no link), each at most MAX_MEMBER_BYTES and all at most MAX_ARCHIVE_BYTES
(read with a counter, so a lying header cannot exceed them), at most MAX_MEMBERS entries looked at.
"""
import importlib
import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import UserError

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 4 << 30
MAX_ARCHIVE_BYTES = 64 << 30
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".pkl", ".bin")
# The paper's CIFAR10-DVS accuracies: the T of a released file whose best accuracy is one of them.
DVS_T_BY_ACCURACY = {82.30: 4, 85.30: 8, 85.90: 10}


class ArchiveError(Exception):
    pass


@dataclass(frozen=True)
class Identified:
    key: str | None  # a MODELS key of common.download, or None
    what: str  # what was found, in words (for messages)
    settings: dict = field(default_factory=dict)


def is_archive(name: str) -> bool:
    """An archive of files; `.pth.tar` is the old name of a single torch checkpoint, not one."""
    low = name.lower()
    return low.endswith(ARCHIVE_SUFFIXES) and not low.endswith(".pth.tar")


def identify(path: Path) -> Identified:
    """The released model a checkpoint file holds, from its contents; key None with what was found otherwise."""
    from .checkpoint import read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except UserError as e:
        return Identified(None, f"no checkpoint this project reads ({str(e).splitlines()[0][:160]})")
    sd = ckpt.state_dict
    recorded = ckpt.state.recorded_settings if ckpt.layout == "ours" else {}
    task = _task_of(sd, ckpt.state.task)
    if task is None:
        return Identified(None, "a state dict of none of the released architectures")
    found = importlib.import_module(f"{task}.train").infer_settings(sd)
    if task == "cifar10":
        return Identified("cifar10_psn", f"CIFAR10Net, {found.get('channels')} channels, T = {found.get('T')}")
    if task == "imagenet":
        model = found.get("model")
        key = {"sew_resnet18": "sew_resnet18_psn", "sew_resnet34": "sew_resnet34_psn"}.get(model)
        return Identified(key, f"SEW ResNet ({model}), T = {found.get('T')}")
    T = recorded.get("T")
    source = "its recorded settings"
    if not isinstance(T, int):
        best = ckpt.state.best_acc1
        T = next((t for acc, t in DVS_T_BY_ACCURACY.items() if best is not None and abs(best - acc) < 0.005), None)
        source = f"its best accuracy {best:.2f} %, the paper's at T = {T}" if T else ""
    if T in (4, 8, 10):
        return Identified(f"cifar10dvs_sliding_psn_t{T}", f"CIFAR10-DVS VGG, sliding PSN, T = {T} (from {source})",
                          {"T": T})
    best = ckpt.state.best_acc1
    return Identified(None, "a CIFAR10-DVS VGG with sliding PSN whose T the file cannot tell (its best accuracy "
                            f"{'unknown' if best is None else f'{best:.2f} %'} is none of the paper's)")


def _task_of(sd: dict, recorded_task: str | None) -> str | None:
    if recorded_task in ("cifar10", "cifar10dvs", "imagenet"):
        return recorded_task
    keys = {k.removeprefix("module.").removeprefix("_orig_mod.") for k in sd}
    if "layer1.0.conv1.weight" in keys:
        return "imagenet"
    if any(k.startswith("features.1.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return "cifar10dvs"
    conv = sd.get("conv.0.weight", sd.get("module.conv.0.weight"))
    if conv is not None and getattr(conv, "dim", lambda: 0)() == 4:
        return "cifar10"
    return None


def _plain_member(name: str) -> str | None:
    """An archive member's path as one flat file name ('run/checkpoint_max.pth' -> 'run__checkpoint_max.pth'),
    or None for a path that is absolute, climbs with '..', or is empty."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts) or ":" in path.parts[0]:
        return None
    return "__".join(path.parts)


def checkpoints_in_archive(archive: Path, dest: Path, check_name) -> list[tuple[str, Path]]:
    """Copy the checkpoint-like regular files of an archive into `dest`, each under a flattened plain name
    (`check_name` is the downloader's rule for names); returns [(member path, written file)]. Anything else
    (links, devices, folders, other files) is skipped; bounds broken are an ArchiveError, nothing half-written."""
    members = []
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()[:MAX_MEMBERS]
            for info in infos:
                mode = info.external_attr >> 16  # Unix type and permission bits, where the writer set them
                if info.is_dir() or (stat.S_IFMT(mode) and not stat.S_ISREG(mode)):  # a link, a device
                    continue
                members.append((info.filename, info.file_size, lambda i=info: z.open(i)))
            return _copy_members(members, dest, check_name, archive)
    try:
        with tarfile.open(archive, "r:*") as t:
            for count, info in enumerate(t):
                if count >= MAX_MEMBERS:
                    break
                if info.isfile():
                    members.append((info.name, info.size, lambda i=info: t.extractfile(i)))
            return _copy_members(members, dest, check_name, archive)
    except tarfile.TarError as e:
        raise ArchiveError(f"{archive.name} is not a readable archive ({e}).") from None


def _copy_members(members, dest: Path, check_name, archive: Path) -> list[tuple[str, Path]]:
    written, total = [], 0
    for name, size, opener in members:
        if not name.lower().endswith(CHECKPOINT_SUFFIXES):
            continue
        flat = _plain_member(name)
        if flat is None:
            raise ArchiveError(f"{archive.name} holds a member {name!r} that would land outside its folder; refusing "
                               "the archive.")
        flat = check_name(f"{archive.name}__{flat}")
        if size > MAX_MEMBER_BYTES or total + size > MAX_ARCHIVE_BYTES:
            raise ArchiveError(f"{archive.name}: member {name!r} ({size} bytes) is beyond the bounds on what an "
                               "archive of checkpoints holds; refusing it.")
        target, tmp = dest / flat, dest / f".{flat}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        copied = 0
        with os.fdopen(fd, "wb") as out, opener() as source:
            while chunk := source.read(1 << 20):
                copied += len(chunk)
                if copied > size or copied > MAX_MEMBER_BYTES:  # more than its header said: a crafted member
                    out.close()
                    tmp.unlink()
                    raise ArchiveError(f"{archive.name}: member {name!r} holds more than its header says; refusing "
                                       "it.")
                out.write(chunk)
        total += copied
        os.replace(tmp, target)
        written.append((name, target))
    return written
