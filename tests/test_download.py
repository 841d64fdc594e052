"""scripts/download_checkpoints.py against a local figshare stand-in on 127.0.0.1."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import run_script

SCRIPT = "scripts/download_checkpoints.py"
ARTICLE = 24454912


class FakeFigshare:
    """Serves an article's file listing and its files, with Range support; can cut a transfer midway."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.bad_md5: set[str] = set()
        self.cut_next: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self.article_record_only = False  # serve the file list only inside /articles/{id}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.requests.append((self.path, self.headers.get("Range")))
                listing = [{"id": i, "name": name, "size": len(data),
                            "computed_md5": "0" * 32 if name in fake.bad_md5 else hashlib.md5(data).hexdigest(),
                            "download_url": f"{fake.url}/files/{name}"}
                           for i, (name, data) in enumerate(fake.files.items())]
                if self.path.startswith(f"/articles/{ARTICLE}/files") and not fake.article_record_only:
                    page = int(self.path.split("page=")[1].split("&")[0]) if "page=" in self.path else 1
                    body = json.dumps(listing[(page - 1) * 10: page * 10]).encode()  # figshare's pages of 10
                    return self._send(200, body, {"Content-Type": "application/json"})
                if self.path == f"/articles/{ARTICLE}":
                    return self._send(200, json.dumps({"id": ARTICLE, "files": listing}).encode())
                name = self.path.rsplit("/", 1)[-1]
                if not self.path.startswith("/files/") or name not in fake.files:
                    return self._send(404, b"not found")
                data, start = fake.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(data):
                        return self._send(416, b"")
                chunk = data[start:]
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
                if name in fake.cut_next:  # promise everything, deliver half, hang up
                    fake.cut_next.discard(name)
                    self.send_response(206 if start else 200)
                    self.send_header("Content-Length", str(len(chunk)))
                    self.end_headers()
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(206 if start else 200, chunk, headers)

            def _send(self, code, body, headers=None):
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


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
    fetch(figshare, tmp_path, "--filter", "imagenet")
    assert [p.name for p in tmp_path.iterdir()] == ["imagenet_sew_resnet18.pth"]
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
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_20.pth", "ckpt_21.pth", "ckpt_22.pth"]
    finally:
        server.server.shutdown()
