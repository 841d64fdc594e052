"""ImageNet: SEW ResNet with PSNs (ResNet-18 67.63 %, ResNet-34 70.54 % top-1 at T = 4).

    torchrun --nproc_per_node=8 imagenet/train.py --data-path /datasets/ImageNet --model sew_resnet18 -b 64 \\
        --load resnet18-f37072fd.pth --cache-dataset

The original command runs unchanged:
    torchrun --nproc_per_node=8 imagenet/train.py --cos_lr_T 320 --model sew_resnet34 -b 32 --output-dir ./logs --tb \\
        --print-freq 4096 --amp --cache-dataset --T 4 --lr 0.1 --epoch 320 --data-path /dataset/ImageNet2012 \\
        --load resnet34-b627a593.pth --tet
"""
import argparse

from common import cli
from common.errors import exits_cleanly
from common.losses import per_step_outputs_loss
from common.run import run
from common.task import Task
from common.weights import load_matching, neuron_in, tensor_shape
from imagenet.data import build_imagenet
from imagenet.models import MODELS


def parser():
    p = cli.build_parser(__doc__.splitlines()[0], epochs=320, batch_size=32, opt="sgd", lr=0.1, momentum=0.9,
                         weight_decay=0.0, T=4, cos_lr_T=320, workers=min(16, cli.available_cpus()), print_freq=100,
                         drop_last=False, data_dir="./data/ImageNet", output_dir="./runs/imagenet")
    p.add_argument("--model", choices=sorted(MODELS), default="sew_resnet18", kind=cli.MODEL, help="SEW ResNet depth")
    cli.add_neuron_flags(p, default="psn", order=None)
    p.add_argument("--tet", action=argparse.BooleanOptionalAction, default=True,
                   help="TET loss (mean over steps of the cross-entropy); off: cross-entropy of the mean logits")
    p.add_argument("--load", default=None, metavar="ANN_CHECKPOINT", kind=cli.INVOCATION,
                   help="start from a torchvision ResNet's weights: every tensor matching by name and shape")
    p.add_argument("--cache-dataset", action="store_true", kind=cli.INVOCATION,
                   help="cache the file index of train/ and val/")
    p.add_argument("--cache-dir", default="~/.cache/psn-imagenet", kind=cli.INVOCATION,
                   help="where --cache-dataset keeps it")
    p.add_argument("--train-crop-size", type=int, default=224, bounds=cli.Bounds(1, 4096),
                   help="RandomResizedCrop size")
    p.add_argument("--val-resize-size", type=int, default=256, bounds=cli.Bounds(1, 4096),
                   help="test images: Resize, then ...")
    p.add_argument("--val-crop-size", type=int, default=224, bounds=cli.Bounds(1, 4096), help="... CenterCrop")
    p.add_argument("--tb", action="store_true", kind=cli.INVOCATION,
                   help="accepted for the original command; TensorBoard is always on")
    return p


def run_name(settings) -> str:
    load = "_load" if settings.load else ""
    return (f"{settings.model}_{settings.neuron}_T{settings.T}_{cli.recipe_tag(settings)}"
            f"_coslr{settings.cos_lr_T or settings.epochs}{load}{'_tet' if settings.tet else ''}")


def load_ann_weights(model, settings, report: bool) -> None:
    if not settings.load:
        return
    copied, skipped, untouched = load_matching(model, settings.load)
    if report:
        print(f"--load {settings.load}: copied {len(copied)} tensors; skipped {len(skipped)} from the file "
              f"({', '.join(skipped[:6]) or 'none'}{' ...' if len(skipped) > 6 else ''}); "
              f"{len(untouched)} of the model keep their initialisation (neurons, pe).", flush=True)


def infer_settings(state_dict) -> dict:
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


TASK = Task(
    name="imagenet",
    parser=parser,
    build_data=lambda s: build_imagenet(s.data_dir, s.cache_dir if s.cache_dataset else None, s.train_crop_size,
                                       s.val_resize_size, s.val_crop_size),
    build_model=lambda s, classes: MODELS[s.model](T=s.T, num_classes=classes, neuron=s.neuron, order=s.order),
    run_name=run_name,
    train_loss=lambda s: per_step_outputs_loss(s.tet, time_dim=0),
    # The original logged the test loss with its training criterion (TET with --tet).
    test_loss=lambda s: per_step_outputs_loss(s.tet, time_dim=0),
    scores=lambda out: out.mean(0),
    init_weights=load_ann_weights,
    infer_settings=infer_settings,
)


@exits_cleanly
def main(argv=None):
    return run(TASK, argv)


if __name__ == "__main__":
    main()
