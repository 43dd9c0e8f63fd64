"""A stand-in for the fleet: a real HTTP server in a thread serving desired state and bundles."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FleetPeer:
    def __init__(self) -> None:
        self.desired: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.authorizations: list[tuple[str, str | None]] = []
        """(path, Authorization header) of every GET."""
        self.ranges: list[str] = []
        """The Range header of each bundle request that had one."""
        self.cut: dict[str, int] = {}
        """filename -> bytes to send before dropping the connection (once)."""
        self.fail: dict[str, int] = {}
        """filename -> how many more times to answer 503."""
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                peer.requests.append(self.path)
                peer.authorizations.append((self.path, self.headers.get("Authorization")))
                parts = self.path.strip("/").split("/")
                body: bytes | None = None
                kind = "application/json"
                if parts[:3] == ["api", "v1", "devices"] and len(parts) == 5 and parts[4] == "desired":
                    device = parts[3]
                    model = peer.desired.get(device)
                    body = json.dumps(
                        {
                            "kind": "desired",
                            "schema_version": 1,
                            "device_id": device,
                            "model": model,
                            "updated_at": datetime.now(UTC).isoformat(),
                        }
                    ).encode()
                elif parts[0] == "bundles" and len(parts) == 2 and parts[1] in peer.files:
                    self._bundle(parts[1])
                    return
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _bundle(self, name: str) -> None:
                """Like the fleet: ETag is the quoted sha256; one ``Range: bytes=a-`` is honoured."""
                data = peer.files[name]
                if peer.fail.get(name, 0) > 0:
                    peer.fail[name] -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                start, status = 0, 200
                wanted = self.headers.get("Range")
                if wanted:
                    peer.ranges.append(wanted)
                    if_range = self.headers.get("If-Range")
                    if wanted.startswith("bytes=") and wanted.endswith("-") and if_range in (None, etag):
                        start, status = int(wanted[6:-1]), 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = peer.cut.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FleetPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def filename(self, device_id: str) -> str:
        return str(self.desired[device_id]["url"]).rsplit("/", 1)[-1]

    def deploy(
        self, device_id: str, bundle: bytes, name: str, version: str, *, served: bytes | None = None
    ) -> str:
        """Make ``bundle`` the device's desired model; ``served`` replaces the bytes on the wire."""
        sha = hashlib.sha256(bundle).hexdigest()
        filename = f"{name}-{version}-{sha[:8]}.bundle"
        self.files[filename] = bundle if served is None else served
        self.desired[device_id] = {
            "name": name,
            "version": version,
            "sha256": sha,
            "size": len(bundle),
            "url": f"/bundles/{filename}",
        }
        return sha

    def clear(self, device_id: str) -> None:
        self.desired.pop(device_id, None)
