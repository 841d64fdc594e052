"""The authors' released checkpoints (figshare article 24454912): listing, name rules, fetch, cache.

The one downloader of the project: scripts/download_checkpoints.py (the command line) and
hubconf.py's `pretrained=True` both go through it. The file list (names, sizes, MD5s, download
URLs) comes from figshare's public API. Each file is fetched into `<name>.part`, resumed with an
HTTP Range request when a transfer is cut (at once, up to `retries` times, and by the next call
from the .part left behind), checked against its MD5, and only then renamed into place. A file
already present with the right MD5 is skipped. PSN_FIGSHARE_API points elsewhere: a mirror, or
the tests' local server. Each verified file is recorded in `manifest.json` beside it (size, MD5,
and which model it is: MODELS below), so that tools can tell a file's model later without asking
the server.

Everything the server says is checked before it is used: a listed name must be a plain file
name (it is joined to the destination), a URL http(s), a size a sane integer; the listing's pages
and bytes are bounded; no body is written past its listed size; `timeout` bounds each read and
`deadline` the whole listing and each whole file: connection, response headers and body (a
watchdog shuts the connection down when it passes); redirects are followed to http(s) only. Any
failure is one DownloadError sentence, leaving nothing outside the destination and no half-renamed
file.
"""
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from .identify import CHECKPOINT_SUFFIXES as IDENTIFIED_SUFFIXES
from .identify import ArchiveError, checkpoints_in_archive, identify, is_archive

ARTICLE = 24454912
API = "https://api.figshare.com/v2"
CHUNK = 1 << 20

DEFAULT_PAGE = 10  # figshare's page size when none is asked for
MAX_PAGES = 100  # 1,000 files: far more than any article of checkpoints
MAX_LISTING_BYTES = 8 << 20  # one page of the listing, or the article record
MAX_FILE_BYTES = 1 << 40  # a listed size beyond 1 TiB is not a checkpoint
FREE_SPACE_MARGIN = 64 << 20  # what a download leaves free on its disk
IDENTIFY_MAX_BYTES = 8 << 30  # a file fetched only to learn what it holds: larger is no released checkpoint
_MD5 = re.compile(r"[0-9a-f]{32}")


class DownloadError(Exception):
    pass


class NotFound(DownloadError):
    pass


class TransferCut(DownloadError):
    """The connection ended early; the .part file keeps what arrived, for a Range request."""


class DeadlinePassed(DownloadError):
    """A file took longer than --deadline; its .part stays for the next run, which resumes it."""


def check_url(url, what: str) -> str:
    """An http(s) URL with a host that can be asked for: ASCII and printable, no spaces, labels of at most 63
    characters; anything else (a malformed IPv6 literal, an IDN host) is one sentence, never a traceback."""
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        host = parts.hostname if parts is not None else None
        _ = parts.port if parts is not None else None  # a port that is no number raises here
    except ValueError:
        parts = host = None
    ok = (parts is not None and parts.scheme in ("http", "https") and bool(host) and url.isascii()
          and url.isprintable() and " " not in url and len(url) <= 2048
          and (":" in host or all(0 < len(label) <= 63 for label in host.rstrip(".").split("."))))
    if not ok:
        raise DownloadError(f"{what} {redacted(url)!r} is not an http(s) URL this downloader can use; refusing it.")
    return url


def redacted(url) -> str:
    """A URL as messages show it: without the user:password@ it may carry."""
    if not isinstance(url, str):
        return url
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", url)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Redirects are followed to http(s) only: urllib alone would follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"a redirect to {redacted(newurl)!r}, which is not http(s)",
                                         headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and hasattr(req, "ends_at"):
            new.ends_at, new.watchdogs = req.ends_at, req.watchdogs
        return new


class _Watchdog:
    """Shuts a connection down when its deadline passes, wherever the transfer stands: a server that drips its
    response headers a byte at a time stays within every read's timeout, and would otherwise never end."""

    def __init__(self, sock: socket.socket, ends_at: float):
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))  # outlives urllib's close of its own handle
        self.fired = False
        self._timer = threading.Timer(max(0.0, ends_at - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        self._sock.close()


def _with_deadline(base):
    class Connection(base):
        """A connection whose connect, request, headers and body all end by the request's deadline."""

        def __init__(self, *args, ends_at: float, watchdogs: list, **kwargs):
            super().__init__(*args, **kwargs)
            self._ends_at, self._watchdogs = ends_at, watchdogs

        def connect(self):
            remaining = self._ends_at - time.monotonic()
            if remaining <= 0:
                raise OSError("the deadline passed before the connection was made")
            if not isinstance(self.timeout, (int, float)) or self.timeout > remaining:
                self.timeout = remaining
            super().connect()
            self._watchdogs.append(_Watchdog(self.sock, self._ends_at))

    return Connection


_HTTPConnection = _with_deadline(http.client.HTTPConnection)
_HTTPSConnection = _with_deadline(http.client.HTTPSConnection)


class _DeadlineHTTP(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, ends_at=req.ends_at, watchdogs=req.watchdogs), req)


class _DeadlineHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req):
        extra = {"context": self._context}
        if hasattr(self, "_check_hostname"):  # Python 3.11
            extra["check_hostname"] = self._check_hostname
        return self.do_open(functools.partial(_HTTPSConnection, ends_at=req.ends_at, watchdogs=req.watchdogs), req,
                            **extra)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly, _DeadlineHTTP, _DeadlineHTTPS)


def _request(url, ends_at: float) -> urllib.request.Request:
    """A request whose connections (redirects' too) end by `ends_at` (time.monotonic())."""
    request = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url)
    request.ends_at, request.watchdogs = ends_at, []
    return request


def _cut_by_deadline(request) -> bool:
    return any(w.fired for w in request.watchdogs) or time.monotonic() >= request.ends_at


def _release(request) -> None:
    for watchdog in request.watchdogs:
        watchdog.cancel()


def read_bounded(response, limit: int, deadline: float, what: str) -> bytes:
    """At most `limit` bytes of a response, read as they arrive, before `deadline` (time.monotonic())."""
    data = bytearray()
    while chunk := response.read1(min(CHUNK, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise DownloadError(f"{what} is larger than {limit} bytes; refusing it.")
        if time.monotonic() > deadline:
            raise DownloadError(f"{what} did not arrive within the --deadline.")
        if len(data) == limit + 1:
            break
    return bytes(data)


def fetch_json(url: str, timeout: float, ends_at: float):
    """The JSON at `url`, by `ends_at` (time.monotonic()): connection, headers and body."""
    request = _request(url, ends_at)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(read_bounded(response, MAX_LISTING_BYTES, ends_at, redacted(url)))
    except urllib.error.HTTPError as e:
        error = NotFound if e.code == 404 else DownloadError
        raise error(f"{redacted(url)} answered HTTP {e.code} ({e.reason}).") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if _cut_by_deadline(request):
            raise DeadlinePassed(f"{redacted(url)} did not answer within the --deadline.") from None
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Could not reach {redacted(url)} ({reason}); check the network connection, or the API "
                            "address (--api, or the environment variable PSN_FIGSHARE_API).") from None
    except (ValueError, RecursionError):
        if _cut_by_deadline(request):  # the deadline cut the answer short
            raise DeadlinePassed(f"{redacted(url)} did not answer within the --deadline.") from None
        raise DownloadError(f"{redacted(url)} did not return JSON; is --api right?") from None
    finally:
        _release(request)


def _pages(base: str, timeout: float, ends_at: float) -> list:
    """/articles/{id}/files page by page: pages come back full until the last; an empty page, a
    page seen before or MAX_PAGES end it (a server whose pages never end is not followed forever)."""
    first = fetch_json(f"{base}/files", timeout, ends_at)
    if not isinstance(first, list):
        return first
    files, seen = list(first), {json.dumps(first, sort_keys=True)}
    page, last = 1, first
    while len(last) == DEFAULT_PAGE:
        page += 1
        if page > MAX_PAGES:
            raise DownloadError(f"{base}/files did not end after {MAX_PAGES} pages; refusing the listing.")
        last = fetch_json(f"{base}/files?page={page}&page_size={DEFAULT_PAGE}", timeout, ends_at)
        if not isinstance(last, list) or not last:
            break
        key = json.dumps(last, sort_keys=True)
        if key in seen:
            break
        seen.add(key)
        files += last
    return files


def check_name(name) -> str:
    """A listed file name, refused unless it is a plain name that stays inside --dest: printable (no control
    characters, line separators or bidi overrides), short enough for its `.part` to fit a file system's 255
    bytes, and none of the downloader's own files (the manifest, its temporary, a `.part`, the hidden locks)."""
    bad = (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
           or not name.isprintable() or os.path.isabs(name)
           or len(name.encode("utf-8", "surrogatepass")) > 255 - len(".part") or name.endswith(".part")
           or name in (MANIFEST, f".{MANIFEST}.tmp"))
    if bad:
        raise DownloadError(f"The listing names a file {name!r}, which is not a plain file name; refusing the "
                            "listing (nothing was written).")
    return name


def check_entry(f) -> dict:
    """One listed file as {name, size, md5, url}, every field checked."""
    if not isinstance(f, dict):
        raise DownloadError(f"The listing holds {type(f).__name__} {str(f)[:60]!r} where a file record belongs.")
    name = check_name(f.get("name"))
    size = f.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
        raise DownloadError(f"The listing gives {name!r} the size {size!r}; refusing the listing.")
    md5 = f.get("computed_md5") or f.get("supplied_md5") or f.get("md5") or ""
    if not isinstance(md5, str) or (md5 and not _MD5.fullmatch(md5.lower())):
        raise DownloadError(f"The listing gives {name!r} the MD5 {md5!r}; refusing the listing.")
    url = check_url(f.get("download_url"), f"The download URL of {name!r},")
    return {"name": name, "size": size, "md5": md5.lower(), "url": url}


def list_files(api: str, article: int, timeout: float, deadline: float = 600.0) -> list[dict]:
    """The article's files: name, size, md5, url, each checked (see check_entry).

    figshare lists them at /articles/{id}/files, 10 per page by default; where that
    listing is missing, the article's own record at /articles/{id} carries them too.
    """
    base = f"{api.rstrip('/')}/articles/{article}"
    ends_at = time.monotonic() + deadline  # the whole listing, every page
    try:
        files = _pages(base, timeout, ends_at)
    except NotFound:
        files = fetch_json(base, timeout, ends_at)
    if isinstance(files, dict):
        files = files.get("files")
    if not isinstance(files, list):
        raise DownloadError(f"{base} did not list the article's files; is --api right?")
    entries = [check_entry(f) for f in files]
    names = [e["name"] for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DownloadError(f"The listing names {twice[0]!r} more than once; refusing the listing.")
    return entries


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(name: str) -> str:
    """Which experiment a released file belongs to, from its name."""
    low = name.lower()
    if "dvs" in low:
        return "cifar10dvs"
    if "imagenet" in low or "resnet" in low or "sew" in low:
        return "imagenet"
    if "cifar" in low or "cf10" in low:
        return "cifar10"
    return "?"


# Which released file is which model by its name: the one place these rules live (where a name tells nothing
# or misleads, fetch_model looks at the contents: common.identify). `--list` shows each file's model,
# hubconf.py's pretrained=True fetches by them, and the manifest this script writes records them. A model
# is told by its experiment (describe) and, where one experiment released several, by T (CIFAR10-DVS) or
# the ResNet depth (ImageNet) written in the name; only checkpoint-like files count.
MODELS = {
    "cifar10_psn": "CIFAR-10, CIFAR10Net (256 channels), PSN, T = 4",
    "cifar10dvs_sliding_psn_t4": "CIFAR10-DVS, VGG with sliding PSN (order 2), T = 4",
    "cifar10dvs_sliding_psn_t8": "CIFAR10-DVS, VGG with sliding PSN (order 2), T = 8",
    "cifar10dvs_sliding_psn_t10": "CIFAR10-DVS, VGG with sliding PSN (order 2), T = 10",
    "sew_resnet18_psn": "ImageNet, SEW ResNet-18 with PSN, T = 4",
    "sew_resnet34_psn": "ImageNet, SEW ResNet-34 with PSN, T = 4",
}
# The settings of each model that its file may not tell (a CIFAR10-DVS file's T): the manifest records them,
# and --test-only / --resume read them from there.
MODEL_SETTINGS = {key: {"T": int(key.rsplit("_t", 1)[1])} for key in MODELS if key.startswith("cifar10dvs")}
CHECKPOINT_SUFFIXES = (*IDENTIFIED_SUFFIXES, ".tar")  # a name rule may also take an old plain .tar checkpoint


def model_of(name: str) -> str | None:
    """The MODELS key of a listed file, or None when its name does not tell one."""
    low = name.lower()
    if not low.endswith(CHECKPOINT_SUFFIXES):
        return None
    experiment = describe(name)
    if experiment == "cifar10dvs":
        t = re.search(r"(?:^|[^a-z0-9])t[_-]?(\d+)(?![0-9])", low)
        key = f"cifar10dvs_sliding_psn_t{t.group(1)}" if t else None
        return key if key in MODELS else None
    if experiment == "imagenet":
        depth = re.search(r"(?:resnet|res|r)[_-]?(\d+)(?![0-9])", low) or re.search(r"(?:^|[^0-9])(18|34)(?![0-9])", low)
        key = f"sew_resnet{depth.group(1)}_psn" if depth else None
        return key if key in MODELS else None
    return "cifar10_psn" if experiment == "cifar10" else None


def find_model(files: list[dict], key: str) -> dict:
    """The one listed file of model `key`; none or several is one sentence naming the candidates."""
    found = [f for f in files if model_of(f["name"]) == key]
    if len(found) == 1:
        return found[0]
    if found:
        raise DownloadError(f"Several files of the listing look like {MODELS[key]}: "
                            f"{', '.join(f['name'] for f in found)}; download the right one by name with --filter.")
    names = ", ".join(f["name"] for f in files[:20]) or "none"
    raise DownloadError(f"No file of the listing is recognisably {MODELS[key]} (the rules are MODELS in "
                        f"common/download.py); the listing holds: {names}.")


MANIFEST = "manifest.json"


def read_manifest(dest: Path) -> dict:
    """{name: {size, md5, model, url}} of the files this script fetched into `dest` (empty when none or damaged)."""
    try:
        with (Path(dest) / MANIFEST).open("rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    kept = {}
    for name, entry in files.items():
        try:
            kept[check_name(name)] = entry if isinstance(entry, dict) else {}
        except DownloadError:  # a name that is no plain file name: not ours to follow
            continue
    return kept


def record_in_manifest(dest: Path, entry: dict, model: str | None = None) -> None:
    """Note a verified file in `dest`/manifest.json (atomically): which model it is (`model`, or what its name
    tells), its size and MD5."""
    files = read_manifest(dest)
    model = model or model_of(entry["name"])
    files[entry["name"]] = {"size": entry["size"], "md5": entry["md5"], "model": model, "url": entry["url"],
                            "settings": MODEL_SETTINGS.get(model, {})}
    _must_be_a_file_or_absent(Path(dest) / MANIFEST)
    tmp = Path(dest) / f".{MANIFEST}.tmp"
    tmp.unlink(missing_ok=True)  # whatever stands there (a link planted to write elsewhere) goes, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"article": ARTICLE, "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, Path(dest) / MANIFEST)


def _must_be_a_file_or_absent(path: Path) -> None:
    """A path the downloader writes: a folder, a link or another odd thing there is one sentence (nothing is
    written through a link, nor a folder replaced)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise DownloadError(f"{path} is {kind}, where the downloader keeps a file; move it away and run again.")


def fetch_model(key: str, dest: Path, api: str | None = None, timeout: float = 60.0, retries: int = 3,
                quiet: bool = True, deadline: float = 3600.0) -> Path:
    """The released file of model `key` in `dest`: from there when the manifest knows it and its MD5 still
    matches (no request at all), otherwise listed, downloaded (resumable, MD5-checked) and recorded. `deadline`
    bounds the listing and each transfer (connection, headers and body) in seconds."""
    dest = Path(dest)
    for name, entry in read_manifest(dest).items():
        path = dest / name
        if entry.get("model") == key and path.is_file() \
                and path.stat().st_size == entry.get("size") and md5_of(path) == entry.get("md5"):
            return path
    api = check_url(api or default_api(), "The figshare API address")
    files = list_files(api, ARTICLE, timeout, deadline)
    prepare_dest(dest)
    try:
        entry = find_model(files, key)
    except DownloadError:
        entry = None  # no name tells it: the files will
    seen = {}
    if entry is not None:
        fetch(entry, dest, timeout, quiet, retries, deadline)
        found = identify(dest / entry["name"])
        if found.key in (key, None):  # the contents agree, or cannot tell: the name decides
            record_in_manifest(dest, entry, key)
            return dest / entry["name"]
        seen[entry["name"]] = found.what  # a misleading name: look at the others
        record_in_manifest(dest, entry, found.key)
    return _by_contents(key, files, dest, timeout, quiet, retries, deadline, seen)


def _by_contents(key: str, files: list[dict], dest: Path, timeout: float, quiet: bool, retries: int,
                 deadline: float, seen: dict) -> Path:
    """The listed file (or archive member) whose contents are model `key`: each checkpoint or archive the
    names do not rule out is fetched (at most IDENTIFY_MAX_BYTES each), identified and recorded in the
    manifest, so that the next call finds it there without a request."""
    known = read_manifest(dest)
    candidates = [f for f in files if f["name"] not in seen and (is_archive(f["name"]) or (
        f["name"].lower().endswith(CHECKPOINT_SUFFIXES) and model_of(f["name"]) is None
        and known.get(f["name"], {}).get("model") in (None, key)))]
    for f in candidates:
        if f["size"] > IDENTIFY_MAX_BYTES:
            seen[f["name"]] = f"not looked into ({f['size'] >> 20} MiB)"
            continue
        fetch(f, dest, timeout, quiet, retries, deadline)
        if is_archive(f["name"]):
            try:
                members = checkpoints_in_archive(dest / f["name"], dest, check_name)
            except (ArchiveError, zipfile.BadZipFile, OSError) as e:
                seen[f["name"]] = f"an archive that cannot be used ({e})"
                continue
            if not members:
                seen[f["name"]] = "an archive without a checkpoint"
        else:
            members = [(f["name"], dest / f["name"])]
        for member, path in members:
            found = identify(path)
            record_in_manifest(dest, {"name": path.name, "size": path.stat().st_size, "md5": md5_of(path),
                                      "url": f["url"] + (f"#{member}" if path.name != f["name"] else "")},
                               found.key or "unknown")
            if found.key == key:
                return path
            seen[path.name] = found.what
    said = "; ".join(f"{name}: {what}" for name, what in list(seen.items())[:12]) or "no checkpoint or archive"
    raise DownloadError(f"No file of the listing is recognisably {MODELS[key]}, by name or by contents "
                        f"({said}).")


def find_local(key: str, folder: Path) -> Path | None:
    """The file of model `key` in a folder filled by scripts/download_checkpoints.py (its manifest says which
    file is which, and the file still has its recorded size and MD5) or by hand (one file whose name tells the
    model); None when the folder holds none. Several candidates, or a manifest's file whose MD5 no longer
    matches, are one sentence: no guess."""
    folder = Path(folder)
    for name, entry in read_manifest(folder).items():
        path = folder / name
        if entry.get("model") == key and path.is_file():
            if path.stat().st_size != entry.get("size") or (entry.get("md5") and md5_of(path) != entry.get("md5")):
                raise DownloadError(f"{path} is recorded in {folder / MANIFEST} as {MODELS.get(key, key)}, but its "
                                    "size or MD5 no longer matches the record: it is damaged; fetch it again.")
            return path
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return None
    found = [n for n in names if model_of(n) == key]
    if len(found) > 1:
        raise DownloadError(f"Several files in {folder} look like {MODELS[key]}: {', '.join(found[:10])}; give the "
                            "file itself.")
    return folder / found[0] if found else None


def fetch_url(url: str, dest: Path, timeout: float = 60.0, quiet: bool = True, deadline: float = 3600.0,
              model: str | None = None) -> Path:
    """A checkpoint at a URL (a mirror, a colleague's server) in `dest`, named after the URL's last part: from
    there when the manifest recorded this URL and the file still has its size and MD5, else fetched with the
    downloader's bounds (the size the server announces, at most MAX_FILE_BYTES, the free space, the
    deadline) and recorded with the MD5 it arrived with."""
    url = check_url(url, "The checkpoint URL")
    name = check_name(urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]))
    dest = Path(dest)
    recorded = read_manifest(dest).get(name, {})
    target = _inside(dest, name)
    if recorded.get("url") == url and target.is_file() and target.stat().st_size == recorded.get("size") \
            and md5_of(target) == recorded.get("md5"):
        return target
    prepare_dest(dest)
    with _exclusive(dest / f".{name}.lock", deadline, name):
        entry = {"name": name, "url": url, "size": _announced_size(url, name, timeout, deadline), "md5": ""}
        if target.is_file():
            target.unlink()  # another file of that name (another URL's): this URL's replaces it
        download(entry, dest, timeout, quiet, deadline)
        record_in_manifest(dest, {**entry, "md5": md5_of(target)}, model)
    return target


def _announced_size(url: str, name: str, timeout: float, deadline: float) -> int:
    """The size a server announces for a file (Content-Length of a GET whose body is not read)."""
    request = _request(url, time.monotonic() + min(deadline, timeout))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{name}: HTTP {e.code} ({e.reason}) from {redacted(url)}.") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"Could not reach {redacted(url)} ({getattr(e, 'reason', e)}); check the network "
                            "connection, or give a local file.") from None
    finally:
        _release(request)
    if length is None or not length.isdigit() or not 0 < int(length) <= MAX_FILE_BYTES:
        raise DownloadError(f"{redacted(url)} announces no usable size (Content-Length {length!r}); refusing it.")
    return int(length)


def fetch(entry: dict, dest: Path, timeout: float, quiet: bool, retries: int, deadline: float = 24 * 3600.0,
          on_cut=lambda error: None) -> str:
    """`download`, a cut transfer resumed at once up to `retries` times (`on_cut` told of each), and the
    verified file recorded in the manifest. Returns 'skipped' or 'downloaded'; raises DownloadError.

    One process at a time fetches a file into one folder (every rank of a torchrun job loading the same
    released model, say): the others wait for its lock, then find the verified file and skip it."""
    def once() -> str:
        outcome = download(entry, dest, timeout, quiet, deadline)
        record_in_manifest(dest, entry)
        return outcome

    with _exclusive(Path(dest) / f".{entry['name']}.lock", deadline, entry["name"]):
        for _ in range(retries):
            try:
                return once()
            except TransferCut as e:
                on_cut(e)
        return once()


@contextlib.contextmanager
def _exclusive(path: Path, wait_s: float, name: str):
    """An advisory lock (flock) on `path`, waited for at most `wait_s` seconds. The kernel releases it when the
    process ends, however it ends, so no stale lock remains; the file goes when the holder is done (a waiter
    that locked the file just removed tries again on the new one)."""
    ends_at = time.monotonic() + wait_s
    while True:
        _must_be_a_file_or_absent(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > ends_at:
                        raise DownloadError(f"{name}: another process has been fetching it into the same folder "
                                            "for longer than the deadline; try again later.") from None
                    time.sleep(0.2)
            try:
                current = os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                continue  # the holder before us removed this file: lock the one there now
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
            return
        finally:
            os.close(fd)


def default_api() -> str:
    """figshare's API, or the mirror PSN_FIGSHARE_API names (the tests' local server, say)."""
    return os.environ.get("PSN_FIGSHARE_API") or API


def _inside(dest: Path, name: str) -> Path:
    path = dest / name
    if path.parent.resolve() != dest.resolve():  # check_name already ensures it; belt and braces
        raise DownloadError(f"{name!r} would land outside {dest}; refusing it.")
    return path


def download(entry: dict, dest: Path, timeout: float, quiet: bool, deadline: float = 24 * 3600.0) -> str:
    """Fetch one file; returns 'skipped' or 'downloaded'; raises DownloadError, leaving nothing half-renamed."""
    target, part = _inside(dest, entry["name"]), _inside(dest, entry["name"] + ".part")
    _must_be_a_file_or_absent(target)
    if target.is_file() and target.stat().st_size == entry["size"] and (
            not entry["md5"] or md5_of(target) == entry["md5"]):
        return "skipped"
    if part.is_symlink() or (part.exists() and not part.is_file()):
        raise DownloadError(f"{part} is not a regular file; move it away and run again.")
    offset = part.stat().st_size if part.exists() else 0
    if offset > entry["size"]:
        part.unlink()
        offset = 0
    free = shutil.disk_usage(dest).free
    if entry["size"] - offset > free - FREE_SPACE_MARGIN:
        raise DownloadError(f"{entry['name']} needs {(entry['size'] - offset) / 2**20:.1f} MiB more and {dest} has "
                            f"{free / 2**20:.1f} MiB free (keeping {FREE_SPACE_MARGIN >> 20} MiB); nothing was "
                            "fetched: free some space, or choose another destination.")
    ends_at = time.monotonic() + deadline
    request = _request(entry["url"], ends_at)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        try:
            response = _OPENER.open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset == entry["size"]:  # the .part is already whole
                response = None
            else:
                raise DownloadError(f"{entry['name']}: HTTP {e.code} ({e.reason}).") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if _cut_by_deadline(request):
                raise DeadlinePassed(f"{entry['name']}: no answer within the --deadline (connection and headers "
                                     "included); run again to resume.") from None
            raise DownloadError(f"{entry['name']}: could not connect ({getattr(e, 'reason', e)}).") from None
        if response is not None:
            with response:
                if offset and response.status != 206:  # the server ignored Range: start again
                    offset = 0
                _receive(response, entry, part, offset, ends_at, quiet)
    finally:
        _release(request)
    size = part.stat().st_size
    if size != entry["size"]:
        raise TransferCut(f"{entry['name']}: transfer cut at {size} of {entry['size']} bytes; run again to resume.")
    if entry["md5"] and md5_of(part) != entry["md5"]:
        part.unlink()
        raise DownloadError(f"{entry['name']}: MD5 mismatch (expected {entry['md5']}); the corrupt download was "
                            "removed, run again to fetch it anew.")
    os.replace(part, target)
    return "downloaded"


def _receive(response, entry: dict, part: Path, offset: int, ends_at: float, quiet: bool) -> None:
    """Append the body to `part`, never past the listed size; a longer body is an error and the partial
    file goes; a slow one is stopped at the deadline (the .part stays, for a resume)."""
    bar = tqdm(total=entry["size"], initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=entry["name"], disable=quiet, leave=True)
    written = offset
    try:
        with part.open("ab" if offset else "wb") as f:
            while True:
                chunk = response.read1(min(CHUNK, entry["size"] - written + 1))
                if not chunk:
                    break
                if written + len(chunk) > entry["size"]:
                    f.close()
                    part.unlink()
                    raise DownloadError(f"{entry['name']}: the server sent more than the {entry['size']} bytes it "
                                        "listed; the partial file was removed.")
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
                if time.monotonic() > ends_at:
                    raise DeadlinePassed(f"{entry['name']}: not complete within the --deadline ({written} of "
                                      f"{entry['size']} bytes); run again to resume.")
    except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
        if getattr(e, "errno", None) == 28:  # ENOSPC
            raise DownloadError(f"{entry['name']}: the disk holding {part.parent} is full.") from None
        if time.monotonic() >= ends_at:
            raise DeadlinePassed(f"{entry['name']}: not complete within the --deadline ({written} of "
                                 f"{entry['size']} bytes); run again to resume.") from None
        raise TransferCut(f"{entry['name']}: transfer cut at {written} of {entry['size']} bytes ({e}); run again "
                          "to resume.") from None
    finally:
        bar.close()
    if written < entry["size"] and time.monotonic() >= ends_at:  # the watchdog ended the body early
        raise DeadlinePassed(f"{entry['name']}: not complete within the --deadline ({written} of {entry['size']} "
                             "bytes); run again to resume.")


def prepare_dest(dest: Path) -> None:
    """`dest` made if missing; one that is not a writable folder is one sentence."""
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {dest} exists and is not a folder.")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"Could not create --dest {dest} ({e.strerror}).") from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise DownloadError(f"--dest {dest} is not writable.")
