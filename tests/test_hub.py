"""hubconf.py against a local figshare stand-in on 127.0.0.1: every released model one line away, the
original outputs in float64, the cache, corrupted and offline caches, and the entries' listing."""
import hashlib
import json
import re

import pytest
import torch

from conftest import FIXTURES, ROOT, manifest
from figshare import FakeFigshare

ENTRIES = {"cifar10_psn", "cifar10dvs_sliding_psn_t4", "cifar10dvs_sliding_psn_t8", "cifar10dvs_sliding_psn_t10",
           "sew_resnet18_psn", "sew_resnet34_psn", *(f"sequential_cifar_{n}" for n in (
               "psn", "masked_psn", "sliding_psn", "lif", "plif", "klif", "glif", "lif_no_reset"))}


def _from_manifest(name: str, seed: int) -> dict:
    """A state dict with exactly the keys, shapes and dtypes of a released model, random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in manifest(name):
        if dtype.startswith("int"):
            sd[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def _bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def released():
    """The article as a server would list it: the CIFAR-10 file is the original-format fixture (32 channels,
    with the original code's outputs); the others are built from the released models' key manifests."""
    import argparse

    dvs = _from_manifest("cifar10dvs_vgg_spsn.tsv", 0)
    files = {
        "cifar10_psn_c32_T4.pth": (FIXTURES / "cifar10_psn_c32_T4.pth").read_bytes(),
        "cifar10dvs_T4.pth": _bytes({"model": dvs, "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 82.3}),
        "cifar10dvs_T8.pth": _bytes({"model": dvs, "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 85.3}),
        "cifar10dvs_T10.pth": _bytes({"model": dvs, "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 85.9}),
        "README.txt": b"the article's description",
    }
    for depth in (18, 34):
        sd = _from_manifest(f"imagenet_sew_resnet{depth}_T4.tsv", depth)
        files[f"sew_resnet{depth}_imagenet_T4.pth"] = _bytes(
            {"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 319, "max_test_acc1": 67.6,
             "args": argparse.Namespace(model=f"sew_resnet{depth}", T=4)})
    server = FakeFigshare(files)
    yield server
    server.close()


@pytest.fixture
def hub(released, tmp_path, monkeypatch):
    """hubconf imported as torch.hub.load imports it, with its cache in a fresh folder and the API here."""
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PSN_FIGSHARE_API", released.url)
    released.requests.clear()
    yield released
    torch.hub.set_dir(str(tmp_path / "elsewhere"))


def _load(name, **kwargs):
    return torch.hub.load(str(ROOT), name, source="local", trust_repo=True, verbose=False, **kwargs)


def test_the_cifar10_entry_gives_the_original_outputs_then_reads_its_cache(hub):
    model = _load("cifar10_psn", pretrained=True, channels=32)
    assert not model.training
    io_ = torch.load(FIXTURES / "cifar10_psn_c32_T4.io.pt", weights_only=True)
    with torch.no_grad():
        out = model.double()(io_["x"])
    assert (out - io_["y"]).abs().max().item() < 1e-9
    downloads = [path for path, _ in hub.requests if path.startswith("/files/")]
    assert downloads == ["/files/cifar10_psn_c32_T4.pth"]  # that model's file only

    hub.requests.clear()
    _load("cifar10_psn", pretrained=True, channels=32)
    assert hub.requests == []  # from the cache: not one request

    cached = next((ROOT / torch.hub.get_dir()).glob("checkpoints/psn-figshare-24454912/cifar10_psn_c32_T4.pth"))
    data = bytearray(cached.read_bytes())
    data[-100] ^= 0xFF  # the cached file corrupted on disk
    cached.write_bytes(bytes(data))
    _load("cifar10_psn", pretrained=True, channels=32)
    assert "/files/cifar10_psn_c32_T4.pth" in [path for path, _ in hub.requests]  # fetched again
    assert hashlib.md5(cached.read_bytes()).hexdigest() == hashlib.md5(hub.files["cifar10_psn_c32_T4.pth"]).hexdigest()


def _original_to_ours(sd: dict, psn_prefixes: bool) -> dict:
    """The original names by hand: IFNode5's `fc.weight` / `fc.bias` [T], the sliding PSN's `threshold`."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".fc.weight") and psn_prefixes:
            out[key.replace(".fc.weight", ".weight")] = value
        elif key.endswith(".fc.bias") and psn_prefixes:
            out[key.replace(".fc.bias", ".bias")] = value.reshape(-1, 1)
        elif key.endswith(".threshold"):
            out[key.replace(".threshold", ".bias")] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("name,file,model", [
    ("cifar10dvs_sliding_psn_t4", "cifar10dvs_T4.pth", lambda: __import__("cifar10dvs.models").models.VGGSlidingPSN()),
    ("cifar10dvs_sliding_psn_t10", "cifar10dvs_T10.pth", lambda: __import__("cifar10dvs.models").models.VGGSlidingPSN()),
    ("sew_resnet18_psn", "sew_resnet18_imagenet_T4.pth",
     lambda: __import__("imagenet.models").models.sew_resnet18(T=4, num_classes=1000)),
    ("sew_resnet34_psn", "sew_resnet34_imagenet_T4.pth",
     lambda: __import__("imagenet.models").models.sew_resnet34(T=4, num_classes=1000)),
])
def test_the_dvs_and_imagenet_entries_hold_the_released_tensors(hub, name, file, model):
    loaded = _load(name, pretrained=True).double()
    reference = model()  # built here, its weights put in by hand from the served file
    sd = torch.load(_served(hub, file), weights_only=False)["model"]  # a file the test made: Namespace inside
    reference.load_state_dict(_original_to_ours(sd, psn_prefixes=True))
    reference = reference.double().eval()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.manual_seed(0)
    x = torch.rand((2, 4, 2, 48, 48) if "dvs" in name else (1, 3, 64, 64), dtype=torch.float64) * 3
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def _served(hub, name):
    import io

    return io.BytesIO(hub.files[name])


def test_listings_without_a_models_file_or_with_two_are_one_sentence(tmp_path, monkeypatch):
    from common.download import DownloadError, find_model, model_of

    assert {model_of(n) for n in ("PSN_CIFAR10DVS_T8.pth", "dvs-t_8.pt")} == {"cifar10dvs_sliding_psn_t8"}
    assert model_of("imagenet_sew_resnet34.pth") == "sew_resnet34_psn" and model_of("notes_cifar10.txt") is None
    two = [{"name": "cifar10dvs_T4.pth"}, {"name": "dvs_t4_again.pth"}, {"name": "cifar10.pth"}]
    with pytest.raises(DownloadError, match="Several files .* cifar10dvs_T4.pth, dvs_t4_again.pth"):
        find_model(two, "cifar10dvs_sliding_psn_t4")
    with pytest.raises(DownloadError, match="No file of the listing is recognisably ImageNet, SEW ResNet-18") as e:
        find_model(two, "sew_resnet18_psn")
    assert "cifar10.pth" in str(e.value) and "\n" not in str(e.value)


OFFLINE = "http://127.0.0.1:9/v2"  # nothing listens on the discard port: a machine without internet


def test_offline_with_an_empty_cache_says_how_to_bring_the_weights_in_python_terms(tmp_path, monkeypatch):
    from common.errors import UserError

    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PSN_FIGSHARE_API", OFFLINE)
    with pytest.raises(UserError) as caught:
        _load("sew_resnet18_psn", pretrained=True)
    message = str(caught.value)
    assert "http://127.0.0.1:9/v2/articles/24454912" in message and "\n" not in message
    assert "PSN_WEIGHTS_DIR=DIR or pass pretrained=DIR" in message and "PSN_FIGSHARE_API" in message
    assert not re.search(r"(^|\s)--(api|deadline|filter)", message), message  # Python callers set no CLI flags


def _io():
    return torch.load(FIXTURES / "cifar10_psn_c32_T4.io.pt", weights_only=True)


def _original_outputs(model) -> float:
    with torch.no_grad():
        return (model.double()(_io()["x"]) - _io()["y"]).abs().max().item()


def test_weights_from_a_file_a_folder_or_the_weights_dir_need_no_network(released, tmp_path, monkeypatch):
    """The login-node recipe: download_checkpoints.py fills a folder; on the compute node (no network) the entry
    takes that folder, a file in it, or finds it through PSN_WEIGHTS_DIR, without one request."""
    from scripts import download_checkpoints

    monkeypatch.setenv("PSN_FIGSHARE_API", released.url)
    assert download_checkpoints.main(["--dest", str(tmp_path / "w"), "--filter", "cifar10_psn"]) == 0
    monkeypatch.setenv("PSN_FIGSHARE_API", OFFLINE)
    torch.hub.set_dir(str(tmp_path / "hub"))
    released.requests.clear()
    by_folder = _load("cifar10_psn", pretrained=str(tmp_path / "w"), channels=32)
    by_file = _load("cifar10_psn", pretrained=tmp_path / "w" / "cifar10_psn_c32_T4.pth", channels=32)
    monkeypatch.setenv("PSN_WEIGHTS_DIR", str(tmp_path / "w"))
    by_variable = _load("cifar10_psn", pretrained=True, channels=32)
    assert released.requests == [] and not (tmp_path / "hub").exists()
    for model in (by_folder, by_file, by_variable):
        assert _original_outputs(model) < 1e-9 and not model.training
    # A folder without the model, and a value that is none of the forms, are one sentence each.
    from common.errors import UserError

    with pytest.raises(UserError, match=r"sew_resnet18_psn\(pretrained='.*w'\): that folder holds no file"):
        _load("sew_resnet18_psn", pretrained=str(tmp_path / "w"))
    with pytest.raises(UserError, match=r"no such file or folder"):
        _load("cifar10_psn", pretrained=str(tmp_path / "nowhere.pth"), channels=32)
    with pytest.raises(UserError, match=r"pretrained=3\): give True"):
        _load("cifar10_psn", pretrained=3, channels=32)
    with pytest.raises(UserError, match=r"progress='yes'"):
        _load("cifar10_psn", pretrained=True, progress="yes", channels=32)


def test_weights_from_a_url_are_fetched_once_with_a_bar_unless_progress_is_false(hub, capfd):
    url = f"{hub.url}/files/cifar10_psn_c32_T4.pth"
    model = _load("cifar10_psn", pretrained=url, channels=32, progress=False)
    assert _original_outputs(model) < 1e-9
    assert "cifar10_psn_c32_T4.pth" not in capfd.readouterr().err  # no bar
    assert [p for p, _ in hub.requests if p.startswith("/files/")] == ["/files/cifar10_psn_c32_T4.pth"] * 2
    hub.requests.clear()
    _load("cifar10_psn", pretrained=url, channels=32)  # from the cache, MD5 as recorded
    assert hub.requests == []
    cache = ROOT / torch.hub.get_dir() / "checkpoints" / "psn-figshare-24454912"
    recorded = json.loads((cache / "manifest.json").read_text())["files"]["cifar10_psn_c32_T4.pth"]
    assert recorded["url"] == url and recorded["model"] == "cifar10_psn"
    assert recorded["md5"] == hashlib.md5(hub.files["cifar10_psn_c32_T4.pth"]).hexdigest()
    (cache / "cifar10_psn_c32_T4.pth").unlink()
    _load("cifar10_psn", pretrained=True, channels=32)  # through the listing, with the default bar on stderr
    assert "cifar10_psn_c32_T4.pth" in capfd.readouterr().err


def test_refusals_of_the_entries(hub):
    from common.errors import UserError

    with pytest.raises(UserError, match="released no weights for sequential_cifar_psn"):
        _load("sequential_cifar_psn", pretrained=True)
    with pytest.raises(UserError, match="T=8 contradicts the released cifar10_psn weights .* T=4"):
        _load("cifar10_psn", pretrained=True, channels=32, T=8)
    with pytest.raises(UserError, match="num_classes=100 contradicts"):
        _load("sew_resnet18_psn", pretrained=True, num_classes=100)
    with pytest.raises(TypeError, match="takes no depth"):
        _load("cifar10_psn", depth=3)
    assert _load("sequential_cifar_sliding_psn", channels=8).conv[2].k == 32  # architectures build without weights


def test_the_entries_listed_by_torch_hub_each_with_a_one_line_docstring(monkeypatch):
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *a, **k: str(ROOT))  # torch.hub.list is GitHub-only
    names = torch.hub.list("owner/repo", trust_repo=True, verbose=False)
    assert set(names) == ENTRIES
    for name in names:
        doc = torch.hub.help("owner/repo", name, trust_repo=True).strip()
        assert doc and len(doc.splitlines()) == 1 and len(doc) < 200, name
    import hubconf  # a plain import works as well, in the repository's folder

    assert re.search(r"paper 95\.32", hubconf.cifar10_psn.__doc__)


def test_the_downloader_and_the_hub_share_the_api_setting(released, tmp_path, monkeypatch):
    from common.download import default_api
    from scripts import download_checkpoints

    monkeypatch.setenv("PSN_FIGSHARE_API", released.url)
    assert default_api() == released.url
    assert download_checkpoints.main(["--filter", "cifar10dvs_T8", "--dest", str(tmp_path)]) == 0
    recorded = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert recorded["cifar10dvs_T8.pth"]["model"] == "cifar10dvs_sliding_psn_t8"


@pytest.mark.parametrize("entry,settings,fragment", [
    ("sequential_cifar_sliding_psn", {"order": 10**9}, "order=1000000000) cannot be built: it must lie from 1 to"),
    ("sequential_cifar_sliding_psn", {"order": 33}, "the network's 32 time steps"),
    ("cifar10_psn", {"channels": 0}, "channels=0) cannot be built: it must lie from 1 to 8192"),
    ("cifar10_psn", {"channels": -5}, "channels=-5"), ("cifar10_psn", {"channels": 10**6}, "channels=1000000"),
    ("cifar10_psn", {"num_classes": -1}, "num_classes=-1) cannot be built"),
    ("cifar10_psn", {"T": "4"}, "T='4') cannot be built: it must be an integer"),
    ("sew_resnet18_psn", {"T": 0}, "T=0"), ("cifar10dvs_sliding_psn_t4", {"exp_init": "yes"}, "exp_init='yes'"),
])
def test_entry_settings_are_held_to_the_command_lines_bounds(entry, settings, fragment):
    from common.errors import UserError

    with pytest.raises(UserError) as caught:
        _load(entry, **settings)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def _zip(members: dict) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict, links: dict | None = None) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def run_folder_names(released, tmp_path, monkeypatch):
    """The article as the authors might have uploaded it: files named after their run folders, archives of
    `checkpoint_max.pth` files, and a name that misleads (a CIFAR-10 file called sew_resnet34_imagenet.pth)."""
    f = released.files
    server = FakeFigshare({
        "if5_T4_e1024_b128_sgd_lr0.1_c256_amp_checkpoint_max.pth": f["cifar10_psn_c32_T4.pth"],
        "T4_opt_SGD0.1_tau_0.25_method_PSN_b_32_TET_2gpu.zip": _zip(
            {"T4_opt_SGD0.1_tau_0.25_method_PSN_b_32_TET_2gpu/checkpoint_max.pth": f["cifar10dvs_T4.pth"],
             "T4_opt_SGD0.1_tau_0.25_method_PSN_b_32_TET_2gpu/args.txt": b"not a checkpoint"}),
        "dvs_runs.tar.gz": _tar_gz({"T8_run/checkpoint_max.pth": f["cifar10dvs_T8.pth"],
                                    "T10_run/checkpoint_max.pth": f["cifar10dvs_T10.pth"]},
                                   links={"T10_run/checkpoint_latest.pth": "/etc/passwd"}),
        "sew_resnet34_imagenet.pth": f["cifar10_psn_c32_T4.pth"],
        "model_final.pth": f["sew_resnet34_imagenet_T4.pth"],
    })
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PSN_FIGSHARE_API", server.url)
    yield server
    server.close()


def test_files_named_after_run_folders_or_in_archives_are_known_by_their_contents(run_folder_names, released):
    model = _load("cifar10_psn", pretrained=True, channels=32)
    with torch.no_grad():
        assert (model.double()(_io()["x"]) - _io()["y"]).abs().max().item() < 1e-9
    cache = ROOT / torch.hub.get_dir() / "checkpoints" / "psn-figshare-24454912"
    for T in (4, 8, 10):  # T from each file's best accuracy against the paper's table: 82.30, 85.30, 85.90
        loaded = _load(f"cifar10dvs_sliding_psn_t{T}", pretrained=True)
        assert not loaded.training
    manifest_ = json.loads((cache / "manifest.json").read_text())["files"]
    by_model = {e["model"]: name for name, e in manifest_.items() if e.get("model")}
    assert by_model["cifar10dvs_sliding_psn_t4"].endswith("2gpu__checkpoint_max.pth")
    assert by_model["cifar10dvs_sliding_psn_t10"] == "dvs_runs.tar.gz__T10_run__checkpoint_max.pth"
    assert manifest_[by_model["cifar10dvs_sliding_psn_t8"]]["settings"] == {"T": 8}
    assert not any("checkpoint_latest" in name for name in manifest_)  # the archive's link was not followed
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == []  # nothing unpacked outside flat names
    # The misleading name is looked into, found to hold CIFAR-10, and the real ResNet-34 found by contents.
    resnet = _load("sew_resnet34_psn", pretrained=True)
    assert manifest_ != json.loads((cache / "manifest.json").read_text())["files"]
    recorded = json.loads((cache / "manifest.json").read_text())["files"]
    assert recorded["sew_resnet34_imagenet.pth"]["model"] == "cifar10_psn"
    assert recorded["model_final.pth"]["model"] == "sew_resnet34_psn" and not resnet.training
    run_folder_names.requests.clear()
    _load("cifar10dvs_sliding_psn_t8", pretrained=True)  # the second time: from the manifest, no request
    assert run_folder_names.requests == []


def test_an_archive_reaching_outside_its_folder_or_a_file_no_one_can_tell_is_one_sentence(released, tmp_path,
                                                                                          monkeypatch):
    from common.errors import UserError

    dvs = released.files["cifar10dvs_T4.pth"]
    unknown_T = _bytes({"model": torch.load(_served(released, "cifar10dvs_T4.pth"), weights_only=False)["model"],
                        "optimizer": {}, "scheduler": {}, "epoch": 199, "best_acc": 70.0})
    server = FakeFigshare({"evil.zip": _zip({"../../escaped.pth": dvs}), "my_run.pth": unknown_T})
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PSN_FIGSHARE_API", server.url)
    try:
        with pytest.raises(UserError) as caught:
            _load("cifar10dvs_sliding_psn_t4", pretrained=True)
    finally:
        server.close()
    message = str(caught.value)
    assert "by name or by contents" in message and "evil.zip: an archive that cannot be used" in message
    assert "my_run.pth: a CIFAR10-DVS VGG with sliding PSN whose T the file cannot tell (its best accuracy 70.00 %" \
        in message and "\n" not in message
    assert not (tmp_path / "escaped.pth").exists() and not list(tmp_path.rglob("escaped.pth"))
