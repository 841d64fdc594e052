"""The flags every task shares, with the original repository's spellings as aliases.

Long `--kebab-case` flags; the original scripts' flags (`-data-dir`, `-amp`,
`-opt`, `-b`, `-j`, `-epochs`, `-T`, `-device`, `-resume`, ...) parse to the same
options, so their published commands run unchanged. A task passes its paper
defaults to `build_parser` and adds only its own flags.
"""
import argparse
import os

import torch


class RecipeParser(argparse.ArgumentParser):
    """An ArgumentParser that also records which options the command line gave explicitly.

    `args.explicit` (a set of dests) lets a resumed run tell a setting the user typed from
    one that is only the task's default: the checkpoint's recorded value wins over the
    latter, so a run continues with what it was trained with even after a default changes.
    """

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        if not hasattr(parsed, "explicit"):
            given = argparse.Namespace()
            saved = [(a, a.default) for a in self._actions]
            saved_defaults, self._defaults = self._defaults, {}
            try:
                for action, _ in saved:
                    action.default = argparse.SUPPRESS
                super().parse_known_args(args, given)
            finally:
                self._defaults = saved_defaults
                for action, default in saved:
                    action.default = default
            parsed.explicit = frozenset(vars(given))
        return parsed, rest


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default (the task's recipe value) once, also those a help text names."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser(description: str, **defaults) -> argparse.ArgumentParser:
    p = RecipeParser(description=description, allow_abbrev=False, formatter_class=HelpFormatter)
    p._optionals.title = "task settings"  # the flags a task adds itself
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", "-data-dir", "--data-path", dest="data_dir", default="./data",
                   help="dataset root")
    g.add_argument("--output-dir", "-out-dir", "--out-dir", dest="output_dir", default="./runs",
                   help="each run gets its own directory below this one")
    g.add_argument("--run-name", default=None, help="run directory name (default: built from the main settings)")
    g.add_argument("--workers", "-j", dest="workers", type=int, default=min(4, available_cpus()),
                   help="data loading processes per GPU (default: 4, or fewer CPUs)")
    g.add_argument("--print-freq", type=int, default=50,
                   help="steps between progress updates (each one waits for the GPU); off a terminal, one line each")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "-epochs", "--epoch", dest="epochs", type=int, default=100, help="epochs of the run")
    g.add_argument("--batch-size", "-b", dest="batch_size", type=int, default=128,
                   help="batch size per process")
    g.add_argument("--opt", "-opt", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    g.add_argument("--lr", "-lr", type=float, default=0.1, help="learning rate at the start of the cosine schedule")
    g.add_argument("--momentum", "-momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=0.0, help="weight decay")
    g.add_argument("--cos-lr-T", "--cos_lr_T", dest="cos_lr_T", type=int, default=None,
                   help="period of the cosine schedule in epochs (default: --epochs)")
    g.add_argument("--amp", "-amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision in training; evaluation is always fp32 (None: on with CUDA, off on CPU)")
    g.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default=None,
                   help="the --amp precision (None: float16 on CUDA, with a gradient scaler; bfloat16 on CPU)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM",
                   help="clip the gradients' global L2 norm to NORM (timm's dispatch_clip_grad); None: no clipping")
    g.add_argument("--warmup-epochs", type=int, default=0,
                   help="linear warmup from --warmup-lr before the cosine (timm's CosineLRScheduler); 0: the paper's "
                        "plain cosine")
    g.add_argument("--warmup-lr", type=float, default=1e-5, help="learning rate at the start of the warmup")
    g.add_argument("--model-ema", action="store_true",
                   help="keep an exponential moving average of the weights (timm's ModelEmaV3), evaluated and "
                        "saved beside the model")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay per optimizer step")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=True,
                   help="drop each epoch's last partial training batch (the task's original script decides)")
    g.add_argument("--seed", type=int, default=2023,
                   help="seeds the model's init, the data order and every augmentation draw")

    g = p.add_argument_group("model")
    g.add_argument("--T", "-T", dest="T", type=int, default=4, help="time steps")

    g = p.add_argument_group("running")
    g.add_argument("--device", "-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="under torchrun each process takes cuda:LOCAL_RANK")
    g.add_argument("--resume", "-resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint (or start from an original-format one); 'auto': the "
                        "run directory these settings name, if it holds a checkpoint, else a new run; an older "
                        "checkpoint with a new --run-name forks a new run from it")
    g.add_argument("--test-only", action="store_true", help="evaluate --resume's weights on the test set and exit")
    g.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    g.add_argument("--channels-last", action="store_true", help="channels-last activations (GPU)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (slower): a resumed run then matches an uninterrupted one on GPUs too")
    g.add_argument("--spike-stats", action="store_true",
                   help="firing rate of every spiking layer, synaptic operations and an energy estimate per sample "
                        "on the test set (TensorBoard spikes/, metrics.jsonl, the --test-only JSON)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model (the fused PSN kernels stay single custom ops)")
    g.add_argument("--dist-timeout", type=float, default=10.0, metavar="MINUTES",
                   help="under torchrun, how long a process waits for the others in a collective before the run ends "
                        "with an error (a peer that hung or died)")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (split a long run into jobs); resume continues")
    p.set_defaults(**defaults)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Values argparse cannot check on its own: one UserError (exit 2) naming every bad one."""
    import math

    def flag(name):
        return "--" + name.replace("_", "-")

    bad = [f"{flag(name)} must be a positive integer" for name in
           ("epochs", "batch_size", "T", "print_freq", "channels", "stop_after", "cos_lr_T", "order")
           if getattr(args, name, None) is not None and getattr(args, name) < 1]
    for name in ("lr", "clip_grad", "warmup_lr", "dist_timeout"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad.append(f"{flag(name)} must be a positive number")
    for name, upper in (("momentum", 1), ("weight_decay", 1e3), ("label_smoothing", 1), ("tet_mse_weight", 1)):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and 0 <= value < upper):
            bad.append(f"{flag(name)} is out of range")
    if getattr(args, "model_ema_decay", 0.5) is not None and not 0 < getattr(args, "model_ema_decay", 0.5) < 1:
        bad.append("--model-ema-decay must lie between 0 and 1")
    if getattr(args, "warmup_epochs", 0) < 0 or getattr(args, "warmup_epochs", 0) >= max(args.epochs, 1):
        bad.append("--warmup-epochs must be >= 0 and fewer than --epochs")
    if args.test_only and not args.resume:
        bad.append("--test-only needs --resume CHECKPOINT (the weights to evaluate)")
    if args.workers < 0:
        bad.append("--workers must be >= 0")
    try:
        device = torch.device(args.device)
        if device.type not in ("cpu", "cuda"):
            bad.append(f"--device {args.device} is not supported (cpu or cuda[:N])")
    except (RuntimeError, TypeError):
        bad.append(f"--device {args.device!r} is not a device (cpu or cuda[:N])")
    if bad:
        from common.errors import UserError

        raise UserError(f"{'; '.join(bad)}.")


def add_cifar_flags(p: argparse.ArgumentParser, datasets: tuple[str, ...]) -> None:
    """Flags of the two CIFAR tasks: which data, whether to download it, the loss's smoothing, width."""
    g = p.add_argument_group("CIFAR")
    g.add_argument("--dataset", choices=datasets, default=datasets[0],
                   help="digits: scikit-learn's 8x8 digits as 32x32 RGB, no download (quick start, tests)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    g.add_argument("--augment", choices=["paper", "light"], default="paper",
                   help="paper: flip, TrivialAugmentWide, random erasing, mixup/cutmix; light: 2-pixel shifts only "
                        "(small data such as digits; not the paper's)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="of the training loss (none at test)")
    g.add_argument("--channels", "-channels", type=int, default=256, help="width of the convolutions")


def recipe_tag(args: argparse.Namespace) -> str:
    """The part of a run name every task shares, as the original scripts wrote it: e1024_b128_sgd_lr0.1_c256_amp."""
    amp = args.amp if args.amp is not None else str(args.device).startswith("cuda")
    channels = f"_c{args.channels}" if hasattr(args, "channels") else ""
    return f"e{args.epochs}_b{args.batch_size}_{args.opt}_lr{args.lr}{channels}{'_amp' if amp else ''}"
