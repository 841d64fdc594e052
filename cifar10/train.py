"""CIFAR-10 with the PSN: the paper's 95.32 % run.

    python cifar10/train.py --data-dir /datasets/CIFAR10            # the paper's recipe
    python cifar10/train.py --dataset digits --channels 32 -b 32 --epochs 5   # no download, 2 CPU minutes

The original command runs unchanged:
    python cifar10/train.py -data-dir /datasets/CIFAR10 -amp -opt sgd -channels 256 -epochs 1024 -device cuda:0 -T 4
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from cifar10.models import CIFAR10Net, psn_factory  # noqa: E402
from common import cli, engine  # noqa: E402
from common.data import build_cifar  # noqa: E402
from common.errors import exits_cleanly  # noqa: E402

NEURONS = {"psn": "psn", "if5": "psn"}  # the original called the PSN IFNode5


def parse_args(argv=None):
    p = cli.build_parser(__doc__.splitlines()[0], epochs=1024, batch_size=128, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=4, output_dir="./runs/cifar10")
    p.add_argument("--dataset", choices=["cifar10", "digits"], default="cifar10")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if missing")
    p.add_argument("--channels", "-channels", type=int, default=256)
    p.add_argument("--neuron", "-neu", choices=sorted(NEURONS), default="psn")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    args = p.parse_args(argv)
    args.neuron = NEURONS[args.neuron]
    return args


def run_name(args) -> str:
    amp = "_amp" if args.amp or (args.amp is None and args.device.startswith("cuda")) else ""
    data = "" if args.dataset == "cifar10" else f"{args.dataset}_"
    return f"{data}{args.neuron}_T{args.T}_e{args.epochs}_b{args.batch_size}_{args.opt}_lr{args.lr}_c{args.channels}{amp}"


def task_for(args) -> engine.Task:
    return engine.Task(
        name="cifar10",
        build_data=lambda a: build_cifar(a.dataset, a.data_dir, a.download),
        build_model=lambda a, classes: CIFAR10Net(a.channels, a.T, classes, psn_factory(a.T)),
        run_name=run_name,
        train_loss=lambda out, target: F.cross_entropy(out, target, label_smoothing=args.label_smoothing),
        eval_loss=F.cross_entropy,
    )


@exits_cleanly
def main(argv=None):
    args = parse_args(argv)
    return engine.run(task_for(args), args)


if __name__ == "__main__":
    main()
