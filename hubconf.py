"""torch.hub entry points: the authors' released models one line away, and the architectures without
released weights.

    model = torch.hub.load("<this repository's folder>", "cifar10_psn", source="local", pretrained=True)
    from hubconf import sew_resnet18_psn; model = sew_resnet18_psn(pretrained=True)

`pretrained=True` fetches the model's file from figshare article 24454912 into torch.hub's cache
(`torch.hub.get_dir()/checkpoints/psn-figshare-24454912`), resumably and checked against the
listing's MD5, through common/download.py (the same code and the same hostile-input rules as
scripts/download_checkpoints.py; its MODELS table says which listed file is which model), with a
progress bar on stderr (`progress=False`: none). Without internet (a cluster's compute nodes), fetch
on a login node with `python scripts/download_checkpoints.py --dest DIR`, then either set
PSN_WEIGHTS_DIR=DIR (searched before any request, for every entry) or pass `pretrained=DIR`;
`pretrained=` also takes the file itself, or a URL (fetched into the cache, bounded as the rest).
The file is read with `weights_only=True` and its original layout converted as `--test-only` does;
the model comes back in eval mode. A second call reads the cache without a request; a cached file
whose MD5 no longer matches is fetched again. `deadline=` (seconds, default an hour) bounds the
listing and the transfer, connection and response headers included. PSN_FIGSHARE_API points at a
mirror. The inputs each model expects (normalisation, size, T) are on its model card in
checkpoints/README.md.
"""
import os as _os
from pathlib import Path as _Path

dependencies = ["torch", "torchvision", "spikingjelly"]

_ARTICLE_DIR = "psn-figshare-24454912"


def _cache_dir() -> _Path:
    import torch

    return _Path(torch.hub.get_dir()) / "checkpoints" / _ARTICLE_DIR


def _contradiction(key: str, name: str, value, released):
    from common.errors import UserError

    return UserError(f"{name}={value} contradicts the released {key} weights, which have {name}={released}; leave "
                     f"{name} out, or use pretrained=False.")


# What the downloader's messages call its command-line flags, as a Python caller sets them.
_PYTHON_NAMES = (("the --deadline", "the deadline= argument"), ("--deadline", "deadline="),
                 ("--api, or the environment variable PSN_FIGSHARE_API", "the environment variable PSN_FIGSHARE_API"),
                 ("is --api right?", "is PSN_FIGSHARE_API right?"),
                 ("by name with --filter", "with scripts/download_checkpoints.py --filter, and pass its path as "
                                           "pretrained="))


def _weights_file(key: str, pretrained, progress: bool, deadline: float) -> _Path:
    """Where the weights come from: pretrained=True, the folder PSN_WEIGHTS_DIR names (searched first, no
    request), else torch.hub's cache, else figshare; a path, a file, or a folder that scripts/
    download_checkpoints.py filled (compute nodes without internet); a URL, fetched into the cache."""
    from common.download import DownloadError, fetch_model, fetch_url, find_local
    from common.errors import UserError

    try:
        if pretrained is True:
            local = _os.environ.get("PSN_WEIGHTS_DIR")
            found = find_local(key, _Path(local).expanduser()) if local else None
            if found is not None:
                return found
            return fetch_model(key, _cache_dir(), _os.environ.get("PSN_FIGSHARE_API"), quiet=not progress,
                               deadline=deadline)
        if isinstance(pretrained, (str, _os.PathLike)):
            where = _os.fspath(pretrained)
            if where.startswith(("http://", "https://")):
                return fetch_url(where, _cache_dir(), quiet=not progress, deadline=deadline, model=key)
            path = _Path(where).expanduser()
            if path.is_dir():
                found = find_local(key, path)
                if found is None:
                    raise UserError(f"{key}(pretrained={where!r}): that folder holds no file of the model (neither "
                                    "its manifest.json from scripts/download_checkpoints.py nor a file name tells "
                                    "one); pass the file itself.")
                return found
            if path.is_file():
                return path
            raise UserError(f"{key}(pretrained={where!r}): no such file or folder.")
    except DownloadError as e:
        message = str(e)
        for flag, argument in _PYTHON_NAMES:
            message = message.replace(flag, argument)
        if message.startswith("Could not reach"):
            message += (" Without internet here: fetch the files where there is (python "
                        "scripts/download_checkpoints.py --dest DIR), then set PSN_WEIGHTS_DIR=DIR or pass "
                        "pretrained=DIR.")
        raise UserError(message) from None
    raise UserError(f"{key}(pretrained={pretrained!r}): give True (the released weights), a file, a folder or a URL.")


def _with_weights(key: str, model, pretrained, overrides: dict, infer, released_classes: int,
                  deadline: float = 3600.0, progress: bool = True):
    """`model` as built, or with `pretrained` (True, a file, a folder, a URL) the released weights of `key`
    loaded into it, after checking `overrides` against them (`infer`: the task's Task.infer_settings, which reads
    the file's tensors)."""
    if pretrained is False or pretrained is None:
        return model
    from common.checkpoint import read_checkpoint
    from common.errors import UserError
    from common.weights import load_model_weights

    classes = overrides.get("num_classes", released_classes)
    if classes != released_classes:
        raise _contradiction(key, "num_classes", classes, released_classes)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 30 * 24 * 3600:
        raise UserError(f"{key}(deadline={deadline!r}): it must be a number of seconds, above 0, at most 30 days.")
    if not isinstance(progress, bool):
        raise UserError(f"{key}(progress={progress!r}): give True or False.")
    path = _weights_file(key, pretrained, progress, deadline)
    ckpt = read_checkpoint(path)
    told = infer(ckpt.state_dict) if infer is not None else {}
    for name, value in overrides.items():
        if name in told and told[name] != value:
            raise UserError(f"{name}={value} contradicts the released {key} weights ({path.name}), whose tensors say "
                            f"{name}={told[name]}; leave {name} out, or use pretrained=False.")
    load_model_weights(model, ckpt)
    return model.eval()


def _no_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        from common.errors import UserError

        raise UserError(f"The authors released no weights for {name} (they released CIFAR-10, CIFAR10-DVS and "
                        "ImageNet models); train one with sequential_cifar/train.py, or use pretrained=False.")


def _unknown(name: str, kwargs: dict, allowed: tuple[str, ...], task=None, most_order: int | None = None) -> None:
    """Refuse a keyword the entry does not take, and a value out of the range its task's command-line flag
    allows (the same declaration: `task.parser()`), named as the Python argument it is."""
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise TypeError(f"{name}() takes no {', '.join(extra)} (settable: {', '.join(allowed) or 'nothing'})")
    from common.errors import UserError
    from common.settings import Flag

    flags = {a.dest: Flag.of(a) for a in task.parser()._actions} if task is not None else {}
    for key, value in kwargs.items():
        if key == "num_classes":  # the data decides it on the command line; here any classifier width
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100_000
            problem = None if ok else "it must be an integer from 1 to 100000"
        elif key in flags:
            problem = flags[key].problem(value)
            if problem is None and key == "order" and most_order is not None and value is not None \
                    and value > most_order:
                problem = f"it must lie from 1 to {most_order} (the network's {most_order} time steps)"
        else:
            problem = None
        if problem is not None:
            raise UserError(f"{name}({key}={value!r}) cannot be built: {problem}.")


def _cifar10dvs(key: str, pretrained, progress: bool, deadline: float, kwargs: dict):
    from cifar10dvs.models import VGGSlidingPSN
    from cifar10dvs.train import infer_settings

    import cifar10dvs.train as task

    _unknown(key, kwargs, ("order", "exp_init", "num_classes"), task)
    settings = {"order": 2, "exp_init": True, "num_classes": 10, **kwargs}
    model = VGGSlidingPSN(settings["num_classes"], settings["order"], settings["exp_init"])
    return _with_weights(key, model, pretrained, kwargs, infer_settings, 10, deadline, progress)


def _sew_resnet(key: str, depth: int, pretrained, progress: bool, deadline: float, kwargs: dict):
    from imagenet.models import MODELS
    from imagenet.train import infer_settings

    import imagenet.train as task

    _unknown(key, kwargs, ("T", "num_classes"), task)
    settings = {"T": 4, "num_classes": 1000, **kwargs}
    model = MODELS[f"sew_resnet{depth}"](T=settings["T"], num_classes=settings["num_classes"], neuron="psn")
    return _with_weights(key, model, pretrained, kwargs, infer_settings, 1000, deadline, progress)


def _sequential_cifar(neuron: str, pretrained: bool, kwargs: dict):
    from common.neuron_registry import NEURONS
    from sequential_cifar.models import SequentialCIFARNet

    name = f"sequential_cifar_{neuron}"
    _no_weights(name, pretrained)
    import sequential_cifar.train as task

    _unknown(name, kwargs, ("channels", "num_classes", "order", "exp_init"), task, most_order=task.COLUMNS)
    settings = {"channels": 128, "num_classes": 10, "order": 32 if NEURONS[neuron].needs_order else None,
                "exp_init": False, **kwargs}
    return SequentialCIFARNet(settings["channels"], settings["num_classes"], neuron, settings["order"],
                              settings["exp_init"])


# --- the entries ------------------------------------------------------------------------------------

def cifar10_psn(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """CIFAR-10: CIFAR10Net, 256 channels, PSN, T = 4 (paper 95.32 %); kwargs: channels, T, num_classes."""
    from cifar10.models import CIFAR10Net
    from cifar10.train import infer_settings

    import cifar10.train as task

    _unknown("cifar10_psn", kwargs, ("channels", "T", "num_classes"), task)
    settings = {"channels": 256, "T": 4, "num_classes": 10, **kwargs}
    model = CIFAR10Net(settings["channels"], settings["T"], settings["num_classes"], "psn")
    return _with_weights("cifar10_psn", model, pretrained, kwargs, infer_settings, 10, deadline, progress)


def cifar10dvs_sliding_psn_t4(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """CIFAR10-DVS at T = 4: VGG (8 conv) with sliding PSN, order 2 (paper 82.30 %); input [N, 4, 2, 48, 48] event-count frames; kwargs: order, exp_init, num_classes."""  # noqa: E501 - torch.hub.help shows one line
    return _cifar10dvs("cifar10dvs_sliding_psn_t4", pretrained, progress, deadline, kwargs)


def cifar10dvs_sliding_psn_t8(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """CIFAR10-DVS at T = 8: VGG (8 conv) with sliding PSN, order 2 (paper 85.30 %); input [N, 8, 2, 48, 48] event-count frames; kwargs: order, exp_init, num_classes."""  # noqa: E501
    return _cifar10dvs("cifar10dvs_sliding_psn_t8", pretrained, progress, deadline, kwargs)


def cifar10dvs_sliding_psn_t10(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """CIFAR10-DVS at T = 10: VGG (8 conv) with sliding PSN, order 2 (paper 85.90 %); input [N, 10, 2, 48, 48] event-count frames; kwargs: order, exp_init, num_classes."""  # noqa: E501
    return _cifar10dvs("cifar10dvs_sliding_psn_t10", pretrained, progress, deadline, kwargs)


def sew_resnet18_psn(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """ImageNet: SEW ResNet-18 with PSN, T = 4 (paper 67.63 % top-1, 87.75 % top-5); output [T, N, 1000] logits per step; kwargs: T, num_classes."""  # noqa: E501
    return _sew_resnet("sew_resnet18_psn", 18, pretrained, progress, deadline, kwargs)


def sew_resnet34_psn(pretrained=False, progress: bool = True, deadline: float = 3600.0, **kwargs):
    """ImageNet: SEW ResNet-34 with PSN, T = 4 (paper 70.54 % top-1, 89.68 % top-5); output [T, N, 1000] logits per step; kwargs: T, num_classes."""  # noqa: E501
    return _sew_resnet("sew_resnet34_psn", 34, pretrained, progress, deadline, kwargs)


def sequential_cifar_psn(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, psn; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("psn", pretrained, kwargs)


def sequential_cifar_masked_psn(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, masked_psn; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("masked_psn", pretrained, kwargs)


def sequential_cifar_sliding_psn(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, sliding_psn; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("sliding_psn", pretrained, kwargs)


def sequential_cifar_lif(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, lif; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("lif", pretrained, kwargs)


def sequential_cifar_plif(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, plif; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("plif", pretrained, kwargs)


def sequential_cifar_klif(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, klif; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("klif", pretrained, kwargs)


def sequential_cifar_glif(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, glif; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("glif", pretrained, kwargs)


def sequential_cifar_lif_no_reset(pretrained: bool = False, **kwargs):
    """Sequential CIFAR (an image read one column per step, T = 32), 128 channels, lif_no_reset; no released weights; kwargs: channels, num_classes, order, exp_init."""  # noqa: E501
    return _sequential_cifar("lif_no_reset", pretrained, kwargs)
