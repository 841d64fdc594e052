"""imagenet/: SEW ResNet on a generated ImageFolder, --load of ANN weights, the released layout."""
import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from common.checkpoint import read_checkpoint
from common.weights import load_model_weights
from conftest import last_json, manifest, read_scalars, run_script
from imagenet import train as inet_train
from imagenet.data import index_folder
from imagenet.models import MODELS

SCRIPT = "imagenet/train.py"
# From a random init on random pixels the SEW ResNet's first gradients explode (silent channels make its
# BatchNorms divide by sqrt(eps)), and the run now stops on the infinite weights that follow; the paper's
# runs start from torchvision's weights (--load). Clipping keeps these short runs finite.
SMALL = ["--device", "cpu", "--workers", "0", "-b", "6", "--train-crop-size", "32", "--val-resize-size", "36",
         "--val-crop-size", "32", "--clip-grad", "1"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 3)):
        for c in range(6):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.JPEG")
    return root


def test_one_epoch_trains_and_evaluates(image_folder, tmp_path):
    out = run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--epochs", 1, "--output-dir", tmp_path,
                     "--run-name", "r", "--cache-dataset", "--cache-dir", tmp_path / "cache")
    record = last_json(out.stdout)
    assert record["epochs_done"] == 1
    scalars = read_scalars(tmp_path / "r")
    assert {"test/acc1", "test/acc5", "train/loss"} <= set(scalars)
    assert scalars["test/acc5"][0][1] >= scalars["test/acc1"][0][1]
    caches = list((tmp_path / "cache").glob("*.json"))
    assert len(caches) == 2 and all("samples" in json.loads(c.read_text()) for c in caches)
    test = last_json(run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--test-only", "--resume",
                                tmp_path / "r" / "checkpoint_latest.pth").stdout)
    assert test["samples"] == 18 and test["test_acc1"] == pytest.approx(record["last_test_acc1"])
    assert "test_acc5" in test


def test_one_epoch_under_torchrun_with_two_processes(image_folder, tmp_path, torchrun):
    out = run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--epochs", 1, "--output-dir", tmp_path,
                     "--run-name", "ddp", launcher=torchrun + ["--standalone", "--nproc_per_node=2"])
    record = last_json(out.stdout)
    single = last_json(run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--test-only", "--resume",
                                  tmp_path / "ddp" / "checkpoint_latest.pth").stdout)
    assert single["test_acc1"] == pytest.approx(record["last_test_acc1"])
    assert single["test_acc5"] == pytest.approx(read_scalars(tmp_path / "ddp")["test/acc5"][0][1], abs=1e-4)


def test_load_copies_every_matching_torchvision_tensor(image_folder, tmp_path):
    torch.manual_seed(0)
    ann = torchvision.models.resnet18(num_classes=6)
    with torch.no_grad():
        for p in ann.parameters():
            p.normal_()
    torch.save(ann.state_dict(), tmp_path / "resnet18.pth")
    out = run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--epochs", 1, "--lr", "1e-12",
                     "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "r", "--load", tmp_path / "resnet18.pth")
    report = next(line for line in out.stdout.splitlines() if line.startswith("--load"))
    assert "copied 122 tensors; skipped 0 from the file" in report and "41 of the model" in report

    from imagenet.models import sew_resnet18
    from common.weights import load_matching
    snn = sew_resnet18(T=4, num_classes=6)
    copied, skipped, untouched = load_matching(snn, tmp_path / "resnet18.pth")
    ann_sd = ann.state_dict()
    assert len(copied) == len(ann_sd) and skipped == []
    for key in copied:
        assert torch.equal(snn.state_dict()[key], ann_sd[key]), key
    assert "pe" in untouched and all(k == "pe" or ".sn" in k or k.startswith("sn") or "downsample_sn" in k
                                     for k in untouched)

    wrong_classes = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(wrong_classes, tmp_path / "resnet18_1000.pth")
    _, skipped, _ = load_matching(sew_resnet18(T=4, num_classes=6), tmp_path / "resnet18_1000.pth")
    assert skipped == ["fc.bias", "fc.weight"]  # reported, not forced in


def manifest_state_dict(name: str) -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape, dtype in manifest(name):
        if dtype == "int64":
            sd[key] = torch.tensor(10)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("fc.bias") and ".sn" in f".{key}":
            sd[key] = torch.rand(shape, generator=g) * 0.4 - 0.2
        else:
            sd[key] = torch.randn(shape, generator=g) * (0.5 if len(shape) != 4 else 0.2)
    return sd


def original_sew_resnet18(sd: dict, images: torch.Tensor, T: int) -> torch.Tensor:
    """SEW ResNet-18 with PSNs written out from the original's description, on the raw keys (eval)."""
    def per_step(fn, x):
        y = fn(x.flatten(0, 1))
        return y.view(T, -1, *y.shape[1:])

    def conv_bn(x, conv, norm, stride, pad):
        return per_step(lambda z: F.batch_norm(F.conv2d(z, sd[conv], stride=stride, padding=pad),
                                               sd[f"{norm}.running_mean"], sd[f"{norm}.running_var"],
                                               sd[f"{norm}.weight"], sd[f"{norm}.bias"], False, 0.0, 1e-5), x)

    def psn(x, name):  # IFNode5: h = W x + b over time, spike where h >= 0
        h = sd[f"{name}.fc.weight"] @ x.flatten(1) + sd[f"{name}.fc.bias"][:, None]
        return (h >= 0).to(x.dtype).view(x.shape)

    x = images.unsqueeze(0).repeat(T, 1, 1, 1, 1) + sd["pe"]
    x = psn(conv_bn(x, "conv1.weight", "bn1", 2, 3), "sn1")
    x = per_step(lambda z: F.avg_pool2d(z, 3, 2, 1), x)
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            identity = x
            if f"{p}.downsample.0.weight" in sd:
                identity = psn(conv_bn(x, f"{p}.downsample.0.weight", f"{p}.downsample.1", stride, 0),
                               f"{p}.downsample_sn")
            out = psn(conv_bn(x, f"{p}.conv1.weight", f"{p}.bn1", stride, 1), f"{p}.sn1")
            out = psn(conv_bn(out, f"{p}.conv2.weight", f"{p}.bn2", 1, 1), f"{p}.sn2")
            x = identity + out
    return F.linear(x.mean((3, 4)), sd["fc.weight"], sd["fc.bias"])


def test_released_layout_loads_safely_and_computes_the_original_function(tmp_path):
    sd = manifest_state_dict("imagenet_sew_resnet18_T4.tsv")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}, "lr_scheduler": {},
                "epoch": 319, "args": argparse.Namespace(model="sew_resnet18", T=4, tet=True),
                "max_test_acc1": 67.63, "test_acc5_at_max_test_acc1": 87.75}, tmp_path / "r18.pth")
    ckpt = read_checkpoint(tmp_path / "r18.pth")  # weights_only=True with argparse.Namespace allowed
    assert ckpt.layout == "model_imagenet" and ckpt.state.settings["model"] == "sew_resnet18"
    assert ckpt.state.best_acc1 == pytest.approx(67.63)
    model = MODELS["sew_resnet18"](T=4)
    load_model_weights(model, ckpt)
    model = model.double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = model(images)
    reference = original_sew_resnet18({k: v.double() for k, v in sd.items()}, images, 4)
    assert ours.shape == (4, 2, 1000)
    assert (ours - reference).abs().max() < 1e-9
    assert 0 < model.sn1(model.bn1(model.conv1(images.unsqueeze(0).repeat(4, 1, 1, 1, 1)))).mean() < 1


def test_the_released_layout_needs_no_model_flags_and_its_1000_classes_score_a_smaller_folder(image_folder,
                                                                                                 tmp_path):
    sd = manifest_state_dict("imagenet_sew_resnet34_T4.tsv")
    torch.save({"model": sd, "epoch": 1, "args": argparse.Namespace(model="sew_resnet34"), "max_test_acc1": 1.0},
               tmp_path / "r34.pth")
    assert inet_train.infer_settings(sd) == {"model": "sew_resnet34", "neuron": "psn", "T": 4}
    result = run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--model", "sew_resnet18", "--test-only",
                        "--resume", tmp_path / "r34.pth", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: --model sew_resnet18 contradicts") and "model=sew_resnet34" in err

    # No model flags: ResNet-34, PSN, T = 4 and 1000 classes come from the file; the folder's 6 labels
    # index the first 6 of them.
    result = run_script(SCRIPT, "--data-path", image_folder, *SMALL, "--test-only", "--resume", tmp_path / "r34.pth")
    assert "the checkpoint has 1000 classes and the data 6" in result.stdout
    record = last_json(result.stdout)
    assert record["samples"] == 18 and "test_acc5" in record


def test_every_depth_builds_with_the_torchvision_keys():
    for name, factory in (("sew_resnet50", torchvision.models.resnet50), ("sew_resnet101", torchvision.models.resnet101)):
        ours = set(MODELS[name](T=2).state_dict())
        assert set(factory().state_dict()) <= ours, name
    y = MODELS["sew_resnet50"](T=2, num_classes=7)(torch.randn(1, 3, 32, 32))
    assert y.shape == (2, 1, 7)


def test_cache_is_used_while_valid_and_rebuilt_when_the_folder_changes(image_folder, tmp_path):
    classes, samples = index_folder(image_folder / "val", tmp_path)
    cache = next(tmp_path.glob("*.json"))
    stored = json.loads(cache.read_text())
    stored["samples"] = stored["samples"][:1]  # a cache that still matches is trusted as it is
    cache.write_text(json.dumps(stored))
    assert len(index_folder(image_folder / "val", tmp_path)[1]) == 1
    new_class = image_folder / "val" / "n99999999"
    new_class.mkdir()
    Image.new("RGB", (8, 8)).save(new_class / "x.JPEG")
    try:
        classes2, samples2 = index_folder(image_folder / "val", tmp_path)
        assert len(classes2) == len(classes) + 1 and len(samples2) == len(samples) + 1
    finally:
        (new_class / "x.JPEG").unlink()
        new_class.rmdir()


def test_the_original_command_parses():
    args = inet_train.TASK.parse("--cos_lr_T 320 --model sew_resnet34 -b 32 --output-dir ./logs --tb --print-freq 4096 "
                                 "--amp --cache-dataset --T 4 --lr 0.1 --epoch 320 --data-path /dataset/ImageNet2012 "
                                 "--load resnet34-b627a593.pth --tet".split())
    assert (args.cos_lr_T, args.model, args.batch_size, args.output_dir, args.print_freq, args.amp,
            args.cache_dataset, args.T, args.lr, args.epochs, args.data_dir, args.load, args.tet) == \
        (320, "sew_resnet34", 32, "./logs", 4096, True, True, 4, 0.1, 320, "/dataset/ImageNet2012",
         "resnet34-b627a593.pth", True)
    assert (args.opt, args.momentum, args.weight_decay, args.neuron) == ("sgd", 0.9, 0.0, "psn")


# A loader worker's error is the harder case (its traceback wraps the sentence); in-process with -m slow.
@pytest.mark.parametrize("workers", [pytest.param("0", marks=pytest.mark.slow), "1"])
def test_an_unreadable_image_stops_the_run_naming_the_file(image_folder, tmp_path, workers):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    out = run_script(SCRIPT, "--data-path", data, *SMALL, "--epochs", 2, "--output-dir", tmp_path, "--run-name", "r")
    assert last_json(out.stdout)["epochs_done"] == 2
    bad = data / "train" / "n00000003" / "img_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    args = [a if a != "0" else workers for a in SMALL]
    result = run_script(SCRIPT, "--data-path", data, *args, "--epochs", 3, "--resume",
                        tmp_path / "r" / "checkpoint_latest.pth", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("error: Image ") and str(bad) in lines[-1]
    assert "Traceback" not in result.stderr and "--resume" in lines[-1]
    assert read_checkpoint(tmp_path / "r" / "checkpoint_latest.pth").state.epoch == 2  # untouched
