"""Download the authors' released checkpoints (figshare article 24454912).

    python scripts/download_checkpoints.py --list                 # what the article holds
    python scripts/download_checkpoints.py                         # everything, into checkpoints/
    python scripts/download_checkpoints.py --filter imagenet --dest /data/ckpt

The file list (names, sizes, MD5s, download URLs) comes from figshare's public API.
Each file is fetched into `<name>.part`, resumed with an HTTP Range request when a
transfer is cut (at once, up to --retries times, and by the next run from the .part
left behind), checked against its MD5, and only then renamed into place.
A file already present with the right MD5 is skipped. `--api` points elsewhere (a
mirror, or the tests' local server).
"""
import argparse
import fnmatch
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

ARTICLE = 24454912
API = "https://api.figshare.com/v2"
CHUNK = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


DEFAULT_PAGE = 10  # figshare's page size when none is asked for


class DownloadError(Exception):
    pass


class NotFound(DownloadError):
    pass


class TransferCut(DownloadError):
    """The connection ended early; the .part file keeps what arrived, for a Range request."""


def fetch_json(url: str, timeout: float):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        error = NotFound if e.code == 404 else DownloadError
        raise error(f"{url} answered HTTP {e.code} ({e.reason}).") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Could not reach {url} ({reason}); check the network connection or --api.") from None
    except ValueError:
        raise DownloadError(f"{url} did not return JSON; is --api right?") from None


def list_files(api: str, article: int, timeout: float) -> list[dict]:
    """The article's files: name, size, md5, url.

    figshare lists them at /articles/{id}/files, 10 per page by default (further pages
    are fetched while pages come back full); where that listing is missing, the
    article's own record at /articles/{id} carries them too.
    """
    base = f"{api.rstrip('/')}/articles/{article}"
    try:
        files = fetch_json(f"{base}/files", timeout)
        page = 1
        while isinstance(files, list) and len(files) == DEFAULT_PAGE * page:
            page += 1
            more = fetch_json(f"{base}/files?page={page}&page_size={DEFAULT_PAGE}", timeout)
            if not isinstance(more, list) or not more:
                break
            files += more
    except NotFound:
        files = fetch_json(base, timeout)
    if isinstance(files, dict):
        files = files.get("files")
    if not isinstance(files, list):
        raise DownloadError(f"{base} did not list the article's files; is --api right?")
    try:
        return [{"name": f["name"], "size": int(f["size"]),
                 "md5": f.get("computed_md5") or f.get("supplied_md5") or f.get("md5") or "",
                 "url": f["download_url"]} for f in files]
    except (KeyError, TypeError, ValueError):
        raise DownloadError(f"{base} listed files without name, size or download_url; is --api right?") from None


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


def download(entry: dict, dest: Path, timeout: float, quiet: bool) -> str:
    """Fetch one file; returns 'skipped' or 'downloaded'; raises DownloadError, leaving nothing half-renamed."""
    target, part = dest / entry["name"], dest / (entry["name"] + ".part")
    if target.exists() and target.stat().st_size == entry["size"] and (not entry["md5"] or md5_of(target) == entry["md5"]):
        return "skipped"
    offset = part.stat().st_size if part.exists() else 0
    if offset > entry["size"]:
        part.unlink()
        offset = 0
    request = urllib.request.Request(entry["url"])
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset == entry["size"]:  # the .part is already whole
            response = None
        else:
            raise DownloadError(f"{entry['name']}: HTTP {e.code} ({e.reason}).") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{entry['name']}: could not connect ({getattr(e, 'reason', e)}).") from None
    if response is not None:
        with response:
            if offset and response.status != 206:  # the server ignored Range: start again
                offset = 0
            bar = tqdm(total=entry["size"], initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=entry["name"], disable=quiet, leave=True)
            try:
                with part.open("ab" if offset else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                raise TransferCut(f"{entry['name']}: transfer cut at {part.stat().st_size} of {entry['size']} "
                                  f"bytes ({e}); run again to resume.") from None
            finally:
                bar.close()
    size = part.stat().st_size
    if size != entry["size"]:
        raise TransferCut(f"{entry['name']}: transfer cut at {size} of {entry['size']} bytes; run again to resume.")
    if entry["md5"] and md5_of(part) != entry["md5"]:
        part.unlink()
        raise DownloadError(f"{entry['name']}: MD5 mismatch (expected {entry['md5']}); the corrupt download was "
                            "removed, run again to fetch it anew.")
    os.replace(part, target)
    return "downloaded"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--list", action="store_true", help="list the article's files and exit")
    p.add_argument("--filter", default=None, help="only files whose name contains this text (or matches this glob)")
    p.add_argument("--dest", default=str(ROOT / "checkpoints"), help="destination folder")
    p.add_argument("--api", default=API, help="figshare API base URL")
    p.add_argument("--article", type=int, default=ARTICLE)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a stalled connection gives up")
    p.add_argument("--retries", type=int, default=3, help="times a cut transfer is resumed at once (HTTP Range)")
    args = p.parse_args(argv)
    quiet = not sys.stderr.isatty()
    try:
        files = list_files(args.api, args.article, args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.filter:
        files = [f for f in files if args.filter in f["name"] or fnmatch.fnmatch(f["name"], args.filter)]
        if not files:
            print(f"error: no file of article {args.article} matches {args.filter!r} (see --list).", file=sys.stderr)
            return 2
    if args.list:
        for f in files:
            print(f"{f['name']}\t{f['size'] / 2**20:.1f} MiB\t{describe(f['name'])}\tmd5 {f['md5']}")
        return 0
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    failures = 0
    for entry in files:
        for attempt in range(args.retries + 1):
            try:
                outcome = download(entry, dest, args.timeout, quiet)
                print(f"{outcome}: {dest / entry['name']}", flush=True)
                break
            except TransferCut as e:
                if attempt < args.retries:
                    print(f"{e} Resuming.", file=sys.stderr, flush=True)
                    continue
                failures += 1
                print(f"error: {e}", file=sys.stderr, flush=True)
            except DownloadError as e:
                failures += 1
                print(f"error: {e}", file=sys.stderr, flush=True)
                break
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
