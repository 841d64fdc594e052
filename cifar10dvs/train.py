"""CIFAR10-DVS: the VGG with sliding PSNs, trained with TET (82.3 / 85.3 / 85.9 % at T = 4 / 8 / 10).

    python cifar10dvs/train.py --data-dir /datasets/CIFAR10DVS -T 4
    torchrun --standalone --nproc_per_node=2 cifar10dvs/train.py --data-dir /datasets/CIFAR10DVS -T 4

The original command runs unchanged:
    python cifar10dvs/train.py -b 32 --epochs 200 -method PSN -TET -T 4
"""
import argparse
from functools import partial

from cifar10dvs.data import build_cifar10dvs
from cifar10dvs.models import VGGSlidingPSN
from common import cli
from common.errors import exits_cleanly
from common.losses import mean_logits_cross_entropy, per_step_outputs_loss
from common.run import run
from common.task import Task
from common.weights import neuron_in


def method(name: str) -> str:
    """The original's `-method PSN` meant the sliding PSN."""
    if name.lower() in ("psn", "sliding_psn"):
        return "sliding_psn"
    raise argparse.ArgumentTypeError(f"unknown method {name!r} (PSN: the sliding PSN)")


def parser():
    p = cli.build_parser(__doc__.splitlines()[0], epochs=200, batch_size=32, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=5e-4, T=4, data_dir="./data/CIFAR10DVS", output_dir="./runs/cifar10dvs",
                         amp=False, drop_last=False)
    p.add_argument("--download", action="store_true", kind=cli.INVOCATION,
                   help="let SpikingJelly download CIFAR10-DVS into --data-dir")
    p.add_argument("--method", "-method", type=method, choices=["sliding_psn"], default="sliding_psn",
                   kind=cli.MODEL, help="the neuron: PSN is the sliding PSN, as in the original")
    p.add_argument("--order", "-P", dest="order", type=int, default=2, kind=cli.MODEL, bounds=cli.Bounds(1, 1024),
                   help="k of the sliding PSN")
    p.add_argument("--exp-init", action=argparse.BooleanOptionalAction, default=True, kind=cli.MODEL,
                   help="sliding PSN weights start as (..., 1/4, 1/2, 1)")
    p.add_argument("--tet", "-TET", dest="tet", action=argparse.BooleanOptionalAction, default=True,
                   help="TET loss (every step's cross-entropy); off: cross-entropy of the mean logits")
    p.add_argument("--tet-mse-weight", type=float, default=1e-3, bounds=cli.Bounds(0, 1),
                   help="weight of TET's MSE term (outputs vs 1.0)")
    p.add_argument("--resize-antialias", action=argparse.BooleanOptionalAction, default=False,
                   help="antialias the resize to 48x48 (the original's torchvision did not, on tensors)")
    return p


def run_name(settings) -> str:
    return (f"T{settings.T}_{settings.method}_P{settings.order}_{cli.recipe_tag(settings)}"
            f"{'_tet' if settings.tet else ''}")


def infer_settings(state_dict) -> dict:
    """The sliding PSN's order of an original-layout (or bare) checkpoint; its tensors are the same for every T."""
    neuron = neuron_in(state_dict, "features.1.")
    return {"order": neuron["order"]} if neuron.get("neuron") == "sliding_psn" else {}


TASK = Task(
    name="cifar10dvs",
    parser=parser,
    build_data=lambda s: build_cifar10dvs(s.data_dir, s.T, s.download, s.resize_antialias),
    build_model=lambda s, classes: VGGSlidingPSN(classes, s.order, s.exp_init),
    run_name=run_name,
    train_loss=lambda s: per_step_outputs_loss(s.tet, time_dim=1, mse_weight=s.tet_mse_weight),
    test_loss=lambda s: partial(mean_logits_cross_entropy, time_dim=1),
    scores=lambda out: out.mean(1),
    global_batch=True,  # -b 32 is the paper's total batch, over however many GPUs
    infer_settings=infer_settings,
    file_cannot_tell={"T": (4, 8, 10)},  # the sliding PSN's weights are the same for every T
    # Runs from before these settings existed trained with AMP on CUDA and antialiased resizing.
    legacy_settings={"resize_antialias": True},
)


@exits_cleanly
def main(argv=None):
    return run(TASK, argv)


if __name__ == "__main__":
    main()
