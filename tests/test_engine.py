"""The shared engine's parts: checkpoint layouts and safety, exact sharding, divergence, SyncBatchNorm."""
import argparse
import dataclasses
import math

import pytest
import torch
from spikingjelly.activation_based import layer

from cifar10 import train as cifar10_train
from cifar10.models import CIFAR10Net
from common.engine import TrainingDiverged
from common.run import run
from common.checkpoint import LEGACY_FORMAT, read_checkpoint, save_checkpoint
from common.weights import load_model_weights
from common.distributed import DistEnv, ShardSampler, convert_sync_batchnorm
from common.errors import UserError
from common.neurons import PSN, MaskedPSN, SlidingPSN
from conftest import FIXTURES, QUICK


def small_net():
    torch.manual_seed(0)
    net = CIFAR10Net(channels=4, T=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def original_state_dict(net):
    """Our state dict in the original repository's naming (IFNode5 held an nn.Linear `fc`)."""
    sd = {}
    for key, value in net.state_dict().items():
        parts = key.rsplit(".", 1)
        owner = net.get_submodule(parts[0]) if len(parts) == 2 else net
        if type(owner).__name__ == "PSN":
            sd[f"{parts[0]}.fc.{parts[1]}"] = value.flatten() if parts[1] == "bias" else value
        else:
            sd[key] = value
    return sd


@pytest.mark.parametrize("layout", ["net", "model_dvs", "model_dvs_module", "model_imagenet", "bare", "ddp_bare",
                                    "ours"])
def test_every_layout_loads_to_the_same_weights(layout, tmp_path):
    net = small_net()
    orig = original_state_dict(net)
    module = {f"module.{k}": v for k, v in orig.items()}
    obj = {
        "net": {"net": orig, "optimizer": {}, "lr_scheduler": {}, "epoch": 5, "max_test_acc": 0.5},
        "model_dvs": {"model": orig, "optimizer": {}, "scheduler": {}, "epoch": 5, "best_acc": 50.0},
        "model_dvs_module": {"model": module, "optimizer": {}, "scheduler": {}, "epoch": 5, "best_acc": 50.0},
        "model_imagenet": {"model": orig, "optimizer": {}, "lr_scheduler": {}, "epoch": 5,
                           "args": argparse.Namespace(T=2, model="x"), "max_test_acc1": 50.0,
                           "test_acc5_at_max_test_acc1": 80.0},
        "bare": net.state_dict(),
        "ddp_bare": {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()},
        "ours": {"format": LEGACY_FORMAT, "model": net.state_dict(), "epoch": 5, "best_acc1": 50.0},
    }[layout]
    torch.save(obj, tmp_path / "c.pth")
    fresh = CIFAR10Net(channels=4, T=2)
    ckpt = load_model_weights(fresh, tmp_path / "c.pth")
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    if layout not in ("bare", "ddp_bare"):
        assert ckpt.state.epoch == 6 and ckpt.state.best_acc1 == pytest.approx(50.0)
    if layout == "model_imagenet":
        assert ckpt.state.settings["model"] == "x"


def _original_neurons(T: int, k: int, g: torch.Generator) -> dict:
    """State dicts as the original repository's neurons held them (its train_secf10.py): IFNode5's and
    IFNode5PorderMaskD's nn.Linear(T, T) `fc` (a [T] bias; the masked one's buffers mask0, a band of k ones
    ending on the diagonal, and mask1, all ones), and MaskedSlidingPSN's [k] weight and scalar `threshold`."""
    band = torch.tril(torch.ones(T, T)) * torch.triu(torch.ones(T, T), -(k - 1))
    return {"0.fc.weight": torch.randn(T, T, generator=g), "0.fc.bias": torch.randn(T, generator=g),
            "1.fc.weight": torch.randn(T, T, generator=g), "1.fc.bias": torch.randn(T, generator=g),
            "1.fc.mask0": band, "1.fc.mask1": torch.ones(T, T),
            "2.weight": torch.randn(k, generator=g), "2.threshold": torch.randn((), generator=g) * 0.2}


def _original_outputs(sd: dict, x: torch.Tensor, T: int, k: int) -> list:
    """What the original neurons compute, worked out step by step in float64 (spikes where h >= 0; the masked
    PSN at lambda = 1, where a finished run ends): h[t] = sum_j W[t, j] x[j] + b[t] for the PSN and, with W
    times mask0, the masked PSN; h[t] = sum_d w[k-1-d] x[t-d] + threshold for the sliding PSN."""
    def spikes(h):
        return (h >= 0).double()

    w0, b0 = sd["0.fc.weight"].double(), sd["0.fc.bias"].double()
    w1 = sd["1.fc.weight"].double() * sd["1.fc.mask0"].double()
    b1 = sd["1.fc.bias"].double()
    psn = torch.stack([sum(w0[t, j] * x[j] for j in range(T)) + b0[t] for t in range(T)])
    masked = torch.stack([sum(w1[t, j] * x[j] for j in range(T)) + b1[t] for t in range(T)])
    w, theta = sd["2.weight"].double(), sd["2.threshold"].double()
    sliding = torch.stack([sum(w[k - 1 - d] * x[t - d] for d in range(min(k, t + 1))) + theta for t in range(T)])
    return [spikes(psn), spikes(masked), spikes(sliding)]


@pytest.mark.parametrize("T,k", [(4, 2), (8, 3), (6, 6)])
def test_original_neuron_layouts_convert_every_tensor_and_compute_the_original_function(T, k):
    """Each original neuron's tensors land where ours hold them (weights, biases, both masks, lambda), and the
    converted network computes what the original one did."""
    g = torch.Generator().manual_seed(T * 10 + k)
    net = torch.nn.Sequential(PSN(T=T), MaskedPSN(k=k, T=T, step_mode="m"),
                              SlidingPSN(k=k, exp_init=False, step_mode="m"))
    sd = _original_neurons(T, k, g)
    load_model_weights(net, read_checkpoint_from(dict(sd)))
    ours = net.state_dict()
    expected = {"0.weight": sd["0.fc.weight"], "0.bias": sd["0.fc.bias"][:, None],
                "1.weight": sd["1.fc.weight"], "1.bias": sd["1.fc.bias"][:, None], "1.mask0": sd["1.fc.mask0"],
                "1.mask1": sd["1.fc.mask1"], "1._lambda_": torch.tensor(1.0),  # the original kept no lambda
                "2.weight": sd["2.weight"], "2.bias": sd["2.threshold"].reshape(ours["2.bias"].shape)}
    assert set(ours) == set(expected), set(ours) ^ set(expected)
    for key, value in expected.items():
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key
    net = net.double()
    x = torch.randn(T, 3, 7, generator=g, dtype=torch.float64)
    for module, reference in zip(net, _original_outputs(sd, x, T, k)):
        assert torch.equal(module(x), reference), type(module).__name__
        assert 0 < reference.mean() < 1  # the case tells spikes from silence


def read_checkpoint_from(sd):
    from common.checkpoint import Checkpoint
    return Checkpoint(path="memory", layout="state_dict", state_dict=sd)


class NotAllowed:
    pass


def test_unsafe_pickles_are_refused(tmp_path):
    torch.save({"net": small_net().state_dict(), "payload": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="allow-list"):
        read_checkpoint(tmp_path / "evil.pth")


def test_unknown_layout_and_missing_file(tmp_path):
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="no layout"):
        read_checkpoint(tmp_path / "odd.pth")
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pth")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    save_checkpoint({"a": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"a": Unpicklable()}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]


@pytest.mark.parametrize("n,world", [(360, 2), (361, 2), (10, 3), (2, 4)])
def test_shards_cover_every_sample_once(n, world):
    seen = sorted(i for r in range(world) for i in ShardSampler(n, DistEnv(r, world)))
    assert seen == list(range(n))


def test_sync_batchnorm_conversion_keeps_names_and_multistep_shapes():
    net = CIFAR10Net(channels=4, T=2)
    names = list(net.state_dict())
    converted = convert_sync_batchnorm(net)
    assert list(converted.state_dict()) == names
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == 6
    assert not any(type(m) is layer.BatchNorm2d for m in converted.modules())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    argv = [*QUICK, "--epochs", "3", "--output-dir", str(tmp_path), "--run-name", "r", "--print-freq", "5"]
    run(cifar10_train.TASK, argv + ["--stop-after", "1"])
    latest = tmp_path / "r" / "checkpoint_latest.pth"
    good = latest.read_bytes()

    healthy = cifar10_train.TASK.train_loss
    task = dataclasses.replace(cifar10_train.TASK, train_loss=lambda s: lambda out, t: healthy(s)(out, t) * math.nan)
    with pytest.raises(TrainingDiverged, match="NaN or infinite in epoch 2"):
        run(task, argv + ["--resume", str(latest)])
    assert latest.read_bytes() == good
    assert read_checkpoint(latest).state.epoch == 1


def test_released_fixture_layout_is_net():
    ckpt = read_checkpoint(FIXTURES / "cifar10_psn_c32_T4.pth")
    assert ckpt.layout == "net" and ckpt.state.epoch == 1024 and ckpt.state.best_acc1 == pytest.approx(95.32)


def test_the_original_command_parses_to_the_same_settings():
    args = cifar10_train.TASK.parse("-data-dir /datasets/CIFAR10 -amp -opt sgd -channels 256 -epochs 1024 "
                                    "-device cuda:0 -T 4 -neu if5 -b 128 -j 4 -out-dir ./logs_cf10 -lr 0.1 "
                                    "-momentum 0.9 -sg atan".split())
    assert (args.data_dir, args.amp, args.opt, args.channels, args.epochs, args.device, args.T) == \
        ("/datasets/CIFAR10", True, "sgd", 256, 1024, "cuda:0", 4)
    assert (args.neuron, args.batch_size, args.workers, args.output_dir, args.lr, args.momentum) == \
        ("psn", 128, 4, "./logs_cf10", 0.1, 0.9)
    defaults = cifar10_train.TASK.parse([])
    assert (defaults.channels, defaults.T, defaults.epochs, defaults.batch_size, defaults.opt, defaults.lr,
            defaults.weight_decay, defaults.label_smoothing) == (256, 4, 1024, 128, "sgd", 0.1, 0.0, 0.1)


def _valid_checkpoint() -> dict:
    return {"format": LEGACY_FORMAT, "model": CIFAR10Net(channels=4, T=2).state_dict(), "optimizer": None, "scaler": None,
            "epoch": 0, "step": 0, "epoch_sums": None, "best_acc1": 10.0, "args": {"channels": 4},
            "task_state": {"last_acc1": 10.0}, "rng": {"torch": torch.get_rng_state()}, "model_ema": None}


CRAFTED = [
    ("epoch", "3"), ("epoch", 10**30), ("epoch", -5), ("epoch", 2.5), ("epoch", True), ("epoch", None),
    ("best_acc1", "abc"), ("best_acc1", float("nan")), ("best_acc1", 1000.0), ("best_acc1", [1.0]),
    ("model", [1, 2]), ("model", {"a": 1}), ("model", {}),
    ("optimizer", []), ("optimizer", {"state": 1, "param_groups": []}), ("optimizer", "x"),
    ("scaler", {"scale": "big"}), ("scaler", []),
    ("rng", {"torch": "x"}), ("rng", {"torch": torch.zeros(3)}), ("rng", []), ("rng", {"python": [3, [1] * 5, None]}),
    ("rng", {"numpy": {"key": torch.zeros(3), "pos": 0, "has_gauss": 0, "gauss": 0.0}}), ("rng", {"other": 1}),
    ("args", []), ("args", {1: 2}), ("task_state", []), ("task_state", {"last_acc1": "x"}),
    ("step", -1), ("step", "4"), ("step", 5), ("epoch_sums", [1.0, 2.0]), ("model_ema", 5),
]


@pytest.mark.parametrize("name,value", CRAFTED, ids=[f"{n}={str(v)[:12]}" for n, v in CRAFTED])
def test_every_checkpoint_field_is_checked_before_use(name, value, tmp_path):
    read_checkpoint(_save(_valid_checkpoint(), tmp_path / "good.pth"))  # the base is fine
    crafted = _valid_checkpoint()
    crafted[name] = value
    with pytest.raises(UserError, match="is damaged or not what it claims to be") as caught:
        read_checkpoint(_save(crafted, tmp_path / "bad.pth"))
    assert len(str(caught.value).splitlines()) == 1


def test_a_mid_epoch_checkpoint_needs_its_sums_and_step_size(tmp_path):
    mid = {**_valid_checkpoint(), "epoch": -1, "step": 3, "epoch_sums": [1.0, 2.0, 96.0, 0.5], "step_samples": 32}
    ckpt = read_checkpoint(_save(mid, tmp_path / "mid.pth"))
    assert ckpt.state.position == (0, 3)
    for field, value in (("epoch_sums", None), ("step_samples", None), ("step_samples", 0)):
        with pytest.raises(UserError, match=field):
            read_checkpoint(_save({**mid, field: value}, tmp_path / "bad.pth"))


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("fixture,expected", [
    ("cifar10_psn_c32_T4.pth", ("cifar10", {"channels": 32, "T": 4})),
    ("seqcifar10_psn_c16.pth", ("sequential_cifar", {"channels": 16, "neuron": "psn", "num_classes": 10})),
    ("seqcifar100_masked_psn_P8_c16.pth",
     ("sequential_cifar", {"channels": 16, "neuron": "masked_psn", "order": 8, "num_classes": 100})),
    ("seqcifar10_sliding_psn_P8_c16.pth",
     ("sequential_cifar", {"channels": 16, "neuron": "sliding_psn", "order": 8, "num_classes": 10})),
])
def test_original_layouts_tell_their_model_settings(fixture, expected):
    import importlib

    task, settings = expected
    infer = importlib.import_module(f"{task}.train").infer_settings
    assert infer(read_checkpoint(FIXTURES / fixture).state_dict) == settings
    ours = CIFAR10Net(channels=12, T=6).state_dict()  # bare weights in our naming too
    if task == "cifar10":
        assert infer(ours) == {"channels": 12, "T": 6}


def test_dvs_and_imagenet_layouts_tell_their_model_settings():
    from cifar10dvs.train import infer_settings as dvs
    from conftest import manifest
    from imagenet.train import infer_settings as inet

    def zeros(name):
        return {key: torch.zeros(shape) for key, shape, _ in manifest(name)}

    assert dvs(zeros("cifar10dvs_vgg_spsn.tsv")) == {"order": 2}
    assert inet(zeros("imagenet_sew_resnet18_T4.tsv")) == {"model": "sew_resnet18", "neuron": "psn", "T": 4}


def test_stop_requests_wait_for_the_loop_or_interrupt_at_once(monkeypatch):
    import os
    import signal

    from common.stops import Interrupted, StopRequests, resume_command

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with StopRequests() as stops:
        stops.deferred = True  # the training loop: recorded, looked at between steps
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.requested and stops.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # restored on leaving
    try:
        with StopRequests() as stops:
            stops.deferred = False  # elsewhere (data building, --test-only): at once
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGTERM)
        # A stop under way: further signals (a burst of Ctrl-C) are ignored through the process's exit.
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)

    monkeypatch.setattr("sys.argv", ["cifar10/train.py", "--epochs", "3", "--resume=old.pth", "-resume", "x.pth",
                                     "--run-name", "a b"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resume_command("runs/a b/checkpoint_latest.pth").endswith(
        "cifar10/train.py --epochs 3 --run-name 'a b' --resume 'runs/a b/checkpoint_latest.pth'")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command("c.pth").startswith("torchrun --nproc_per_node=4 cifar10/train.py --epochs 3")
