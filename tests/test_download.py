"""scripts/download_checkpoints.py against a local figshare stand-in on 127.0.0.1."""
import json

import pytest

from conftest import run_script
from figshare import FakeFigshare

SCRIPT = "scripts/download_checkpoints.py"


@pytest.fixture
def figshare():
    files = {"cifar10_psn_T4.pth": bytes(range(256)) * 4000, "imagenet_sew_resnet18.pth": b"x" * 300_000,
             "cifar10dvs_T4.pth": b"dvs" * 5000}
    server = FakeFigshare(files)
    yield server
    server.server.shutdown()


def fetch(server, dest, *extra, check=True):
    return run_script(SCRIPT, "--api", server.url, "--dest", dest, *extra, check=check)


def test_download_verify_and_skip(figshare, tmp_path):
    out = fetch(figshare, tmp_path)
    for name, data in figshare.files.items():
        assert (tmp_path / name).read_bytes() == data
    assert out.stdout.count("downloaded: ") == 3
    assert not list(tmp_path.glob("*.part"))
    before = len(figshare.requests)
    again = fetch(figshare, tmp_path)
    assert again.stdout.count("skipped: ") == 3
    assert len(figshare.requests) == before + 1  # only the listing: nothing fetched again


def test_list_and_filter(figshare, tmp_path):
    listing = fetch(figshare, tmp_path, "--list").stdout.splitlines()
    assert [line.split("\t")[0] for line in listing] == list(figshare.files)
    assert listing[1].split("\t")[2] == "imagenet" and listing[2].split("\t")[2] == "cifar10dvs"
    assert [line.split("\t")[3] for line in listing] == ["cifar10_psn", "sew_resnet18_psn", "cifar10dvs_sliding_psn_t4"]
    fetch(figshare, tmp_path, "--filter", "imagenet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet_sew_resnet18.pth", "manifest.json"]
    recorded = json.loads((tmp_path / "manifest.json").read_text())["files"]["imagenet_sew_resnet18.pth"]
    assert recorded["model"] == "sew_resnet18_psn" and recorded["size"] == 300_000
    none = fetch(figshare, tmp_path, "--filter", "nothing", check=False)
    assert none.returncode == 2 and "no file" in none.stderr


def test_cut_transfer_resumes_with_range(figshare, tmp_path):
    name = "cifar10_psn_T4.pth"
    half = len(figshare.files[name]) // 2
    figshare.cut_next.add(name)
    out = fetch(figshare, tmp_path, "--filter", name)  # cut once, resumed at once
    assert "transfer cut" in out.stderr and "downloaded" in out.stdout
    assert (tmp_path / name).read_bytes() == figshare.files[name]
    assert (f"/files/{name}", f"bytes={half}-") in figshare.requests


def test_cut_transfer_left_for_the_next_run(figshare, tmp_path):
    name = "cifar10_psn_T4.pth"
    figshare.cut_next.add(name)
    first = fetch(figshare, tmp_path, "--filter", name, "--retries", 0, check=False)
    assert first.returncode == 2 and "transfer cut" in first.stderr and "resume" in first.stderr
    part = tmp_path / f"{name}.part"
    half = len(figshare.files[name]) // 2
    assert part.stat().st_size == half and not (tmp_path / name).exists()
    second = fetch(figshare, tmp_path, "--filter", name)
    assert "downloaded" in second.stdout
    assert (tmp_path / name).read_bytes() == figshare.files[name] and not part.exists()
    assert (f"/files/{name}", f"bytes={half}-") in figshare.requests


def test_md5_mismatch_is_reported_and_nothing_renamed(figshare, tmp_path):
    name = "cifar10dvs_T4.pth"
    figshare.bad_md5.add(name)
    out = fetch(figshare, tmp_path, "--filter", name, check=False)
    assert out.returncode == 2 and "MD5 mismatch" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_offline_says_so_in_one_sentence(tmp_path):
    out = run_script(SCRIPT, "--api", "http://127.0.0.1:9", "--dest", tmp_path, "--timeout", "5", check=False)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Could not reach") and len(out.stderr.strip().splitlines()) == 1


def test_many_files_over_several_pages_and_the_article_record(tmp_path):
    files = {f"ckpt_{i:02d}.pth": bytes([i]) * (1000 + i) for i in range(23)}
    server = FakeFigshare(files)
    try:
        listing = fetch(server, tmp_path, "--list").stdout.splitlines()
        assert sorted(line.split("\t")[0] for line in listing) == sorted(files)
        server.article_record_only = True
        fetch(server, tmp_path, "--filter", "ckpt_2*")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_20.pth", "ckpt_21.pth", "ckpt_22.pth", "manifest.json"]
    finally:
        server.server.shutdown()
