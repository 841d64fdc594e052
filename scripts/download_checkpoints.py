"""Download the authors' released checkpoints (figshare article 24454912): the command line of
common/download.py, which hubconf.py's pretrained=True uses too.

    python scripts/download_checkpoints.py --list                 # what the article holds
    python scripts/download_checkpoints.py                         # everything, into checkpoints/
    python scripts/download_checkpoints.py --filter imagenet --dest /data/ckpt

The file list (names, sizes, MD5s, download URLs) comes from figshare's public API.
Each file is fetched into `<name>.part`, resumed with an HTTP Range request when a
transfer is cut (at once, up to --retries times, and by the next run from the .part
left behind), checked against its MD5, and only then renamed into place.
A file already present with the right MD5 is skipped. `--api` (or the environment variable
PSN_FIGSHARE_API) points elsewhere: a mirror, or the tests' local server. Each verified file
is recorded in `manifest.json` beside it (size, MD5, and which model it is: MODELS below), so
that tools can tell a file's model later without asking the server.

Everything the server says is checked before it is used: a listed name must be a plain
file name (it is joined to --dest), a URL http(s), a size a sane integer; the listing's
pages and bytes are bounded; no body is written past its listed size; `--timeout` bounds
each read and `--deadline` each whole file. Any failure prints one `error:` line and
exits with 2, leaving nothing outside --dest and no half-renamed file.
"""
import argparse
import fnmatch
import sys
from pathlib import Path

from common.download import (
    ARTICLE,
    DownloadError,
    check_url,
    default_api,
    describe,
    fetch,
    list_files,
    model_of,
    prepare_dest,
)

ROOT = Path(__file__).resolve().parents[1]


def _positive(kind, high: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} must be a positive number, at most {high:g}")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the article's files (and which model each is) and exit")
    p.add_argument("--filter", default=None, help="only files whose name contains this text (or matches this glob)")
    p.add_argument("--dest", default=str(ROOT / "checkpoints"), help="destination folder")
    p.add_argument("--api", default=default_api(), help="figshare API base URL (environment: PSN_FIGSHARE_API)")
    p.add_argument("--article", type=_positive(int, 10**12), default=ARTICLE,
                   help="the figshare article of the checkpoints")
    p.add_argument("--timeout", type=_positive(float, 24 * 3600.0), default=60.0,
                   help="seconds a single read may wait before the connection is given up")
    p.add_argument("--deadline", type=_positive(float, 30 * 24 * 3600.0), default=6 * 3600.0,
                   help="seconds one file (or the listing) may take in all; a file cut there resumes on the next run")
    p.add_argument("--retries", type=_non_negative_int, default=3,
                   help="times a cut transfer is resumed at once (HTTP Range)")
    args = p.parse_args(argv)
    quiet = not sys.stderr.isatty()
    try:
        check_url(args.api, "--api")
        files = list_files(args.api, args.article, args.timeout, args.deadline)
        if args.filter:
            files = [f for f in files if args.filter in f["name"] or fnmatch.fnmatch(f["name"], args.filter)]
            if not files:
                raise DownloadError(f"no file of article {args.article} matches {args.filter!r} (see --list).")
        if args.list:
            for f in files:
                print(f"{f['name']}\t{f['size'] / 2**20:.1f} MiB\t{describe(f['name'])}\t{model_of(f['name']) or '-'}\t"
                      f"md5 {f['md5'] or '-'}")
            return 0
        dest = Path(args.dest)
        prepare_dest(dest)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failures = 0
    for entry in files:
        try:
            outcome = fetch(entry, dest, args.timeout, quiet, args.retries, args.deadline,
                            on_cut=lambda e: print(f"{e} Resuming.", file=sys.stderr, flush=True))
            print(f"{outcome}: {dest / entry['name']}", flush=True)
        except DownloadError as e:
            failures += 1
            print(f"error: {e}", file=sys.stderr, flush=True)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
