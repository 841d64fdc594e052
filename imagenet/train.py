"""ImageNet: SEW ResNet with PSNs (ResNet-18 67.63 %, ResNet-34 70.54 % top-1 at T = 4).

    torchrun --nproc_per_node=8 imagenet/train.py --data-path /datasets/ImageNet --model sew_resnet18 -b 64 \\
        --load resnet18-f37072fd.pth --cache-dataset

The original command runs unchanged:
    torchrun --nproc_per_node=8 imagenet/train.py --cos_lr_T 320 --model sew_resnet34 -b 32 --output-dir ./logs --tb \\
        --print-freq 4096 --amp --cache-dataset --T 4 --lr 0.1 --epoch 320 --data-path /dataset/ImageNet2012 \\
        --load resnet34-b627a593.pth --tet
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from common import cli, engine  # noqa: E402
from common.checkpoint import load_matching, neuron_in, tensor_shape  # noqa: E402
from common.errors import exits_cleanly  # noqa: E402
from common.losses import per_step_outputs_loss  # noqa: E402
from common.neurons import NEURON_ALIASES, NEURON_NAMES, canonical_neuron_name  # noqa: E402
from imagenet.data import build_imagenet  # noqa: E402
from imagenet.models import MODELS  # noqa: E402


def parse_args(argv=None):
    p = cli.build_parser(__doc__.splitlines()[0], epochs=320, batch_size=32, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=4, cos_lr_T=320, workers=min(16, cli.available_cpus()), print_freq=100, drop_last=False,
                         data_dir="./data/ImageNet", output_dir="./runs/imagenet")
    p.add_argument("--model", choices=sorted(MODELS), default="sew_resnet18", help="SEW ResNet depth")
    p.add_argument("--neuron", "-neu", choices=[*NEURON_NAMES, *NEURON_ALIASES], default="psn",
                   help="spiking neuron (the original names work too)")
    p.add_argument("--order", "-P", dest="order", type=int, default=None, help="k of a masked or sliding PSN")
    p.add_argument("--tet", action=argparse.BooleanOptionalAction, default=True,
                   help="TET loss (mean over steps of the cross-entropy); off: cross-entropy of the mean logits")
    p.add_argument("--load", default=None, metavar="ANN_CHECKPOINT",
                   help="start from a torchvision ResNet's weights: every tensor matching by name and shape")
    p.add_argument("--cache-dataset", action="store_true", help="cache the file index of train/ and val/")
    p.add_argument("--cache-dir", default="~/.cache/psn-imagenet", help="where --cache-dataset keeps it")
    p.add_argument("--train-crop-size", type=int, default=224, help="RandomResizedCrop size")
    p.add_argument("--val-resize-size", type=int, default=256, help="test images: Resize, then ...")
    p.add_argument("--val-crop-size", type=int, default=224, help="... CenterCrop")
    p.add_argument("--tb", action="store_true", help="accepted for the original command; TensorBoard is always on")
    args = p.parse_args(argv)
    args.neuron = canonical_neuron_name(args.neuron)
    return args


def run_name(args) -> str:
    load = "_load" if args.load else ""
    return (f"{args.model}_{args.neuron}_T{args.T}_{cli.recipe_tag(args)}_coslr{args.cos_lr_T or args.epochs}"
            f"{load}{'_tet' if args.tet else ''}")


def load_ann_weights(model, args, report: bool) -> None:
    if not args.load:
        return
    copied, skipped, untouched = load_matching(model, args.load)
    if report:
        print(f"--load {args.load}: copied {len(copied)} tensors; skipped {len(skipped)} from the file "
              f"({', '.join(skipped[:6]) or 'none'}{' ...' if len(skipped) > 6 else ''}); "
              f"{len(untouched)} of the model keep their initialisation (neurons, pe).", flush=True)


def infer_model_args(state_dict) -> dict:
    """Depth, neuron, order and T of an original-layout (or bare) SEW ResNet checkpoint, from its tensors:
    ResNet-34 has a third block in layer1, ResNet-18 two; T is the PSN's size or the pe's length."""
    found = {}
    if tensor_shape(state_dict, "layer1.1.conv1.weight") is not None:
        found["model"] = "sew_resnet34" if tensor_shape(state_dict, "layer1.2.conv1.weight") else "sew_resnet18"
    neuron = neuron_in(state_dict, "sn1.")
    if "neuron" in neuron:
        found["neuron"] = neuron["neuron"]
        found.update({k: neuron[k] for k in ("order", "T") if k in neuron})
    pe = tensor_shape(state_dict, "pe")
    if pe is not None and len(pe) == 5:
        found["T"] = pe[0]
    return found


def task_for(args) -> engine.Task:
    return engine.Task(
        name="imagenet",
        build_data=lambda a: build_imagenet(a.data_dir, a.cache_dir if a.cache_dataset else None,
                                           a.train_crop_size, a.val_resize_size, a.val_crop_size),
        build_model=lambda a, classes: MODELS[a.model](T=a.T, num_classes=classes, neuron=a.neuron, order=a.order),
        run_name=run_name,
        train_loss=per_step_outputs_loss(args.tet, time_dim=0),
        # The original logged the test loss with its training criterion (TET with --tet).
        eval_loss=per_step_outputs_loss(args.tet, time_dim=0),
        scores=lambda out: out.mean(0),
        init_weights=load_ann_weights,
        model_args=("model", "neuron", "order", "T"),
        infer_model_args=infer_model_args,
    )


@exits_cleanly
def main(argv=None):
    args = parse_args(argv)
    return engine.run(task_for, args)


if __name__ == "__main__":
    main()
