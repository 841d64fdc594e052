"""The training recipes against the original scripts: initialisation, data, precision, losses, and
the settings a resumed run takes from its checkpoint."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import Checkpoint
from common.data import make_loader
from common.distributed import DistEnv
from common.errors import UserError
from common.run_state import RunState
from common.settings import resolve
from conftest import FIXTURES, QUICK, last_json, run_script


def test_dvs_convolutions_start_he_normal_fan_out_as_the_original():
    from cifar10dvs.models import VGGSlidingPSN

    torch.manual_seed(0)
    convs = [m for m in VGGSlidingPSN().modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8
    for conv in convs:
        expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # gain sqrt(2) over fan_out = out * 3 * 3
        assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.08)
        assert abs(conv.weight.mean().item()) < 0.2 * expected_std
        bound = 1 / math.sqrt(conv.in_channels * 9)  # the bias keeps torch's default uniform init
        assert conv.bias.abs().max().item() <= bound


def test_dvs_resize_is_bilinear_without_antialiasing():
    from cifar10dvs.data import frame_transform

    torch.manual_seed(0)
    frames = torch.poisson(torch.full((4, 2, 128, 128), 0.3))  # sparse event counts
    resized = frame_transform(train=False)(frames)
    reference = F.interpolate(frames, size=(48, 48), mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(resized, reference, atol=1e-5)
    antialiased = frame_transform(train=False, antialias=True)(frames)
    assert not torch.allclose(antialiased, reference, atol=1e-2)  # the difference the flag makes is real


def test_task_defaults_follow_the_original_scripts():
    from cifar10 import train as cifar10
    from cifar10dvs import train as dvs
    from imagenet import train as imagenet
    from sequential_cifar import train as seq

    d = dvs.TASK.parse([])
    assert d.amp is False and d.drop_last is False and d.resize_antialias is False
    assert imagenet.TASK.parse([]).drop_last is False
    assert cifar10.TASK.parse([]).drop_last is True and seq.TASK.parse([]).drop_last is True
    assert dvs.TASK.parse(["--amp"]).amp is True


@pytest.mark.parametrize("drop_last,batches", [(True, 2), (False, 3)])
def test_the_last_partial_batch_is_kept_where_the_original_kept_it(drop_last, batches):
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    loader = make_loader(data, 4, 0, True, DistEnv(0, 1), seed=0, drop_last=drop_last)
    assert len(loader) == batches and sum(len(b[0]) for b in loader) == (8 if drop_last else 10)


def test_imagenet_pe_starts_as_a_small_truncated_normal_draw():
    from imagenet.models import sew_resnet18

    torch.manual_seed(0)
    pe = torch.cat([sew_resnet18(T=4, num_classes=10).pe.detach().flatten() for _ in range(8)])
    assert pe.abs().min() > 0 and pe.abs().max() < 0.1
    assert 0.01 < pe.std().item() < 0.035  # std 0.02 over 32 draws


def test_imagenet_test_loss_is_tet_with_tet():
    from imagenet import train as imagenet

    torch.manual_seed(0)
    out, target = torch.randn(4, 3, 5, dtype=torch.float64), torch.tensor([0, 3, 1])
    tet = sum(F.cross_entropy(out[t], target).item() for t in range(4)) / 4
    test_loss = imagenet.TASK.test_loss
    assert test_loss(imagenet.TASK.parse([]))(out, target).item() == pytest.approx(tet, rel=1e-12)
    plain = F.cross_entropy(out.mean(0), target).item()
    loss = test_loss(imagenet.TASK.parse(["--no-tet"]))(out, target).item()
    assert loss == pytest.approx(plain, rel=1e-12)


def test_evaluation_is_fp32_whatever_amp_says():
    ckpt = FIXTURES / "cifar10_psn_c32_T4.pth"
    common = ["--dataset", "digits", "--workers", "0", "--device", "cpu", "--channels", "32", "--test-only",
              "--resume", ckpt]
    plain = last_json(run_script("cifar10/train.py", *common).stdout)
    amp = last_json(run_script("cifar10/train.py", *common, "--amp").stdout)
    plain.pop("provenance"), amp.pop("provenance")  # the command and start time differ
    assert plain == amp


def _checkpoint(args: dict) -> Checkpoint:
    return Checkpoint(Path("old.pth"), "ours", {}, RunState(settings=args))


def _adopted(before, after) -> set:
    return {k for k in before if before[k] != after[k]}


def test_a_run_from_before_the_fixes_resumes_with_what_it_was_trained_with():
    from cifar10dvs import train as dvs

    cli = dvs.TASK.parse(["--resume", "old.pth"])
    old = {k: v for k, v in cli.items() if k not in ("drop_last", "resize_antialias")}
    old.update(amp=True, epochs=50)  # an old DVS run: AMP on CUDA was the default
    args = resolve(dvs.TASK, cli, _checkpoint(old))
    assert args.amp is True and args.drop_last is True and args.resize_antialias is True and args.epochs == 50
    assert _adopted(cli, args) == {"amp", "drop_last", "resize_antialias", "epochs"}


def test_explicit_flags_win_unless_they_contradict_the_model():
    from cifar10 import train as cifar10

    saved = dict(cifar10.TASK.parse([]))
    saved.update(channels=32, epochs=10)
    args = resolve(cifar10.TASK, cifar10.TASK.parse(["--epochs", "20", "--data-dir", "/elsewhere"]), _checkpoint(saved))
    assert args.channels == 32 and args.epochs == 20 and args.data_dir == "/elsewhere"
    with pytest.raises(UserError, match=r"--channels 64 contradicts .*channels=32"):
        resolve(cifar10.TASK, cifar10.TASK.parse(["--channels", "64"]), _checkpoint(saved))
    with pytest.raises(UserError, match="not a valid value"):
        resolve(cifar10.TASK, cifar10.TASK.parse([]), _checkpoint({**saved, "channels": "32"}))


def test_test_only_takes_the_model_from_our_checkpoint(tmp_path):
    from cifar10 import train as cifar10
    from cifar10.models import CIFAR10Net
    from common.checkpoint import LEGACY_FORMAT

    args = dict(cifar10.TASK.parse(QUICK))
    torch.save({"format": LEGACY_FORMAT, "model": CIFAR10Net(8, 4).state_dict(), "epoch": 0, "best_acc1": 10.0,
                "args": args, "task_state": {}}, tmp_path / "c8.pth")
    bare = ["--dataset", "digits", "--workers", "0", "--device", "cpu"]  # no --channels 8
    record = last_json(run_script("cifar10/train.py", *bare, "--test-only", "--resume", tmp_path / "c8.pth").stdout)
    assert record["samples"] == 360


def test_an_old_glif_checkpoint_resumes_as_the_spikingjelly_neuron_it_was_trained_with():
    from sequential_cifar import train as seq
    from sequential_cifar.models import SequentialCIFARNet

    old_model = SequentialCIFARNet(channels=4, neuron="glif_sj")
    saved = dict(seq.TASK.parse(["-neu", "glif", "--channels", "4"]))
    ckpt = Checkpoint(Path("old.pth"), "ours", old_model.state_dict(), RunState(settings=dict(saved)))
    args = resolve(seq.TASK, seq.TASK.parse(["--resume", "old.pth"]), ckpt)
    assert args.neuron == "glif_sj" and args.channels == 4
    new = Checkpoint(Path("new.pth"), "ours", SequentialCIFARNet(channels=4, neuron="glif").state_dict(),
                     RunState(settings=saved))
    args = resolve(seq.TASK, seq.TASK.parse(["--resume", "new.pth"]), new)
    assert args.neuron == "glif"


def test_dvs_init_draws_what_the_original_draws_under_one_seed():
    """The original's VGGPSN, transcribed as plain torch modules in its construction order
    (conv + BN per layer, the classifier's Linear last, then He-normal on every conv)."""
    from cifar10dvs.models import VGGSlidingPSN

    torch.manual_seed(7)
    ours = VGGSlidingPSN()
    torch.manual_seed(7)
    convs, channels = [], 2
    for width in (64, 128, 256, 256, 512, 512, 512, 512):
        convs.append(torch.nn.Conv2d(channels, width, 3, 1, 1))
        torch.nn.BatchNorm2d(width)
        channels = width
    linear = torch.nn.Linear(512 * 3 * 3, 10)
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    our_convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    for mine, theirs in zip(our_convs, convs):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    our_linear = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)][0]
    assert torch.equal(our_linear.weight, linear.weight) and torch.equal(our_linear.bias, linear.bias)
