"""A local stand-in for figshare's API on 127.0.0.1: an article's file listing (in pages of 10, as figshare
serves it) and its files, with HTTP Range support; it can cut a transfer midway and record every request."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

    def close(self):
        self.server.shutdown()
        self.server.server_close()
