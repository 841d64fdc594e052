"""CIFAR10-DVS: the VGG with sliding PSNs, trained with TET (82.3 / 85.3 / 85.9 % at T = 4 / 8 / 10).

    python cifar10dvs/train.py --data-dir /datasets/CIFAR10DVS -T 4
    torchrun --standalone --nproc_per_node=2 cifar10dvs/train.py --data-dir /datasets/CIFAR10DVS -T 4

The original command runs unchanged:
    python cifar10dvs/train.py -b 32 --epochs 200 -method PSN -TET -T 4
"""
import argparse
import pathlib
import sys
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cifar10dvs.data import build_cifar10dvs  # noqa: E402
from cifar10dvs.models import VGGSlidingPSN  # noqa: E402
from common import cli, engine  # noqa: E402
from common.checkpoint import neuron_in  # noqa: E402
from common.errors import exits_cleanly  # noqa: E402
from common.losses import mean_logits_cross_entropy, per_step_outputs_loss  # noqa: E402

METHODS = {"psn": "sliding_psn", "sliding_psn": "sliding_psn"}  # the original's -method PSN


def parse_args(argv=None):
    p = cli.build_parser(__doc__.splitlines()[0], epochs=200, batch_size=32, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=5e-4, T=4, data_dir="./data/CIFAR10DVS", output_dir="./runs/cifar10dvs",
                         amp=False, drop_last=False)
    p.add_argument("--download", action="store_true", help="let SpikingJelly download CIFAR10-DVS into --data-dir")
    p.add_argument("--method", "-method", type=str.lower, choices=sorted(METHODS), default="psn",
                   help="the neuron: PSN is the sliding PSN, as in the original")
    p.add_argument("--order", "-P", dest="order", type=int, default=2, help="k of the sliding PSN")
    p.add_argument("--exp-init", action=argparse.BooleanOptionalAction, default=True,
                   help="sliding PSN weights start as (..., 1/4, 1/2, 1)")
    p.add_argument("--tet", "-TET", dest="tet", action=argparse.BooleanOptionalAction, default=True,
                   help="TET loss (every step's cross-entropy); off: cross-entropy of the mean logits")
    p.add_argument("--tet-mse-weight", type=float, default=1e-3, help="weight of TET's MSE term (outputs vs 1.0)")
    p.add_argument("--resize-antialias", action=argparse.BooleanOptionalAction, default=False,
                   help="antialias the resize to 48x48 (the original's torchvision did not, on tensors)")
    args = p.parse_args(argv)
    args.method = METHODS[args.method]
    return args


def run_name(args) -> str:
    return f"T{args.T}_{args.method}_P{args.order}_{cli.recipe_tag(args)}{'_tet' if args.tet else ''}"


def infer_model_args(state_dict) -> dict:
    """The sliding PSN's order of an original-layout (or bare) checkpoint; its tensors are the same for every T."""
    neuron = neuron_in(state_dict, "features.1.")
    return {"order": neuron["order"]} if neuron.get("neuron") == "sliding_psn" else {}


def task_for(args) -> engine.Task:
    return engine.Task(
        name="cifar10dvs",
        build_data=lambda a: build_cifar10dvs(a.data_dir, a.T, a.download, a.resize_antialias),
        build_model=lambda a, classes: VGGSlidingPSN(classes, a.order, a.exp_init),
        run_name=run_name,
        train_loss=per_step_outputs_loss(args.tet, time_dim=1, mse_weight=args.tet_mse_weight),
        eval_loss=partial(mean_logits_cross_entropy, time_dim=1),
        scores=lambda out: out.mean(1),
        global_batch=True,  # -b 32 is the paper's total batch, over however many GPUs
        model_args=("T", "method", "order", "exp_init"),
        infer_model_args=infer_model_args,
        # Runs from before these settings existed trained with AMP on CUDA and antialiased resizing.
        legacy_args={"resize_antialias": True},
    )


@exits_cleanly
def main(argv=None):
    args = parse_args(argv)
    return engine.run(task_for, args)


if __name__ == "__main__":
    main()
