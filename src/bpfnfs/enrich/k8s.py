"""Pod metadata from the Kubernetes API: the pods of this node, watched.

The official client (kubernetes on PyPI) lists the pods with `spec.nodeName=<node>` and then
watches from the list's resourceVersion, with bookmarks, on a daemon thread. A watch that
expires (410 Gone) is answered by a fresh list; any other failure by a reconnect with backoff.
The collection never waits for the API: until the first list, and whenever the API is
unreachable or forbidden, pods are labelled with what their cgroup path gives (pod UID,
container id), and the reason is logged once per kind of failure.

A deleted pod is kept (DELETED_TTL) so the counters of its cgroup keep their names until
their series end; enrich.identity also remembers an identity once resolved.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpfnfs.enrich.identity import PodMeta

FIELD = "spec.nodeName="
WATCH_SECONDS = 300  # one watch request; the server may end it sooner
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
DELETED_TTL = 600.0  # a deleted pod's names stay this long (series outlive their pod)
CLAIM_TTL = 600.0  # a PersistentVolume's claimRef is read again after this
CLAIM_NEGATIVE_TTL = 60.0  # and a failed or empty answer after this
RUNTIME_PREFIXES = ("containerd://", "cri-o://", "docker://", "crio://")


def pod_meta(obj: dict[str, Any]) -> PodMeta | None:
    """A PodMeta from a Pod's JSON; None without a UID."""
    md = obj.get("metadata") or {}
    uid = md.get("uid")
    if not uid:
        return None
    status = obj.get("status") or {}
    containers: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = cs.get("containerID") or ""
            for p in RUNTIME_PREFIXES:
                if cid.startswith(p):
                    containers[cid[len(p) :]] = cs.get("name", "")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in (obj.get("spec") or {}).get("volumes") or []
        if v.get("name") and (v.get("persistentVolumeClaim") or {}).get("claimName")
    }
    volumes = tuple(v["name"] for v in (obj.get("spec") or {}).get("volumes") or [] if v.get("name"))
    return PodMeta(uid, md.get("namespace", ""), md.get("name", ""), containers, claims, volumes)


@dataclass
class WatchStats:
    state: str = "starting"  # starting, synced, unreachable, forbidden, misconfigured
    pods: int = 0
    lists: int = 0
    events: int = 0
    expired: int = 0  # 410 Gone answered by a fresh list
    errors: int = 0


@dataclass
class PodWatcher:
    """The pods of one node, from the API; a PodIndex for enrich.identity."""

    node_name: str
    kubeconfig: str | None = None
    log: Callable[[str], None] = lambda _m: None
    clock: Callable[[], float] = time.monotonic
    stats: WatchStats = field(default_factory=WatchStats)
    _pods: dict[str, PodMeta] = field(default_factory=dict)
    _deleted: dict[str, tuple[PodMeta, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _logged: set[str] = field(default_factory=set)
    _thread: threading.Thread | None = None
    _claims: dict[str, tuple[tuple[str, str] | None, float]] = field(default_factory=dict)
    _wanted: list[str] = field(default_factory=list)
    _want: threading.Event = field(default_factory=threading.Event)
    _claims_api: Any = None

    # ---- PodIndex -----------------------------------------------------------------------------

    def pod(self, uid: str) -> PodMeta | None:
        with self._lock:
            meta = self._pods.get(uid)
            if meta is None and uid in self._deleted:
                meta = self._deleted[uid][0]
            return meta

    def claim_of(self, pv: str) -> tuple[str, str] | None:
        """(namespace, claim) of a PersistentVolume, from its claimRef; None until looked up
        (the lookup runs on the watch's side thread, never on the caller's)."""
        with self._lock:
            hit = self._claims.get(pv)
            if hit is not None and self.clock() - hit[1] < (CLAIM_TTL if hit[0] else CLAIM_NEGATIVE_TTL):
                return hit[0]
            if pv not in self._wanted:
                self._wanted.append(pv)
                self._want.set()
            return hit[0] if hit is not None else None

    def _claims_loop(self) -> None:
        while not self._stop.is_set():
            self._want.wait(5.0)
            self._want.clear()
            api = self._claims_api
            while api is not None and not self._stop.is_set():
                with self._lock:
                    if not self._wanted:
                        break
                    pv = self._wanted.pop(0)
                ref: tuple[str, str] | None = None
                try:
                    resp = api.read_persistent_volume(pv, _preload_content=False)
                    cr = (json.loads(resp.data).get("spec") or {}).get("claimRef") or {}
                    if cr.get("name"):
                        ref = (cr.get("namespace", ""), cr["name"])
                except Exception as e:
                    status = getattr(e, "status", None)
                    if status != 404:  # gone or never there: no claim, nothing wrong
                        self.stats.errors += 1
                        why = f"HTTP {status} {getattr(e, 'reason', '')}".strip() if status else str(e)
                        self._once(
                            "pv",
                            f"kubernetes: cannot read PersistentVolume {pv} ({why[:120]}); "
                            "its mounts carry no persistentvolumeclaim label",
                        )
                with self._lock:
                    self._claims[pv] = (ref, self.clock())

    # ---- the watch ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bpfnfs-k8s", daemon=True)
        self._thread.start()
        threading.Thread(target=self._claims_loop, name="bpfnfs-k8s-pv", daemon=True).start()

    def close(self) -> None:
        self._stop.set()  # the threads are daemons: a watch blocked in a read ends with the process
        self._want.set()

    def _api(self) -> Any:
        from kubernetes import client, config  # imported here: a second of start-up, only when on

        if self.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.CoreV1Api()
        return client.CoreV1Api(config.new_client_from_config(config_file=self.kubeconfig))

    def _run(self) -> None:
        from kubernetes.client.rest import ApiException

        backoff = BACKOFF_MIN
        api = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._claims_api = self._api()
                    self._want.set()
                rv = self._list(api)
                backoff = BACKOFF_MIN
                while not self._stop.is_set():
                    rv = self._watch(api, rv)
            except ApiException as e:
                if e.status == 410:  # the watch's resourceVersion expired: list again
                    self.stats.expired += 1
                    continue
                self.stats.errors += 1
                forbidden = e.status in (401, 403)
                self.stats.state = "forbidden" if forbidden else "unreachable"
                self._once(
                    self.stats.state,
                    f"kubernetes API {'forbids listing pods' if forbidden else 'error'} "
                    f"({e.status} {e.reason}); pods are labelled with their UID and container id "
                    "from the cgroup path until it answers",
                )
            except Exception as e:  # the network, TLS, a bad kubeconfig: keep collecting
                self.stats.errors += 1
                bad_config = api is None  # failed before any request: the kubeconfig or in-cluster files
                self.stats.state = "misconfigured" if bad_config else "unreachable"
                where = self.kubeconfig or "in-cluster configuration"
                self._once(
                    self.stats.state,
                    (f"kubernetes: {where} unusable" if bad_config else "kubernetes API unreachable")
                    + f" ({type(e).__name__}: {str(e)[:200]}); pods are labelled with their UID and "
                    "container id from the cgroup path until it answers",
                )
            if self._stop.wait(backoff):
                return
            backoff = min(BACKOFF_MAX, backoff * 2)

    def _watch(self, api: Any, rv: str) -> str:
        """One watch request, events as JSON (not the client's models: a pod event costs a
        json.loads, and a field the models do not know cannot end the watch); the
        resourceVersion to resume from."""
        from kubernetes.client.rest import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        resp = api.list_pod_for_all_namespaces(
            field_selector=FIELD + self.node_name,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            watch=True,
            _preload_content=False,
        )
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                try:
                    ev = json.loads(line)
                    kind, obj = ev["type"], ev["object"]
                except (ValueError, KeyError, TypeError):
                    self.stats.errors += 1  # a line that is not an event: skipped, counted
                    continue
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code", 500), reason=obj.get("reason", "watch error"))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                self._event(kind, obj)
        finally:
            resp.release_conn()
        return rv

    def _list(self, api: Any) -> str:
        resp = api.list_pod_for_all_namespaces(field_selector=FIELD + self.node_name, _preload_content=False)
        doc = json.loads(resp.data)
        pods = {m.uid: m for m in (pod_meta(o) for o in doc.get("items") or []) if m is not None}
        with self._lock:
            gone = set(self._pods) - set(pods)
            now = self.clock()
            for uid in gone:
                self._deleted[uid] = (self._pods[uid], now)
            self._pods = pods
        self.stats.lists += 1
        self.stats.pods = len(pods)
        if self.stats.state != "synced":
            self.log(f"kubernetes: {len(pods)} pods on node {self.node_name}")
        self.stats.state = "synced"
        self._logged.clear()  # a later failure is worth a line again
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self.stats.events += 1
        if kind == "BOOKMARK":
            return
        meta = pod_meta(obj)
        if meta is None:
            return
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(meta.uid, None)
                self._deleted[meta.uid] = (meta, self.clock())
            else:  # ADDED, MODIFIED (container ids appear as containers start)
                self._pods[meta.uid] = meta
                self._deleted.pop(meta.uid, None)
            now = self.clock()
            for uid in [u for u, (_m, t) in self._deleted.items() if now - t > DELETED_TTL]:
                del self._deleted[uid]
            self.stats.pods = len(self._pods)

    def _once(self, key: str, msg: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log(f"warning: {msg}")


__all__ = ["PodWatcher", "WatchStats", "pod_meta"]
