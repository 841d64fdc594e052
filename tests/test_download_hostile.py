"""scripts/download_checkpoints.py against a hostile or broken server on 127.0.0.1.

Every case must end with one `error:` line and exit 2, with nothing written outside
--dest and no half-renamed file.
"""
import contextlib
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from types import SimpleNamespace

import pytest

ARTICLE = 24454912


class Hostile:
    """A figshare stand-in whose answers the test writes: `listing(page)` -> JSON-able or bytes,
    and `files[name]` -> a function writing the response to a handler."""

    def __init__(self):
        self.requests = []
        self.listing = lambda page: []
        self.files = {}
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hostile.requests.append(self.path)
                if self.path.startswith(f"/articles/{ARTICLE}/files"):
                    page = int(self.path.split("page=")[1].split("&")[0]) if "page=" in self.path else 1
                    body = hostile.listing(page)
                    body = body if isinstance(body, bytes) else json.dumps(body).encode()
                    return self.send(body)
                name = self.path.rsplit("/", 1)[-1]
                if name in hostile.files:
                    try:
                        return hostile.files[name](self)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                self.send(b"not found", 404)

            def send(self, body, code=200, length=True):
                self.send_response(code)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entry(self, name, size, url=None, md5=None):
        return {"name": name, "size": size, "computed_md5": md5 or "", "download_url": url or f"{self.url}/files/x"}


@pytest.fixture
def hostile():
    server = Hostile()
    yield server
    server.server.shutdown()


def fetch(server, dest, *extra):
    """The downloader's main() in this process (it is what the command line runs), its exit status and
    output captured: no interpreter start per case."""
    from scripts import download_checkpoints

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = download_checkpoints.main(["--api", server.url, "--dest", str(dest), *map(str, extra)])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def fails_cleanly(out, *fragments):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("name", ["../../../escaped.pth", "../common/errors.py", "/tmp/absolute.pth", "sub/dir.pth",
                                  "back\\slash.pth", "nul\x00.pth", "bell\x07.pth", ".", "..", "", 123, None,
                                  "x" * 300, "x" * 251, "ckpt.pth.part", "manifest.json", ".manifest.json.tmp",
                                  "evil\u202egnp.pth", "line\u2028sep.pth", "del\x7f.pth"])
def test_a_listed_name_that_is_not_a_plain_file_name_is_refused(hostile, tmp_path, name):
    hostile.listing = lambda page: [hostile.entry("fine.pth", 3), hostile.entry(name, 3)]
    hostile.files["x"] = lambda h: h.send(b"abc")
    dest = tmp_path / "a" / "b" / "dest"
    out = fetch(hostile, dest)
    fails_cleanly(out, "not a plain file name" if isinstance(name, str) else "not a plain file name")
    assert files_under(tmp_path) == [] and not any(p.startswith("/files") for p in hostile.requests)


def test_repeated_names_are_refused(hostile, tmp_path):
    hostile.listing = lambda page: [hostile.entry("a.pth", 3), hostile.entry("a.pth", 4)]
    fails_cleanly(fetch(hostile, tmp_path / "d"), "more than once")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)", 7, None,
                                 "http://", "http://host/a b", "http://[::1/x", f"http://{'a' * 70}.org/x",
                                 "http://ünïcode.org/x", "http://host:port/x"])
def test_download_urls_must_be_http(hostile, tmp_path, url):
    hostile.listing = lambda page: [{"name": "a.pth", "size": 3, "download_url": url}]
    fails_cleanly(fetch(hostile, tmp_path / "d"), "'a.pth'")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("size", [-1, "5", True, 2**50, 1.5, None])
def test_sizes_must_be_sane_integers(hostile, tmp_path, size):
    hostile.listing = lambda page: [hostile.entry("a.pth", size)]
    fails_cleanly(fetch(hostile, tmp_path / "d"), "size")


@pytest.mark.parametrize("listing", [b"[", b"\xff\xfe", b"{}", b'"files"', json.dumps([1, 2]).encode(),
                                     json.dumps({"files": "x"}).encode(), b"[" * 100000])
def test_malformed_listings_are_refused(hostile, tmp_path, listing):
    hostile.listing = lambda page: listing
    fails_cleanly(fetch(hostile, tmp_path / "d"))


def test_pages_that_never_end_are_not_followed_forever(hostile, tmp_path):
    hostile.listing = lambda page: [hostile.entry(f"p{page}_{i}.pth", 1) for i in range(10)]
    start = time.monotonic()
    fails_cleanly(fetch(hostile, tmp_path / "d", "--list"), "did not end after 100 pages")
    assert len(hostile.requests) == 100 and time.monotonic() - start < 60


def test_a_page_that_repeats_ends_the_listing(hostile, tmp_path):
    hostile.listing = lambda page: [hostile.entry(f"same_{i}.pth", 1) for i in range(10)]
    out = fetch(hostile, tmp_path / "d", "--list")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 10 and len(hostile.requests) == 2


def test_a_listing_beyond_the_size_cap_is_refused(hostile, tmp_path):
    hostile.listing = lambda page: b"[" + b" " * (9 << 20) + b"]"
    fails_cleanly(fetch(hostile, tmp_path / "d", "--list"), "larger than")


@pytest.mark.parametrize("content_length", [True, False])
def test_a_body_longer_than_listed_is_never_written_past_the_size(hostile, tmp_path, content_length):
    data = b"y" * 5000
    hostile.listing = lambda page: [hostile.entry("a.pth", 5000, md5=hashlib.md5(data).hexdigest())]
    hostile.files["x"] = lambda h: h.send(data + b"z" * (4 << 20), length=content_length)
    dest = tmp_path / "d"
    fails_cleanly(fetch(hostile, dest, "--retries", "0"), "more than the 5000 bytes")
    assert files_under(tmp_path) == ["d"]


def test_a_server_that_drips_is_stopped_by_the_deadline(hostile, tmp_path):
    def drip(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.1)

    hostile.listing = lambda page: [hostile.entry("slow.pth", 1000)]
    hostile.files["x"] = drip
    start = time.monotonic()
    out = fetch(hostile, tmp_path / "d", "--deadline", "2", "--timeout", "5")
    fails_cleanly(out, "--deadline")
    assert time.monotonic() - start < 30
    part = tmp_path / "d" / "slow.pth.part"
    assert part.is_file() and 0 < part.stat().st_size < 1000 and not (tmp_path / "d" / "slow.pth").exists()


@pytest.mark.parametrize("flags,fragment", [(["--retries", "-1"], "--retries"), (["--timeout", "0"], "--timeout"),
                                            (["--deadline", "nan"], "--deadline"), (["--article", "x"], "--article"),
                                            (["--api", "file:///etc"], "--api")])
def test_flags_are_validated(hostile, tmp_path, flags, fragment):
    out = fetch(hostile, tmp_path / "d", *flags)
    assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr
    assert files_under(tmp_path) == []


def test_a_dest_that_is_a_file_is_refused(hostile, tmp_path):
    hostile.listing = lambda page: [hostile.entry("a.pth", 3)]
    (tmp_path / "d").write_text("mine")
    fails_cleanly(fetch(hostile, tmp_path / "d"), "not a folder")
    assert (tmp_path / "d").read_text() == "mine"


def test_a_redirect_to_anything_but_http_is_not_followed(hostile, tmp_path):
    def redirect(h):
        h.send_response(302)
        h.send_header("Location", "ftp://127.0.0.1/secret")
        h.send_header("Content-Length", "0")
        h.end_headers()

    hostile.listing = lambda page: [hostile.entry("a.pth", 3)]
    hostile.files["x"] = redirect
    fails_cleanly(fetch(hostile, tmp_path / "d"), "a.pth", "redirect to 'ftp://127.0.0.1/secret'", "not http(s)")
    assert not (tmp_path / "d" / "a.pth").exists()


@pytest.mark.parametrize("flags,fragment", [(["--timeout", "1e10"], "--timeout"), (["--deadline", "nan"], "--deadline"),
                                            (["--api", "http://[::1"], "'http://[::1'"),
                                            (["--api", "http://user:secret@[::1"], "***@")])
def test_flags_out_of_range_are_one_line(hostile, tmp_path, flags, fragment):
    out = fetch(hostile, tmp_path / "d", *flags)
    assert out.returncode == 2 and "Traceback" not in out.stderr and fragment in out.stderr, out.stderr
    assert "secret" not in out.stderr


def _served_file(hostile, body: bytes, name="a.pth", slow=0.0):
    def send(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        time.sleep(slow)
        h.wfile.write(body[len(body) // 2:])

    hostile.listing = lambda page: [hostile.entry(name, len(body), md5=hashlib.md5(body).hexdigest())]
    hostile.files["x"] = send


@pytest.mark.parametrize("occupied", ["a.pth", "manifest.json"])
def test_a_folder_where_a_file_goes_is_one_sentence(hostile, tmp_path, occupied):
    _served_file(hostile, b"abc" * 100)
    (tmp_path / "d" / occupied).mkdir(parents=True)
    fails_cleanly(fetch(hostile, tmp_path / "d"), "is a folder, where the downloader keeps a file")
    assert (tmp_path / "d" / occupied).is_dir()


def test_nothing_is_written_through_a_planted_link(hostile, tmp_path):
    _served_file(hostile, b"abc" * 100)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".manifest.json.tmp").symlink_to(outside)
    assert fetch(hostile, dest).returncode == 0
    assert outside.read_text() == "precious" and json.loads((dest / "manifest.json").read_text())["files"]["a.pth"]


def test_a_file_larger_than_the_free_space_is_not_started(hostile, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    _served_file(hostile, b"abc" * 100)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, (64 << 20) + 100))  # the disk
    fails_cleanly(fetch(hostile, tmp_path / "d"), "a.pth needs 0.0 MiB more", "nothing was fetched")
    assert files_under(tmp_path / "d") == [] and not any(p.startswith("/files") for p in hostile.requests)


def test_two_processes_fetching_one_file_into_one_folder_both_get_it_verified(hostile, tmp_path):
    from common.download import fetch as fetch_one, list_files

    body = bytes(range(256)) * 400
    _served_file(hostile, body, slow=1.0)
    entry = list_files(hostile.url, ARTICLE, 10)[0]
    outcomes, errors = [], []

    def one():
        try:
            outcomes.append(fetch_one(entry, tmp_path, 10, True, 0))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]  # flock: each open() is its own lock holder
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(outcomes) == ["downloaded", "skipped"], (outcomes, errors)
    assert (tmp_path / "a.pth").read_bytes() == body and [p for p in hostile.requests if p.startswith("/files")] \
        == ["/files/x"]


def _drip_headers(h):
    """A status line, then header bytes one at a time, each well within any read timeout, for a minute (until
    the client hangs up)."""
    try:
        h.wfile.write(b"HTTP/1.0 200 OK\r\n")
        h.wfile.flush()
        for _ in range(600):
            h.wfile.write(b"X")
            h.wfile.flush()
            time.sleep(0.1)
    except OSError:  # the client gave up: what the test wants
        return


@pytest.mark.parametrize("where", ["listing", "file"])
def test_the_deadline_covers_response_headers(hostile, tmp_path, where):
    if where == "listing":
        original = hostile.server.RequestHandlerClass.do_GET

        def do_get(handler):
            if handler.path.startswith(f"/articles/{ARTICLE}/files"):
                return _drip_headers(handler)
            return original(handler)

        hostile.server.RequestHandlerClass.do_GET = do_get
    else:
        hostile.listing = lambda page: [hostile.entry("a.pth", 3)]
        hostile.files["x"] = _drip_headers
    started = time.monotonic()
    out = fetch(hostile, tmp_path / "d", "--deadline", "2", "--timeout", "1", "--retries", "0")
    assert time.monotonic() - started < 15, out.stderr
    fails_cleanly(out, "deadline")


def test_the_hubs_deadline_argument_bounds_a_load(hostile, tmp_path, monkeypatch):
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT))
    import hubconf
    from common.errors import UserError

    torch = pytest.importorskip("torch")
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PSN_FIGSHARE_API", hostile.url)
    hostile.listing = lambda page: [hostile.entry("cifar10_psn.pth", 3)]
    hostile.files["x"] = _drip_headers
    started = time.monotonic()
    with pytest.raises(UserError, match="within the deadline= argument") as caught:  # a Python caller's name for it
        hubconf.cifar10_psn(pretrained=True, deadline=2)
    assert "--deadline" not in str(caught.value)
    assert time.monotonic() - started < 15 and "hubconf" in sys.modules
