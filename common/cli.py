"""The flags every task shares, with the original repository's spellings as aliases.

Long `--kebab-case` flags; the original scripts' flags (`-data-dir`, `-amp`,
`-opt`, `-b`, `-j`, `-epochs`, `-T`, `-device`, `-resume`, ...) parse to the same
options, so their published commands run unchanged. A task passes its paper
defaults to `build_parser` and adds only its own flags.
"""
import argparse

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


def build_parser(description: str, **defaults) -> argparse.ArgumentParser:
    p = RecipeParser(description=description, allow_abbrev=False,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", "-data-dir", "--data-path", dest="data_dir", default="./data",
                   help="dataset root")
    g.add_argument("--output-dir", "-out-dir", "--out-dir", dest="output_dir", default="./runs",
                   help="each run gets its own directory below this one")
    g.add_argument("--run-name", default=None, help="run directory name (default: built from the main settings)")
    g.add_argument("--workers", "-j", dest="workers", type=int, default=4, help="data loading processes per GPU")
    g.add_argument("--print-freq", type=int, default=50,
                   help="steps between progress updates (each one waits for the GPU)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "-epochs", "--epoch", dest="epochs", type=int, default=100)
    g.add_argument("--batch-size", "-b", dest="batch_size", type=int, default=128,
                   help="batch size per process")
    g.add_argument("--opt", "-opt", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--lr", "-lr", type=float, default=0.1)
    g.add_argument("--momentum", "-momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=0.0)
    g.add_argument("--cos-lr-T", "--cos_lr_T", dest="cos_lr_T", type=int, default=None,
                   help="period of the cosine schedule in epochs (default: --epochs)")
    g.add_argument("--amp", "-amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision in training; evaluation is always fp32 (None: on with CUDA, off on CPU)")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=True,
                   help="drop each epoch's last partial training batch (the task's original script decides)")
    g.add_argument("--seed", type=int, default=2023)

    g = p.add_argument_group("model")
    g.add_argument("--T", "-T", dest="T", type=int, default=4, help="time steps")
    g.add_argument("--surrogate", "-sg", dest="surrogate", choices=["atan"], default="atan",
                   help="surrogate gradient of the spike function")

    g = p.add_argument_group("running")
    g.add_argument("--device", "-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="under torchrun each process takes cuda:LOCAL_RANK")
    g.add_argument("--resume", "-resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint (or start from an original-format one)")
    g.add_argument("--test-only", action="store_true", help="evaluate --resume's weights on the test set and exit")
    g.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    g.add_argument("--channels-last", action="store_true", help="channels-last activations (GPU)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (slower): a resumed run then matches an uninterrupted one on GPUs too")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (split a long run into jobs); resume continues")
    p.set_defaults(**defaults)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Values argparse cannot check on its own; UserError-free: parser.error exits with one sentence."""
    bad = [f"{name} must be positive" for name in ("epochs", "batch_size", "T")
           if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1]
    if args.lr <= 0:
        bad.append("lr must be positive")
    if args.test_only and not args.resume:
        bad.append("--test-only needs --resume CHECKPOINT (the weights to evaluate)")
    if args.workers < 0:
        bad.append("workers must be >= 0")
    if bad:
        raise SystemExit(f"error: {'; '.join(bad)}.")


def add_cifar_flags(p: argparse.ArgumentParser, datasets: tuple[str, ...]) -> None:
    """Flags of the two CIFAR tasks: which data, whether to download it, the loss's smoothing, width."""
    g = p.add_argument_group("CIFAR")
    g.add_argument("--dataset", choices=datasets, default=datasets[0],
                   help="digits: scikit-learn's 8x8 digits as 32x32 RGB, no download (quick start, tests)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--channels", "-channels", type=int, default=256)


def recipe_tag(args: argparse.Namespace) -> str:
    """The part of a run name every task shares, as the original scripts wrote it: e1024_b128_sgd_lr0.1_c256_amp."""
    amp = args.amp if args.amp is not None else str(args.device).startswith("cuda")
    channels = f"_c{args.channels}" if hasattr(args, "channels") else ""
    return f"e{args.epochs}_b{args.batch_size}_{args.opt}_lr{args.lr}{channels}{'_amp' if amp else ''}"
