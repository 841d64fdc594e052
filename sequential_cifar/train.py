"""Sequential CIFAR-10/100: an image read one column per step, the paper's long-dependency test.

    python sequential_cifar/train.py --data-dir /datasets/CIFAR10 --neuron psn
    python sequential_cifar/train.py --data-dir /datasets/CIFAR100 -class-num 100 --neuron sliding_psn -P 32 --opt adamw --lr 0.001

The original commands run unchanged, e.g.
    python sequential_cifar/train.py -data-dir D -class-num 100 -amp -opt adamw -lr 0.001 -channels 128 -epochs 256 -neu mspsn -P 32
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from common import cli, engine  # noqa: E402
from common.checkpoint import neuron_in, tensor_shape  # noqa: E402
from common.data import build_cifar  # noqa: E402
from common.errors import UserError, exits_cleanly  # noqa: E402
from common.losses import smoothed_cross_entropy  # noqa: E402
from common.neurons import NEURON_ALIASES, NEURON_NAMES, MaskedPSN, canonical_neuron_name  # noqa: E402
from sequential_cifar.models import SequentialCIFARNet  # noqa: E402

COLUMNS = 32  # time steps: the image width
# Neurons that run one step at a time: the PSN sees all steps at once; GLIF is multi-step only.
STREAMABLE = ("masked_psn", "sliding_psn", "lif", "plif", "klif", "lif_no_reset")


def parse_args(argv=None):
    p = cli.build_parser(__doc__.splitlines()[0], epochs=256, batch_size=128, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=COLUMNS, output_dir="./runs/sequential_cifar")
    cli.add_cifar_flags(p, ("cifar", "digits"))
    p.set_defaults(channels=128)
    p.add_argument("--num-classes", "-class-num", dest="num_classes", type=int, choices=[10, 100], default=10,
                   help="CIFAR-10 or CIFAR-100")
    p.add_argument("--neuron", "-neu", choices=[*NEURON_NAMES, *NEURON_ALIASES], default="psn",
                   help="spiking neuron (the original names work too)")
    p.add_argument("--order", "-P", dest="order", type=int, default=32, help="k of the masked and sliding PSN")
    p.add_argument("--exp-init", "-exp-init", dest="exp_init", action="store_true",
                   help="sliding PSN weights start as (..., 1/4, 1/2, 1) instead of Kaiming uniform")
    p.add_argument("--streaming", action="store_true",
                   help="with --test-only: evaluate one column at a time, single-step (masked PSN at lambda 1, "
                        "sliding PSN, LIF family)")
    args = p.parse_args(argv)
    args.neuron = canonical_neuron_name(args.neuron)
    if args.T != COLUMNS:
        p.error(f"sequential CIFAR has one step per image column: T is {COLUMNS}.")
    if args.streaming and not args.test_only:
        p.error("--streaming evaluates trained weights: use it with --test-only --resume CHECKPOINT.")
    if args.streaming and args.neuron not in STREAMABLE:
        p.error(f"--streaming needs a neuron that runs one step at a time ({', '.join(STREAMABLE)}); "
                f"{args.neuron} does not.")
    if args.neuron in ("masked_psn", "sliding_psn") and not 1 <= args.order <= COLUMNS:
        p.error(f"--order must lie in 1..{COLUMNS}.")
    return args


def lambda_schedule(epoch: int, epochs: int) -> float:
    """The original masked-PSN schedule: lambda = min(8 * epoch / (epochs - 1), 1), set at each epoch's start."""
    return 1.0 if epochs <= 1 else min(8.0 * epoch / (epochs - 1), 1.0)


def set_lambda(model, epoch: int, args) -> dict:
    if args.neuron != "masked_psn":
        return {}
    lam = lambda_schedule(epoch, args.epochs)
    for m in model.modules():
        if isinstance(m, MaskedPSN):
            m.lambda_ = lam
    return {"neuron/lambda": lam}


def run_name(args) -> str:
    data = "digits_" if args.dataset == "digits" else f"cifar{args.num_classes}_"
    order = f"_P{args.order}" if args.neuron in ("masked_psn", "sliding_psn") else ""
    return f"{data}{args.neuron}_{cli.recipe_tag(args)}{order}"


def build_data(args):
    name = "digits" if args.dataset == "digits" else f"cifar{args.num_classes}"
    return build_cifar(name, args.data_dir, args.download, args.augment)


def build_model(args, num_classes):
    model = SequentialCIFARNet(args.channels, num_classes, args.neuron, args.order, args.exp_init, COLUMNS)
    model.streaming = args.streaming
    return model


def lambda_state(model) -> dict:
    lambdas = [m.lambda_.item() for m in model.modules() if isinstance(m, MaskedPSN)]
    return {"lambda": lambdas[0]} if lambdas else {}


def check_streamable(model, args) -> None:
    lambdas = lambda_state(model)
    if args.streaming and lambdas.get("lambda", 1.0) < 1.0:
        raise UserError(f"These masked-PSN weights have lambda = {lambdas['lambda']:g}: they look at future columns, "
                        "so they cannot stream; use a checkpoint from the end of training (lambda = 1).")


def upgrade_checkpoint(ckpt) -> None:
    """Before 2026-11-29 `glif` meant SpikingJelly's GatedLIFNode (now `glif_sj`); its tensors tell."""
    if ckpt.args.get("neuron") == "glif" and any(k.endswith(".v_threshold") for k in ckpt.state_dict):
        ckpt.args["neuron"] = "glif_sj"


def infer_model_args(state_dict) -> dict:
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


def task_for(args) -> engine.Task:
    return engine.Task(
        name="sequential_cifar",
        build_data=build_data,
        build_model=build_model,
        run_name=run_name,
        train_loss=smoothed_cross_entropy(args.label_smoothing),
        eval_loss=F.cross_entropy,
        on_epoch_start=set_lambda,
        check_loaded=check_streamable,
        model_args=("channels", "neuron", "order", "exp_init", "num_classes"),
        infer_model_args=infer_model_args,
        upgrade_checkpoint=upgrade_checkpoint,
    )


@exits_cleanly
def main(argv=None):
    args = parse_args(argv)
    return engine.run(task_for, args)


if __name__ == "__main__":
    main()
