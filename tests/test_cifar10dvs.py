"""cifar10dvs/: SpikingJelly's real event pipeline on a tiny dataset, TET, the released layout."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifar10dvs import train as dvs_train
from cifar10dvs.data import build_cifar10dvs
from cifar10dvs.models import VGGSlidingPSN
from common.weights import load_model_weights
from common.losses import tet_loss
from conftest import last_json, manifest, read_scalars, run_script

SCRIPT = "cifar10dvs/train.py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEST_IDS, TRAIN_IDS = (0, 7, 99), (100, 513)


@pytest.fixture(scope="module")
def dvs_root(tmp_path_factory):
    """A tiny CIFAR10-DVS in SpikingJelly's own on-disk event format (events_np/<class>/<name>.npz: t, x, y, p)."""
    root = tmp_path_factory.mktemp("cifar10dvs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = root / "events_np" / name
        folder.mkdir(parents=True)
        for i in TEST_IDS + TRAIN_IDS:
            n = 3000
            # Each class lights its own band of rows, so the classes are learnable in principle.
            y = np.clip(rng.normal(12 * c + 6, 6, n), 0, 127).astype(np.int64)
            np.savez(folder / f"cifar10_{name}_{i}.npz", t=np.sort(rng.integers(0, 10**6, n)),
                     x=rng.integers(0, 128, n), y=y, p=rng.integers(0, 2, n))
    return root


def test_spikingjelly_frames_and_the_paper_split(dvs_root):
    data = build_cifar10dvs(str(dvs_root), 4, download=False)
    assert (dvs_root / "frames_number_4_split_by_number").is_dir()  # SpikingJelly's own integration ran
    assert data.num_classes == 10 and len(data.test) == 30 and len(data.train) == 20
    test_labels = [data.test[i][1] for i in range(len(data.test))]
    train_labels = [data.train[i][1] for i in range(len(data.train))]
    assert all(test_labels.count(c) == 3 for c in range(10))
    assert all(train_labels.count(c) == 2 for c in range(10))
    frames, _ = data.test[0]
    assert frames.shape == (4, 2, 48, 48) and frames.dtype == torch.float32
    raw = np.load(dvs_root / "frames_number_4_split_by_number" / "airplane" / "cifar10_airplane_0.npz")["frames"]
    assert raw.sum() == 3000  # raw counts: every event lands in one of the T frames
    # The original's resize: bilinear on tensors, no antialiasing (torchvision 0.15).
    resized = F.interpolate(torch.from_numpy(raw).float(), size=(48, 48), mode="bilinear", antialias=False,
                            align_corners=False)
    torch.testing.assert_close(frames, resized)


def test_one_epoch_run_at_T4(dvs_root, tmp_path):
    out = run_script(SCRIPT, "--data-dir", dvs_root, "-T", 4, "--epochs", 1, "-b", 10, "--workers", 0,
                     "--device", "cpu", "--output-dir", tmp_path, "--run-name", "r")
    record = last_json(out.stdout)
    assert record["epochs_done"] == 1 and 0 <= record["last_test_acc1"] <= 100
    scalars = read_scalars(tmp_path / "r")
    assert {"train/loss", "test/loss", "test/acc1", "test/acc5", "lr"} <= set(scalars)
    assert (tmp_path / "r" / "checkpoint_latest.pth").is_file() and (tmp_path / "r" / "checkpoint_max.pth").is_file()
    again = run_script(SCRIPT, "--data-dir", dvs_root, "-T", 4, "-b", 10, "--workers", 0, "--device", "cpu",
                       "--test-only", "--resume", tmp_path / "r" / "checkpoint_latest.pth")
    assert last_json(again.stdout)["test_acc1"] == pytest.approx(record["last_test_acc1"])


@pytest.mark.parametrize("T", [8, 10])
def test_longer_sequences_build_and_train_a_step(T):
    torch.manual_seed(T)
    model = VGGSlidingPSN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    out = model(torch.rand(2, T, 2, 48, 48) * 4)
    assert out.shape == (2, T, 10)
    loss = tet_loss(out, torch.tensor([1, 7]), mse_weight=1e-3, time_dim=1)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and model.features[1].weight.grad is not None


def test_tet_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    out = torch.randn(3, 4, 5, dtype=torch.float64)  # [N, T, classes]
    target = torch.tensor([0, 4, 2])
    ce = 0.0
    for t in range(4):
        for n in range(3):
            logits = out[n, t].tolist()  # plain floats: the reference shares no code with torch
            ce += -(logits[int(target[n])] - math.log(sum(math.exp(v) for v in logits)))
    ce /= 4 * 3
    mse = ((out - 1.0) ** 2).mean().item()
    expected = (1 - 1e-3) * ce + 1e-3 * mse
    assert tet_loss(out, target, mse_weight=1e-3, time_dim=1).item() == pytest.approx(expected, rel=1e-12)
    assert tet_loss(out.transpose(0, 1), target, time_dim=0).item() == pytest.approx(ce, rel=1e-12)


def manifest_checkpoint(prefix: str = "") -> dict:
    """Random weights in the original model_dvs layout, key for key from the released manifest."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape, dtype in manifest("cifar10dvs_vgg_spsn.tsv"):
        if dtype == "int64":
            sd[prefix + key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[prefix + key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".threshold"):
            sd[prefix + key] = torch.tensor(-0.3)
        else:
            sd[prefix + key] = torch.randn(shape, generator=g) * 0.3
    return {"model": sd, "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 82.3}


def original_forward(sd: dict, frames: torch.Tensor) -> torch.Tensor:
    """The original network written out from its description, in plain torch, on the raw keys (eval mode)."""
    x = frames.transpose(0, 1)  # [T, N, ...]
    steps = x.shape[0]
    conv_ids = [0, 2, 5, 7, 10, 12, 15, 17]
    for i in range(20):
        if i in conv_ids:
            p = f"features.{i}.fwd.module."
            y = F.conv2d(x.flatten(0, 1), sd[p + "0.weight"], sd[p + "0.bias"], padding=1)
            y = F.batch_norm(y, sd[p + "1.running_mean"], sd[p + "1.running_var"], sd[p + "1.weight"],
                             sd[p + "1.bias"], False, 0.0, 1e-5)
            x = y.view(steps, -1, *y.shape[1:])
        elif i - 1 in conv_ids:  # sliding PSN, order 2: h[t] = w1 x[t] + w0 x[t-1] + threshold
            w, th = sd[f"features.{i}.weight"], sd[f"features.{i}.threshold"]
            h = torch.stack([w[1] * x[t] + (w[0] * x[t - 1] if t > 0 else 0) + th for t in range(steps)])
            x = (h >= 0).to(x.dtype)
        else:
            y = F.avg_pool2d(x.flatten(0, 1), 2)
            x = y.view(steps, -1, *y.shape[1:])
    y = F.linear(x.flatten(2), sd["classifier.0.module.1.weight"], sd["classifier.0.module.1.bias"])
    return y.transpose(0, 1)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_released_layout_loads_and_computes_the_original_function(prefix, tmp_path):
    ckpt = manifest_checkpoint(prefix)
    torch.save(ckpt, tmp_path / "dvs.pth")
    model = VGGSlidingPSN()
    loaded = load_model_weights(model, tmp_path / "dvs.pth")
    assert loaded.layout == "model_dvs" and loaded.state.best_acc1 == pytest.approx(82.3) and loaded.state.epoch == 200
    model = model.double().eval()
    frames = torch.rand(2, 4, 2, 48, 48, dtype=torch.float64) * 3
    raw = {k.removeprefix(prefix): v.double() for k, v in ckpt["model"].items()}
    with torch.no_grad():
        ours = model(frames)
    reference = original_forward(raw, frames)
    assert ours.shape == (2, 4, 10)
    assert (ours - reference).abs().max() < 1e-9


def test_wrong_checkpoint_is_refused_with_the_keys_named(dvs_root, tmp_path):
    ckpt = manifest_checkpoint()
    ckpt["model"]["classifier.1.weight"] = ckpt["model"].pop("classifier.0.module.1.weight")
    torch.save(ckpt, tmp_path / "wrong.pth")
    result = run_script(SCRIPT, "--data-dir", dvs_root, "--device", "cpu", "--workers", 0, "-T", 4, "--test-only",
                        "--resume", tmp_path / "wrong.pth", check=False)
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "missing keys: classifier.0.module.1.weight" in err
    assert "unexpected keys: classifier.1.weight" in err


def test_missing_dataset_says_where_to_put_it(tmp_path):
    result = run_script(SCRIPT, "--data-dir", tmp_path / "none", "--device", "cpu", "--output-dir", tmp_path,
                        check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "CIFAR10-DVS was not found" in result.stderr and "--download" in result.stderr


def test_the_original_command_parses():
    args = dvs_train.TASK.parse("-b 32 --epochs 200 -method PSN -TET -T 4".split())
    assert (args.batch_size, args.epochs, args.method, args.tet, args.T) == (32, 200, "sliding_psn", True, 4)
    assert (args.opt, args.lr, args.momentum, args.weight_decay, args.order, args.exp_init) == \
        ("sgd", 0.1, 0.9, 5e-4, 2, True)


def test_the_classifier_drops_what_the_originals_dropout2d_dropped():
    """The original put nn.Dropout2d(0.25) before the classifier's Linear on the [T*N, 4608] features (a 2-D
    input, which torch drops element-wise): our classifier, in training, gives the same output for the same
    seed, dropping a quarter of the features."""
    from cifar10dvs.models import VGGSlidingPSN

    torch.manual_seed(0)
    classifier = VGGSlidingPSN().classifier.train()
    x = torch.randn(4, 3, 512 * 3 * 3)  # [T, N, features]
    torch.manual_seed(1)
    ours = classifier(x)
    torch.manual_seed(1)
    with pytest.warns(UserWarning):
        dropped = F.dropout2d(x.flatten(0, 1), 0.25, True)
    assert torch.equal(ours, classifier[0].module[1](dropped).view(4, 3, -1))
    assert 0.23 < (dropped == 0).float().mean() < 0.27


@pytest.mark.parametrize("damage", [pytest.param("missing_one", marks=pytest.mark.slow), "corrupt_one"])
def test_without_download_nothing_is_fetched_or_deleted(tmp_path, damage):
    """Damaged or missing archives are reported before SpikingJelly runs, and the user's files stay."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    download = tmp_path / "dvs" / "download"
    download.mkdir(parents=True)
    names = [name for name, _, _ in CIFAR10DVS.resource_url_md5()]
    for name in names[1:] if damage == "missing_one" else names:
        (download / name).write_bytes(b"not the real archive " + name.encode())
    before = {p.name: p.read_bytes() for p in download.iterdir()}
    result = run_script(SCRIPT, "--data-dir", tmp_path / "dvs", "--device", "cpu", "--output-dir", tmp_path / "runs",
                        check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "damaged" in lines[0] and "--download" in lines[0]
    if damage == "missing_one":
        assert f"{names[0]} missing" in lines[0]
    assert {p.name: p.read_bytes() for p in download.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "dvs").iterdir()) == ["download"]  # nothing extracted or marked
