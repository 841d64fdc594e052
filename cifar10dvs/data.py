"""CIFAR10-DVS through SpikingJelly 2.0, split as in the paper.

`--data-dir` is the dataset root as SpikingJelly lays it out: `download/` holding the ten
class archives from figshare (airplane.zip ... truck.zip), or an `events_np/` that
SpikingJelly already built from them. SpikingJelly integrates each sample's events into
T frames of equal event count (`frames_number_T_split_by_number/`, built once per T).

Split: per class, samples 0-99 are the test set and 100-999 the training set (the
sample index is the number in `cifar10_<class>_<i>`). Frames are raw event counts as
float, resized to 48x48 (bilinear, no antialiasing); training adds RandomCrop(48, padding 4) and a horizontal flip,
the same for every frame of a sample.
"""
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from common.data import DataBundle
from common.errors import UserError

TEST_PER_CLASS = 100  # indices 0..99 of each class
SAMPLES_PER_CLASS = 1000
_INDEX = re.compile(r"_(\d+)$")


def sample_index(path: str) -> int:
    match = _INDEX.search(Path(path).stem)
    if match is None:
        raise UserError(f"CIFAR10-DVS file {path} is not named cifar10_<class>_<index>; is --data-dir right?")
    return int(match.group(1))


def paper_split(samples: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Positions of the training and test samples: per class, index < 100 tests, 100..999 trains."""
    train, test = [], []
    for position, (path, _) in enumerate(samples):
        i = sample_index(path)
        if i < TEST_PER_CLASS:
            test.append(position)
        elif i < SAMPLES_PER_CLASS:
            train.append(position)
    return train, test


def frame_transform(train: bool, antialias: bool = False):
    """Resize to 48x48 bilinearly, without antialiasing by default: the original's Resize ran on
    tensors with the torchvision of 2023, which did not antialias them (frames of sparse event
    counts change a lot under an antialiasing filter)."""
    steps = [T.Resize((48, 48), interpolation=T.InterpolationMode.BILINEAR, antialias=antialias)]
    if train:
        steps += [T.RandomCrop(48, padding=4), T.RandomHorizontalFlip()]
    return T.Compose(steps)


class FrameSubset(Dataset):
    """Some samples of SpikingJelly's frame dataset, as float tensors [T, 2, 48, 48]."""

    def __init__(self, frames, positions: list[int], transform):
        self.frames, self.positions, self.transform = frames, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        frames, label = self.frames[self.positions[i]]
        return self.transform(torch.from_numpy(np.asarray(frames, dtype=np.float32))), label


def check_archives(root: Path) -> None:
    """Without --download, SpikingJelly must neither download nor delete: before it is asked for
    anything, the ten class archives must all be in `root/download` with their MD5s (SpikingJelly
    removes a damaged one and fetches it anew, and fetches all of them when the folder is missing)."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
    from torchvision.datasets.utils import check_integrity

    download = root / "download"
    missing, damaged = [], []
    for file_name, _, md5 in CIFAR10DVS.resource_url_md5():
        path = download / file_name
        if not path.is_file():
            missing.append(file_name)
        elif not check_integrity(str(path), md5):
            damaged.append(file_name)
    if not missing and not damaged:
        return
    if len(missing) == len(CIFAR10DVS.resource_url_md5()):
        raise UserError(f"CIFAR10-DVS was not found in {root}: put the ten class archives from figshare "
                        f"(airplane.zip ... truck.zip) into {download}, or add --download to let "
                        "SpikingJelly fetch them.")
    problems = [f"{', '.join(missing)} missing" if missing else "", f"{', '.join(damaged)} damaged (MD5 differs)"
                if damaged else ""]
    raise UserError(f"CIFAR10-DVS archives in {download}: {'; '.join(p for p in problems if p)}; replace them with "
                    "the files from figshare, or add --download to let SpikingJelly fetch them (it replaces damaged "
                    "archives).")


def build_cifar10dvs(data_dir: str, T_steps: int, download: bool, antialias: bool = False) -> DataBundle:
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    root = Path(data_dir).expanduser()
    if not download and not (root / "events_np").is_dir():
        check_archives(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        frames = CIFAR10DVS(str(root), data_type="frame", frames_number=T_steps, split_by="number")
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"SpikingJelly could not prepare CIFAR10-DVS in {root}: {str(e).splitlines()[0]}") from None
    train, test = paper_split(frames.samples)
    if not train or not test:
        raise UserError(f"CIFAR10-DVS in {root} has {len(train)} training and {len(test)} test samples; "
                        "the split needs files cifar10_<class>_<index> with indices 0-99 and 100-999.")
    return DataBundle(FrameSubset(frames, train, frame_transform(True, antialias)),
                      FrameSubset(frames, test, frame_transform(False, antialias)), len(frames.classes))
