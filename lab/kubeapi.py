"""A stand-in Kubernetes API server, for the unit tests and the lab.

No kube-apiserver can be installed from the registries reachable here, so this stands in for
it. It speaks the API's real wire protocol as the official client uses it: GET /api/v1/pods
with a fieldSelector returns a PodList (JSON, with metadata.resourceVersion); the same request
with watch=true streams newline-delimited watch events in chunked transfer encoding (ADDED,
MODIFIED, DELETED, BOOKMARK, and ERROR with a 410 Status when the resourceVersion has expired);
GET /api/v1/persistentvolumes/<name> returns a PersistentVolume with its claimRef; Bearer
tokens are checked and 403 answers a request the token may not make. It records every request.

    python3 -m lab.kubeapi --pods FILE.json --kubeconfig OUT   (serves until killed)
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


def pod(
    uid: str,
    name: str,
    cid: str | None = None,
    claim: str | None = None,
    namespace: str = "shop",
    node: str = "node1",
    container: str = "app",
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Pod object as the API returns it (what bpfnfs reads of it, and the required fields)."""
    status: dict[str, Any] = {"phase": "Running"}
    if cid:
        status["containerStatuses"] = [{"name": container, "containerID": f"containerd://{cid}"}]
    vols = list(volumes or [])
    if claim:
        vols.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"uid": uid, "name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "debian"}], "volumes": vols},
        "status": status,
    }


class ApiServer:
    def __init__(self, token: str = "tok", forbid: bool = False) -> None:
        self.items: list[dict[str, Any]] = []
        self.pvs: dict[str, tuple[str, str]] = {"pv-nfs-1": ("shop", "cart-data")}
        self.rv = 10
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:
                u = urlparse(self.path)
                q = parse_qs(u.query)
                api.requests.append((u.path, q))
                if self.headers.get("Authorization") != f"Bearer {token}" or forbid:
                    self._json(403, {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no"})
                    return
                if u.path.startswith("/api/v1/persistentvolumes/"):
                    name = u.path.rsplit("/", 1)[1]
                    if name not in api.pvs:
                        self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                        return
                    ns, claim = api.pvs[name]
                    self._json(
                        200,
                        {
                            "kind": "PersistentVolume",
                            "metadata": {"name": name},
                            "spec": {
                                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": claim}
                            },
                        },
                    )
                    return
                if u.path != "/api/v1/pods":
                    self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                if q.get("watch", [""])[0].lower() != "true":
                    self._json(
                        200,
                        {"kind": "PodList", "metadata": {"resourceVersion": str(api.rv)}, "items": api.items},
                    )
                    return
                # As the API server does: chunked transfer encoding, one event per line.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for ev in api._events():
                    line = json.dumps(ev).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def _json(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _events(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                ev = self.events.get(timeout=10)
            except queue.Empty:
                return
            if ev is None:  # the server ends this watch
                return
            yield ev
            if ev["type"] == "ERROR":
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.events.put(None)
        self.httpd.shutdown()


def kubeconfig(where: Path, url: str, token: str = "tok") -> str:
    """A kubeconfig for the stand-in, written to `where` (a directory gets a file named kubeconfig)."""
    p = where / "kubeconfig" if where.is_dir() else where
    p.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": url}}],
                "users": [{"name": "bpfnfs", "user": {"token": token}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "bpfnfs"}}],
                "current-context": "lab",
            }
        )
    )
    return str(p)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=Path, required=True, help="a JSON list of Pod objects")
    ap.add_argument("--kubeconfig", type=Path, required=True, help="where to write a kubeconfig for it")
    args = ap.parse_args()
    api = ApiServer()
    api.items = json.loads(args.pods.read_text())
    kubeconfig(args.kubeconfig, api.url)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
