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
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                peer.requests.append(self.path)
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
                    body = peer.files[parts[1]]
                    kind = "application/octet-stream"
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
