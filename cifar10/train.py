"""CIFAR-10 with the PSN: the paper's 95.32 % run.

    python cifar10/train.py --data-dir /datasets/CIFAR10            # the paper's recipe
    python cifar10/train.py --dataset digits --channels 32 -b 32 --epochs 5 --opt adamw --lr 1e-3 --augment light

The original command runs unchanged:
    python cifar10/train.py -data-dir /datasets/CIFAR10 -amp -opt sgd -channels 256 -epochs 1024 -device cuda:0 -T 4
"""


from cifar10.models import CIFAR10Net
from common import cli
from common.data import build_cifar
from common.errors import exits_cleanly
from common.losses import smoothed_cross_entropy
from common.run import run
from common.task import Task
from common.weights import neuron_in, tensor_shape


def parser():
    p = cli.build_parser(__doc__.splitlines()[0], epochs=1024, batch_size=128, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=4, output_dir="./runs/cifar10")
    cli.add_cifar_flags(p, ("cifar10", "digits"))
    # The network of the paper's CIFAR-10 run: the PSN (IFNode5 in the original).
    p.add_argument("--neuron", "-neu", type=cli.neuron_name, choices=("psn",), default="psn", kind=cli.MODEL,
                   help="spiking neuron (if5: the original name)")
    # The original script's surrogate flag had one choice, the ATan every PSN here uses: accepted, not kept.
    cli.accept_and_ignore(p, "-sg", choices=["atan"])
    return p


def run_name(settings) -> str:
    data = "" if settings.dataset == "cifar10" else f"{settings.dataset}_"
    return f"{data}{settings.neuron}_T{settings.T}_{cli.recipe_tag(settings)}"


def infer_settings(state_dict) -> dict:
    """Width and T of an original-layout (or bare) checkpoint, from its first convolution and PSN."""
    found = {}
    conv = tensor_shape(state_dict, "conv.0.weight")
    if conv is not None and len(conv) == 4:
        found["channels"] = conv[0]
    neuron = neuron_in(state_dict, "conv.2.")
    if neuron.get("neuron") == "psn":
        found["T"] = neuron["T"]
    return found


TASK = Task(
    name="cifar10",
    parser=parser,
    build_data=lambda s: build_cifar(s.dataset, s.data_dir, s.download, s.augment),
    build_model=lambda s, classes: CIFAR10Net(s.channels, s.T, classes, s.neuron),
    run_name=run_name,
    train_loss=lambda s: smoothed_cross_entropy(s.label_smoothing),
    infer_settings=infer_settings,
)


@exits_cleanly
def main(argv=None):
    return run(TASK, argv)


if __name__ == "__main__":
    main()
