"""The pod watch against a stand-in Kubernetes API server.

No kube-apiserver can be installed here, so `ApiServer` below stands in for it: it speaks the
API's real wire protocol as the official client uses it. GET /api/v1/pods with a fieldSelector
returns a PodList (JSON, with metadata.resourceVersion); the same request with watch=true
streams newline-delimited watch events in chunked transfer encoding (ADDED, MODIFIED, DELETED,
BOOKMARK, and ERROR with a 410 Status when the resourceVersion has expired); GET
/api/v1/persistentvolumes/<name> returns a PersistentVolume with its claimRef; Bearer tokens
are checked and 403 answers a request the token may not make. The client is the official
kubernetes package, configured through a kubeconfig file as an operator would.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from bpfnfs.enrich import k8s
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.k8s import PodWatcher, pod_meta

pytest.importorskip("kubernetes")

UID_A = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_B = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
CID = "ab" * 32


def pod(uid: str, name: str, cid: str | None = None, claim: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if cid:
        status["containerStatuses"] = [{"name": "app", "containerID": f"containerd://{cid}"}]
    vols = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}] if claim else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"uid": uid, "name": name, "namespace": "shop", "resourceVersion": "1"},
        "spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "busybox"}], "volumes": vols},
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


def kubeconfig(tmp_path: Path, url: str, token: str = "tok") -> str:
    p = tmp_path / "kubeconfig"
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


def wait(cond: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "BACKOFF_MIN", 0.05)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_pod_meta_from_the_pod_json() -> None:
    m = pod_meta(pod(UID_A, "cart", CID, claim="cart-data"))
    assert m is not None
    assert (m.uid, m.namespace, m.name, m.containers, m.claims) == (
        UID_A,
        "shop",
        "cart",
        {CID: "app"},
        {"data": "cart-data"},
    )
    assert pod_meta({"metadata": {}}) is None


def test_list_watch_expiry_and_delete(tmp_path: Path, fast: None) -> None:
    api = ApiServer()
    api.items = [pod(UID_A, "cart")]
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.state == "synced")
        assert w.pod(UID_A) is not None and w.pod(UID_A).name == "cart"  # type: ignore[union-attr]
        path, q = api.requests[0]
        assert path == "/api/v1/pods" and q["fieldSelector"] == ["spec.nodeName=node1"]
        # Container ids appear as the containers start (MODIFIED); a new pod (ADDED).
        api.events.put({"type": "MODIFIED", "object": pod(UID_A, "cart", CID)})
        api.events.put({"type": "ADDED", "object": pod(UID_B, "queue")})
        api.events.put({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "15"}}})
        assert wait(lambda: w.pod(UID_B) is not None and w.pod(UID_A).containers == {CID: "app"})  # type: ignore[union-attr]
        watches = [q for p, q in api.requests if q.get("watch")]
        assert watches[0]["resourceVersion"] == ["10"] and watches[0]["allowWatchBookmarks"] == ["true"]
        # The watch's resourceVersion expires: a fresh list, then a new watch.
        api.items = [pod(UID_A, "cart", CID), pod(UID_B, "queue")]
        api.rv = 20
        api.events.put(
            {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "old"},
            }
        )
        assert wait(lambda: w.stats.expired == 1 and w.stats.lists == 2)
        assert wait(lambda: [q for p, q in api.requests if q.get("watch")][-1]["resourceVersion"] == ["20"])
        # A deleted pod keeps its names (its series outlive it).
        api.events.put({"type": "DELETED", "object": pod(UID_B, "queue")})
        assert wait(lambda: w.stats.pods == 1)
        assert w.pod(UID_B) is not None and w.pod(UID_B).name == "queue"  # type: ignore[union-attr]
        r = IdentityResolver({5: f"/kubepods/besteffort/pod{UID_A}/{CID}"}.get, w)
        i = r.of(5)
        assert (i.namespace, i.pod, i.container) == ("shop", "cart", "app")
        assert any("2 pods" in m or "1 pods" in m for m in logs)
    finally:
        w.close()
        api.close()


def test_forbidden_keeps_collecting_and_says_so_once(tmp_path: Path, fast: None) -> None:
    api = ApiServer(forbid=True)
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.errors >= 3)
        assert w.stats.state == "forbidden"
        said = [m for m in logs if "forbids" in m]
        assert len(said) == 1 and "403" in said[0]
        assert w.pod(UID_A) is None
        i = IdentityResolver({5: f"/kubepods/pod{UID_A}/{CID}"}.get, w).of(5)
        assert i.pod_label == UID_A and i.container_id == CID  # what the cgroup path gives
    finally:
        w.close()
        api.close()


def test_unreachable_api(tmp_path: Path, fast: None) -> None:
    logs: list[str] = []
    w = PodWatcher("node1", kubeconfig(tmp_path, "http://127.0.0.1:9"), log=logs.append)
    w.start()
    try:
        assert wait(lambda: w.stats.errors >= 2)
        assert w.stats.state == "unreachable"
        assert len([m for m in logs if "unreachable" in m]) == 1
    finally:
        w.close()


def test_persistent_volume_claims_looked_up_off_the_caller(tmp_path: Path, fast: None) -> None:
    api = ApiServer()
    w = PodWatcher("node1", kubeconfig(tmp_path, api.url))
    w.start()
    try:
        assert w.claim_of("pv-nfs-1") is None  # asked, not waited for
        assert wait(lambda: w.claim_of("pv-nfs-1") == ("shop", "cart-data"))
        assert w.claim_of("pv-gone") is None
        assert wait(lambda: any(p == "/api/v1/persistentvolumes/pv-gone" for p, _q in api.requests))
        assert w.claim_of("pv-gone") is None  # a 404, cached as no claim
    finally:
        w.close()
        api.close()
