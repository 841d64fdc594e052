"""Datasets, the paper's CIFAR augmentation, batch-level mixup/cutmix, and loaders.

The CIFAR tasks (cifar10/ and sequential_cifar/) share all of this: CIFAR-10 and
CIFAR-100 through torchvision, and `digits`, scikit-learn's 8x8 digits scaled to
32x32 RGB, which needs no download and goes through the same transforms, for
quick starts and tests.
"""
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .distributed import DistEnv, ShardSampler
from .errors import UserError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    # Applied to each training batch (images, targets) on the device, in the main process.
    batch_transform: Callable | None = None


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1,797 8x8 images) as 32x32 RGB PIL images.

    A fixed stratified split: 1,437 train / 360 test. Each image is scaled from
    0..16 to 0..255 and enlarged with bilinear interpolation, so the CIFAR
    transforms apply unchanged.
    """

    TEST_SIZE = 360

    def __init__(self, train: bool, transform=None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        idx_train, idx_test = train_test_split(np.arange(len(digits.target)), test_size=self.TEST_SIZE,
                                               random_state=0, stratify=digits.target)
        idx = idx_train if train else idx_test
        small = torch.from_numpy(digits.images[idx] * (255.0 / 16.0)).float()[:, None]
        big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
        self.images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
        self.targets = digits.target[idx].tolist()
        self.classes = [str(i) for i in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i]).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


def cifar_train_transform(mean, std):
    """The paper's CIFAR augmentation: flip, TrivialAugmentWide, normalise, random erasing p=0.1."""
    return T.Compose([
        T.RandomHorizontalFlip(),
        T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
        T.RandomErasing(p=0.1),
    ])


def light_train_transform(mean, std):
    """A small-data recipe (not the paper's): shifts of up to 2 pixels, nothing that mirrors or
    recolours, and no mixing, for the 1,437 training images of `digits` (a flipped 2 is no 2)."""
    return T.Compose([T.RandomCrop(32, padding=2), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(mean, std)])


def cifar_test_transform(mean, std):
    return T.Compose([T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


class MixupCutmix:
    """Mix a batch with mixup (alpha 0.2) or cutmix (alpha 1.0), one chosen at random.

    Targets become class probabilities; the loss takes them as soft labels. It runs in
    the main process on the batch already on the device: cheap there, and its random
    draws come from the main process's generator, so they do not depend on -j.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0):
        self.mix = T.RandomChoice([T.MixUp(alpha=mixup_alpha, num_classes=num_classes),
                                   T.CutMix(alpha=cutmix_alpha, num_classes=num_classes)])

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        return self.mix(images, targets)


class EpochSeeded(Dataset):
    """Seed each sample's augmentation from (seed, epoch, index).

    A sample is then augmented the same way whatever the number of loader workers or
    processes and whatever the order it is drawn in: results do not depend on -j or on
    the world size, and a resumed epoch replays exactly. The epoch travels with each index
    ((epoch, index) pairs from EpochTagged), so loader workers can live across epochs.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch, within torch's 64-bit seed range for every
    --seed (the same value as the plain formula wherever that did not overflow)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**64


def _draw_seed() -> int:
    return int(torch.empty((), dtype=torch.int64).random_().item())


class EpochShuffle(Sampler):
    """A random order of range(n), drawn when the epoch is set (right after the engine seeds the
    global generator from (seed, epoch)), exactly as torch's RandomSampler drew it when a loader
    was made anew each epoch: same order, same draws from the global generator, whatever -j."""

    def __init__(self, n: int):
        self.n, self.order_seed = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.order_seed = _draw_seed()

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.order_seed)).tolist())

    def __len__(self) -> int:
        return self.n


class EpochTagged(Sampler):
    """A sampler's indices as (epoch, index) pairs; `set_epoch` reaches the wrapped sampler too.

    The sampler runs in the main process at the start of each epoch, so persistent workers
    learn the epoch from the keys they are given, not from state they would never see change.
    """

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch, self.skipped = sampler, 0, 0

    def set_epoch(self, epoch: int) -> None:
        # A loader made anew each epoch drew its workers' base seed from the global generator
        # first: draw it here too, so persistent workers change none of the training's draws.
        _draw_seed()
        self.epoch, self.skipped = epoch, 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def skip(self, count: int) -> None:
        """Leave out this epoch's first `count` indices (those a mid-epoch checkpoint had trained on)."""
        self.skipped = min(count, len(self.sampler))

    def __iter__(self):
        epoch, skipped = self.epoch, self.skipped
        return ((epoch, i) for i in itertools.islice(self.sampler, skipped, None))

    def __len__(self) -> int:
        return len(self.sampler) - self.skipped


def build_cifar(name: str, data_dir: str, download: bool, augment: str = "paper") -> DataBundle:
    """CIFAR-10 / CIFAR-100 (torchvision) or `digits`, with the paper's transforms and mixing
    (`augment='paper'`) or the light small-data recipe (`'light'`: small shifts, no mixing)."""
    if augment not in ("paper", "light"):
        raise UserError(f"Unknown augmentation {augment!r}; choose paper or light.")
    train_transform = cifar_train_transform if augment == "paper" else light_train_transform
    if name == "digits":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
        train = DigitsDataset(True, train_transform(mean, std))
        test = DigitsDataset(False, cifar_test_transform(mean, std))
        return DataBundle(train, test, 10, MixupCutmix(10) if augment == "paper" else None)
    if name not in ("cifar10", "cifar100"):
        raise UserError(f"Unknown dataset {name!r}; choose cifar10, cifar100 or digits.")
    cls, mean, std = ((datasets.CIFAR10, CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10"
                      else (datasets.CIFAR100, CIFAR100_MEAN, CIFAR100_STD))
    root = Path(data_dir).expanduser()
    try:
        train = cls(str(root), train=True, transform=train_transform(mean, std), download=download)
        test = cls(str(root), train=False, transform=cifar_test_transform(mean, std), download=download)
    except RuntimeError as e:
        if "not found or corrupted" in str(e):
            raise UserError(f"{cls.__name__} was not found in {root} (torchvision looks for "
                            f"{cls.base_folder}/ there); pass --data-dir pointing at it, or add --download "
                            "to fetch it.") from None
        raise
    except OSError as e:
        raise UserError(f"Could not get {cls.__name__} into {root}: {e}.") from None
    classes = len(train.classes)
    return DataBundle(train, test, classes, MixupCutmix(classes) if augment == "paper" else None)


def make_loader(dataset: Dataset, batch_size: int, workers: int, train: bool, env: DistEnv, seed: int,
                pin_memory: bool = False, drop_last: bool = True) -> DataLoader:
    """Training: shuffled (DistributedSampler under DDP), the last partial batch dropped where the
    task's original script dropped it, augmentation seeded per sample (EpochSeeded: call its set_epoch).
    Evaluation: in order, every sample exactly once across ranks."""
    if train:
        # The order is a function of (seed, epoch) (see EpochShuffle, DistributedSampler); the
        # loader's own seed draws come from a generator of its own, so the global one (dropout,
        # mixing) sees the same draws whatever -j, and the draws of earlier versions of this code.
        inner = DistributedSampler(dataset, env.world_size, env.rank, shuffle=True, seed=seed) \
            if env.enabled else EpochShuffle(len(dataset))
        return DataLoader(EpochSeeded(dataset, seed), batch_size, sampler=EpochTagged(inner), num_workers=workers,
                          pin_memory=pin_memory, drop_last=drop_last, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(seed))
    sampler = ShardSampler(len(dataset), env) if env.enabled else None
    return DataLoader(dataset, batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=False, persistent_workers=workers > 0)
