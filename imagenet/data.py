"""ImageNet as two ImageFolders (`train/`, `val/` under --data-path), the paper's transforms,
and a safe cache of the file index (`--cache-dataset`): listing 1.28 M files takes minutes.

The cache is JSON (relative paths and labels), never a pickle, written atomically and
used only while the folder's class list and modification times still match.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import default_loader
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from common.data import DataBundle
from common.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(size: int = 224):
    return T.Compose([T.RandomResizedCrop(size, interpolation=InterpolationMode.BILINEAR, antialias=True),
                      T.RandomHorizontalFlip(), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(MEAN, STD)])


def test_transform(resize: int = 256, size: int = 224):
    return T.Compose([T.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True), T.CenterCrop(size),
                      T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])


class IndexedImages(Dataset):
    """An ImageFolder rebuilt from its index: (relative path, label) pairs and class names."""

    def __init__(self, root: Path, classes: list[str], samples: list[tuple[str, int]], transform):
        self.root, self.classes, self.transform = Path(root), classes, transform
        self.samples = samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            image = default_loader(str(self.root / path))
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unreadable, truncated or not an image
            raise UserError(f"Image {self.root / path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            "replace or remove it.") from None
        return self.transform(image), label


def _fingerprint(root: Path) -> dict:
    """What must still hold for a cached index to describe the folder."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    return {"root": str(root.resolve()), "classes": classes,
            "mtimes": [os.stat(root / c).st_mtime_ns for c in classes]}


def index_folder(root: Path, cache_dir: Path | None) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, samples) of an ImageFolder, read from the cache when it is still valid."""
    if not root.is_dir():
        raise UserError(f"ImageNet folder {root} does not exist; --data-path must hold train/ and val/ "
                        "with one subfolder per class.")
    fingerprint = _fingerprint(root)
    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(fingerprint["root"].encode()).hexdigest()[:16]
        cache = Path(cache_dir).expanduser() / f"imagefolder_{key}.json"
        if cache.is_file():
            try:
                stored = json.loads(cache.read_text())
                if stored["fingerprint"] == fingerprint:
                    return stored["classes"], [tuple(s) for s in stored["samples"]]
            except (ValueError, KeyError, TypeError):
                pass  # unreadable or stale: rebuilt below
    try:
        folder = datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"No images found in {root}: {str(e).splitlines()[0]}") from None
    samples = [(os.path.relpath(path, root), label) for path, label in folder.samples]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"fingerprint": fingerprint, "classes": folder.classes, "samples": samples}, f)
        os.replace(tmp, cache)
    return folder.classes, samples


def build_imagenet(data_path: str, cache_dir: str | None, train_crop: int = 224, val_resize: int = 256,
                   val_crop: int = 224) -> DataBundle:
    root = Path(data_path).expanduser()
    parts = {}
    for split, transform in (("train", train_transform(train_crop)), ("val", test_transform(val_resize, val_crop))):
        classes, samples = index_folder(root / split, Path(cache_dir) if cache_dir else None)
        parts[split] = IndexedImages(root / split, classes, samples, transform)
    if parts["train"].classes != parts["val"].classes:
        raise UserError(f"{root}/train and {root}/val hold different class folders; they must match.")
    return DataBundle(parts["train"], parts["val"], len(parts["train"].classes))
