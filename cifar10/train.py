"""CIFAR-10 with the PSN: the paper's 95.32 % run.

    python cifar10/train.py --data-dir /datasets/CIFAR10            # the paper's recipe
    python cifar10/train.py --dataset digits --channels 32 -b 32 --epochs 5 --opt adamw --lr 1e-3 --augment light

The original command runs unchanged:
    python cifar10/train.py -data-dir /datasets/CIFAR10 -amp -opt sgd -channels 256 -epochs 1024 -device cuda:0 -T 4
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from cifar10.models import CIFAR10Net, psn_factory  # noqa: E402
from common import cli, engine  # noqa: E402
from common.checkpoint import neuron_in, tensor_shape  # noqa: E402
from common.data import build_cifar  # noqa: E402
from common.errors import exits_cleanly  # noqa: E402
from common.losses import smoothed_cross_entropy  # noqa: E402

NEURONS = {"psn": "psn", "if5": "psn"}  # the original called the PSN IFNode5


def parse_args(argv=None):
    p = cli.build_parser(__doc__.splitlines()[0], epochs=1024, batch_size=128, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=4, output_dir="./runs/cifar10")
    cli.add_cifar_flags(p, ("cifar10", "digits"))
    p.add_argument("--neuron", "-neu", choices=sorted(NEURONS), default="psn", help="spiking neuron (if5: the original name)")
    # The original script's surrogate flag had one choice, the ATan every PSN here uses: accepted, not kept.
    p.add_argument("-sg", dest="original_sg", choices=["atan"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    del args.original_sg
    args.neuron = NEURONS[args.neuron]
    return args


def run_name(args) -> str:
    data = "" if args.dataset == "cifar10" else f"{args.dataset}_"
    return f"{data}{args.neuron}_T{args.T}_{cli.recipe_tag(args)}"


def infer_model_args(state_dict) -> dict:
    """Width and T of an original-layout (or bare) checkpoint, from its first convolution and PSN."""
    found = {}
    conv = tensor_shape(state_dict, "conv.0.weight")
    if conv is not None and len(conv) == 4:
        found["channels"] = conv[0]
    neuron = neuron_in(state_dict, "conv.2.")
    if neuron.get("neuron") == "psn":
        found["T"] = neuron["T"]
    return found


def task_for(args) -> engine.Task:
    return engine.Task(
        name="cifar10",
        build_data=lambda a: build_cifar(a.dataset, a.data_dir, a.download, a.augment),
        build_model=lambda a, classes: CIFAR10Net(a.channels, a.T, classes, psn_factory(a.T)),
        run_name=run_name,
        train_loss=smoothed_cross_entropy(args.label_smoothing),
        eval_loss=F.cross_entropy,
        model_args=("channels", "T", "neuron"),
        infer_model_args=infer_model_args,
    )


@exits_cleanly
def main(argv=None):
    args = parse_args(argv)
    return engine.run(task_for, args)


if __name__ == "__main__":
    main()
