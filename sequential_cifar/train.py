"""Sequential CIFAR-10/100: an image read one column per step, the paper's long-dependency test.

    python sequential_cifar/train.py --data-dir /datasets/CIFAR10 --neuron psn
    python sequential_cifar/train.py --data-dir /datasets/CIFAR100 -class-num 100 --neuron sliding_psn -P 32 --opt adamw --lr 0.001

The original commands run unchanged, e.g.
    python sequential_cifar/train.py -data-dir D -class-num 100 -amp -opt adamw -lr 0.001 -channels 128 -epochs 256 -neu mspsn -P 32
"""


from common import cli
from common.data import build_cifar
from common.errors import UserError, exits_cleanly
from common.losses import smoothed_cross_entropy
from common.neuron_registry import NEURONS, streams
from common.neurons import MaskedPSN
from common.run import run
from common.task import Task
from common.weights import neuron_in, tensor_shape
from sequential_cifar.models import SequentialCIFARNet

COLUMNS = 32  # time steps: the image width


def parser():
    p = cli.build_parser(__doc__.splitlines()[0], epochs=256, batch_size=128, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=COLUMNS, output_dir="./runs/sequential_cifar")
    cli.add_cifar_flags(p, ("cifar", "digits"))
    p.set_defaults(channels=128)
    p.add_argument("--num-classes", "-class-num", dest="num_classes", type=int, choices=[10, 100], default=10,
                   kind=cli.MODEL, help="CIFAR-10 or CIFAR-100")
    cli.add_neuron_flags(p, default="psn", order=32)
    p.add_argument("--exp-init", "-exp-init", dest="exp_init", action="store_true", kind=cli.MODEL,
                   help="sliding PSN weights start as (..., 1/4, 1/2, 1) instead of Kaiming uniform")
    p.add_argument("--streaming", action="store_true", kind=cli.INVOCATION,
                   help="with --test-only: evaluate one column at a time, single-step (masked PSN at lambda 1, "
                        "sliding PSN, LIF family); the neuron comes from the checkpoint")
    return p


def check_settings(settings) -> None:
    problems = []
    if settings.T != COLUMNS:
        problems.append(f"sequential CIFAR has one step per image column: T is {COLUMNS}")
    if settings.streaming and not settings.test_only:
        problems.append("--streaming evaluates trained weights: use it with --test-only --resume CHECKPOINT")
    elif settings.streaming and not NEURONS[settings.neuron].streams:
        problems.append(f"--streaming needs a neuron that runs one step at a time "
                        f"({', '.join(n for n, e in NEURONS.items() if e.streams)}); {settings.neuron} does not")
    if NEURONS[settings.neuron].needs_order and not 1 <= settings.order <= COLUMNS:
        problems.append(f"--order must lie in 1..{COLUMNS}")
    if problems:
        raise UserError(f"{'; '.join(problems)}.")


def run_name(settings) -> str:
    data = "digits_" if settings.dataset == "digits" else f"cifar{settings.num_classes}_"
    order = f"_P{settings.order}" if NEURONS[settings.neuron].needs_order else ""
    return f"{data}{settings.neuron}_{cli.recipe_tag(settings)}{order}"


def build_data(settings):
    name = "digits" if settings.dataset == "digits" else f"cifar{settings.num_classes}"
    return build_cifar(name, settings.data_dir, settings.download, settings.augment)


def build_model(settings, num_classes):
    model = SequentialCIFARNet(settings.channels, num_classes, settings.neuron, settings.order, settings.exp_init,
                               COLUMNS)
    model.streaming = settings.streaming
    return model


def check_streamable(model, settings) -> None:
    lambdas = [m.lambda_.item() for m in model.modules() if isinstance(m, MaskedPSN)]
    if settings.streaming and lambdas and lambdas[0] < 1.0:
        raise UserError(f"These masked-PSN weights have lambda = {lambdas[0]:g}: they look at future columns, "
                        "so they cannot stream; use a checkpoint from the end of training (lambda = 1).")
    if settings.streaming and streams(model) is not None:
        raise UserError(f"The {streams(model)} cannot stream: each of its outputs depends on all {COLUMNS} inputs.")


def upgrade_recorded(recorded: dict, state_dict: dict) -> dict:
    """Before 2026-11-29 `glif` meant SpikingJelly's GatedLIFNode (now `glif_sj`); its tensors tell."""
    if recorded.get("neuron") == "glif" and any(k.endswith(".v_threshold") for k in state_dict):
        return {**recorded, "neuron": "glif_sj"}
    return recorded


def infer_settings(state_dict) -> dict:
    """Width, neuron, order and classes of an original-layout (or bare) checkpoint, from its tensors."""
    found = {}
    conv = tensor_shape(state_dict, "conv.0.weight")
    if conv is not None and len(conv) == 3:
        found["channels"] = conv[0]
    neuron = neuron_in(state_dict, "conv.2.")
    if "neuron" in neuron:
        found["neuron"] = neuron["neuron"]
        if "order" in neuron:
            found["order"] = neuron["order"]
    classifier = tensor_shape(state_dict, "fc.3.weight")
    if classifier is not None and classifier[0] in (10, 100):
        found["num_classes"] = classifier[0]
    return found


TASK = Task(
    name="sequential_cifar",
    parser=parser,
    build_data=build_data,
    build_model=build_model,
    run_name=run_name,
    train_loss=lambda s: smoothed_cross_entropy(s.label_smoothing),
    check_settings=check_settings,
    check_loaded=check_streamable,
    infer_settings=infer_settings,
    upgrade_recorded=upgrade_recorded,
    evaluation_mode=lambda s: "one column at a time (--streaming: single-step neurons, as a stream arrives)"
    if s.streaming else None,
)


@exits_cleanly
def main(argv=None):
    return run(TASK, argv)


if __name__ == "__main__":
    main()
