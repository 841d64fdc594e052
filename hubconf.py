"""torch.hub entry points: the authors' released models one line away, and the architectures without
released weights.

    model = torch.hub.load("<this repository's folder>", "cifar10_psn", source="local", pretrained=True)
    from hubconf import sew_resnet18_psn; model = sew_resnet18_psn(pretrained=True)

`pretrained=True` fetches the model's file from figshare article 24454912 into torch.hub's cache
(`torch.hub.get_dir()/checkpoints/psn-figshare-24454912`), resumably and checked against the
listing's MD5, through scripts/download_checkpoints.py (the same code and the same hostile-input
rules as the command line; its MODELS table says which listed file is which model). The file is
read with `weights_only=True` and its original layout converted as `--test-only` does; the model
comes back in eval mode. A second call reads the cache without a request; a cached file whose MD5
no longer matches is fetched again. PSN_FIGSHARE_API points at a mirror. The inputs each model
expects (normalisation, size, T) are on its model card in checkpoints/README.md.
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


def _with_weights(key: str, model, pretrained: bool, overrides: dict, infer, released_classes: int):
    """`model` as built, or with `pretrained` the released weights of `key` loaded into it, after checking
    `overrides` against the released model (`infer`: the task's Task.infer_settings, which reads the file's
    tensors)."""
    if not pretrained:
        return model
    from common.checkpoint import read_checkpoint
    from common.errors import UserError
    from common.weights import load_model_weights
    from scripts.download_checkpoints import fetch_model

    classes = overrides.get("num_classes", released_classes)
    if classes != released_classes:
        raise _contradiction(key, "num_classes", classes, released_classes)
    path = fetch_model(key, _cache_dir(), _os.environ.get("PSN_FIGSHARE_API"))
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


def _unknown(name: str, kwargs: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise TypeError(f"{name}() takes no {', '.join(extra)} (settable: {', '.join(allowed) or 'nothing'})")


def cifar10_psn(pretrained: bool = False, **kwargs):
    """CIFAR-10: CIFAR10Net, 256 channels, PSN, T = 4 (paper 95.32 %); kwargs: channels, T, num_classes."""
    from cifar10.models import CIFAR10Net
    from cifar10.train import infer_settings

    _unknown("cifar10_psn", kwargs, ("channels", "T", "num_classes"))
    settings = {"channels": 256, "T": 4, "num_classes": 10, **kwargs}
    model = CIFAR10Net(settings["channels"], settings["T"], settings["num_classes"], "psn")
    return _with_weights("cifar10_psn", model, pretrained, kwargs, infer_settings, 10)


def _dvs(T: int):
    key = f"cifar10dvs_sliding_psn_t{T}"

    def entry(pretrained: bool = False, **kwargs):
        from cifar10dvs.models import VGGSlidingPSN
        from cifar10dvs.train import infer_settings

        _unknown(key, kwargs, ("order", "exp_init", "num_classes"))
        settings = {"order": 2, "exp_init": True, "num_classes": 10, **kwargs}
        model = VGGSlidingPSN(settings["num_classes"], settings["order"], settings["exp_init"])
        return _with_weights(key, model, pretrained, kwargs, infer_settings, 10)

    entry.__name__ = entry.__qualname__ = key
    paper = {4: 82.30, 8: 85.30, 10: 85.90}[T]
    entry.__doc__ = (f"CIFAR10-DVS at T = {T}: VGG (8 conv) with sliding PSN, order 2 (paper {paper:.2f} %); input "
                     f"[N, {T}, 2, 48, 48] event-count frames; kwargs: order, exp_init, num_classes.")
    return entry


cifar10dvs_sliding_psn_t4 = _dvs(4)
cifar10dvs_sliding_psn_t8 = _dvs(8)
cifar10dvs_sliding_psn_t10 = _dvs(10)


def _sew(depth: int):
    key = f"sew_resnet{depth}_psn"

    def entry(pretrained: bool = False, **kwargs):
        from imagenet.models import MODELS
        from imagenet.train import infer_settings

        _unknown(key, kwargs, ("T", "num_classes"))
        settings = {"T": 4, "num_classes": 1000, **kwargs}
        model = MODELS[f"sew_resnet{depth}"](T=settings["T"], num_classes=settings["num_classes"], neuron="psn")
        return _with_weights(key, model, pretrained, kwargs, infer_settings, 1000)

    entry.__name__ = entry.__qualname__ = key
    paper = {18: "67.63 % top-1, 87.75 % top-5", 34: "70.54 % top-1, 89.68 % top-5"}[depth]
    entry.__doc__ = (f"ImageNet: SEW ResNet-{depth} with PSN, T = 4 (paper {paper}); output [T, N, 1000] logits "
                     f"per step; kwargs: T, num_classes.")
    return entry


sew_resnet18_psn = _sew(18)
sew_resnet34_psn = _sew(34)


def _sequential(neuron: str):
    name = f"sequential_cifar_{neuron}"

    def entry(pretrained: bool = False, **kwargs):
        from common.neuron_registry import NEURONS
        from sequential_cifar.models import SequentialCIFARNet

        _no_weights(name, pretrained)
        _unknown(name, kwargs, ("channels", "num_classes", "order", "exp_init"))
        settings = {"channels": 128, "num_classes": 10, "order": 32 if NEURONS[neuron].needs_order else None,
                    "exp_init": False, **kwargs}
        return SequentialCIFARNet(settings["channels"], settings["num_classes"], neuron, settings["order"],
                                  settings["exp_init"])

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"Sequential CIFAR (an image read one column per step, T = 32), 128 channels, {neuron}; no "
                     f"released weights; kwargs: channels, num_classes, order, exp_init.")
    return entry


for _neuron in ("psn", "masked_psn", "sliding_psn", "lif", "plif", "klif", "glif", "lif_no_reset"):
    globals()[f"sequential_cifar_{_neuron}"] = _sequential(_neuron)
del _neuron
