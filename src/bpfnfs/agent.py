"""The agent: preflight, then loading through probes/loading.py (lazily, when the
NFS modules appear), the ring buffer's event path (collect/events.py), and periodic
collection into per-mount reports with what the kernel skipped (collect/losses.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpfnfs.collect import records as R
from bpfnfs.collect.events import EventPath, OpQueue
from bpfnfs.collect.losses import hook_losses, total_lost
from bpfnfs.collect.retire import Retirer
from bpfnfs.collect.snapshot import FileKey, read_snapshot
from bpfnfs.collect.views import Report, build_report
from bpfnfs.config import Config, ConfigError
from bpfnfs.enrich import cgroups
from bpfnfs.enrich.dns import DnsCache, with_dns
from bpfnfs.enrich.hostns import host_view
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.k8s import PodWatcher
from bpfnfs.enrich.mounts import MountRegistry, client_transports
from bpfnfs.enrich.volumes import VolumeResolver
from bpfnfs.loader.libbpf import libbpf
from bpfnfs.loader.object import BpfObject, LoadError, kprobe_misses
from bpfnfs.probes import system, tiers
from bpfnfs.probes.btf import BtfSource
from bpfnfs.probes.loading import Counting, Loader
from bpfnfs.ringbuf import RingBuffer


def stderr_log(msg: str) -> None:
    print(f"bpfnfs: {msg}", file=sys.stderr, flush=True)


class Agent:
    def __init__(
        self,
        cfg: Config,
        log: Callable[[str], None] = stderr_log,
        events: bool = False,
        trees: bool | None = None,
        queue: bool = True,
    ) -> None:
        """events: op records on the ring; trees: as span trees (default: trace.spans); queue: kept
        for a reader (bpfnfs trace), else only for the subscribers (the OTLP span sink)."""
        self.cfg = cfg
        self.log = log
        self.tracefs: Path | None = None
        btf_source = BtfSource(kernel=cfg.btf.kernel, module_dir=cfg.btf.model_dir)
        self.loader = Loader(
            cfg,
            log,
            events,
            btf_source=btf_source,
            trees=events and (cfg.trace.spans if trees is None else trees),
            sample=cfg.trace.sample_ratio,
        )
        self.view = host_view(cfg.collection.proc)  # the node's mounts, also from a container
        if self.view.in_container:
            log(f"reading the node's mounts and cgroups through {self.view.proc}/1 ({self.view.reason})")
        self.mounts = MountRegistry(None, view=self.view, log=log)
        # The ring buffer's records: file paths, and op records for subscribers (bpfnfs trace's queue).
        self.events = EventPath()
        self.op_queue: OpQueue | None = None
        self.span_sink: Any = None  # export.otlp.SpanSink when spans go over OTLP (its counters)
        if events and queue:
            self.op_queue = OpQueue()
            self.events.subscribe(self.op_queue)
        # The tree whose cgroup ids the kernel records: v2, or one v1 controller's hierarchy.
        self._cgroup_error: str | None = None
        try:
            self.hierarchy = cgroups.find_hierarchy(cfg.collection.cgroup_hierarchy, self.view)
        except cgroups.CgroupError as e:
            self._cgroup_error = str(e)  # raised by preflight(): a person's setting
            self.hierarchy = cgroups.Hierarchy(None)
        self.loader.cgroup_v1 = self.hierarchy.kernel_value
        self.cgroup_root = self.hierarchy.root
        self.cgroups = cgroups.CgroupResolver(self.cgroup_root)
        self.pods: PodWatcher | None = None  # this node's pods, from the Kubernetes API
        if cfg.kubernetes.enabled(os.environ):
            node = cfg.kubernetes.node_name or os.uname().nodename
            if cfg.kubernetes.node_name is None:
                log(f"kubernetes.node_name (NODE_NAME) not set: watching the pods of node {node} (host name)")
            kubeconfig = str(cfg.kubernetes.kubeconfig) if cfg.kubernetes.kubeconfig else None
            self.pods = PodWatcher(node, kubeconfig, log=log)
        self.identity = IdentityResolver(self.cgroups.path, self.pods)  # cgroup id -> cgroup, pod, container
        self.volumes = VolumeResolver(self.view, self.pods)  # mount point -> pod volume and claim
        # Entries of exited processes and removed cgroups, folded away from the kernel maps.
        self.retirer = Retirer(
            pid_alive=lambda pid: os.path.exists(f"{self.view.proc}/{pid}"),
            cgroup_alive=lambda cg: self.cgroups.path(cg) is not None,
            rescan=self.cgroups.rescan,
            every=cfg.collection.retire_interval,
        )
        self._chains: dict[int, list[int]] = {}  # dev -> its RPC clients, from the last report
        self._cgroup_filter: Path | None = None
        self._filter_ids: set[int] = set()
        self._no_mounts_logged = False
        self._known_devs: set[int] = set()
        self._files_deleted = 0
        self.dns: DnsCache | None = None  # features.dns: names and addresses for the mount labels
        self._configure_dns(cfg)

    @property
    def obj(self) -> BpfObject | None:
        return self.objs[0] if self.objs else None

    def preflight(self) -> None:
        """Everything that must hold before loading; raises RequirementError, LibbpfError or ConfigError."""
        if self._cgroup_error is not None:
            raise ConfigError(self._cgroup_error)
        system.check_privileges()
        system.check_vmlinux_btf(self.loader.btf_source)
        self.tracefs = self.loader.tracefs = system.check_tracefs()
        libbpf()  # loads the library and checks its version
        if self.hierarchy.controller is not None:  # said once: v2 is the ordinary case
            self.log(f"attributing processes by {self.hierarchy.describe()}")
        pid = self.cfg.filter.pid
        if pid is not None and not Path(f"{self.cfg.collection.proc}/{pid}").exists():
            raise ConfigError(f"filter.pid {pid}: no such process")
        if self.cfg.filter.cgroup is not None:
            try:
                self._cgroup_filter = cgroups.resolve_filter(self.cfg.filter.cgroup, self.cgroup_root)
            except cgroups.CgroupError as e:
                raise ConfigError(str(e)) from None
        if self.pods is not None:
            self.pods.start()  # off the collection path: names arrive when the API answers

    # ---- loading (probes/loading.py) ---------------------------------------------------------

    @property
    def objs(self) -> list[BpfObject]:
        return self.loader.objs

    @property
    def plan(self) -> tiers.TierPlan | None:
        return self.loader.plan

    @property
    def probe_failures(self) -> dict[str, str]:
        return self.loader.probe_failures

    @property
    def attached_at(self) -> float | None:
        return self.loader.attached_at

    @property
    def counting(self) -> Counting | None:
        return self.loader.counting

    def try_attach(self) -> bool:
        """Load and attach if the NFS client modules are present; True once attached."""
        first = not self.loader.objs
        if not self.loader.try_attach(self._cgroup_filter is not None):
            return False
        if first:
            obj = self.loader.objs[0]
            self.events.start(RingBuffer(libbpf(), obj.maps["events"].fd, R.RECORDS))
            self.mounts.probe_map = obj.maps["mount_probe"]
            self._update_cgroup_filter()
        return True

    def _configure_dns(self, cfg: Config) -> None:
        d = cfg.dns
        if not cfg.features.dns:
            if self.dns is not None:
                self.dns.close()
                self.dns = None
        elif self.dns is None:
            self.dns = DnsCache(ttl=d.ttl, negative_ttl=d.negative_ttl, timeout=d.timeout)
        else:
            self.dns.configure(ttl=d.ttl, negative_ttl=d.negative_ttl, timeout=d.timeout)

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP: new filters and per-pid keying, applied in the kernel without
        re-attaching (the caller has kept the keys that need a restart). Raises
        ConfigError, before changing anything, for a pid or cgroup that does not exist."""
        new_filter: Path | None = None
        if cfg.filter.pid is not None and not Path(f"{cfg.collection.proc}/{cfg.filter.pid}").exists():
            raise ConfigError(f"filter.pid {cfg.filter.pid}: no such process")
        if cfg.filter.cgroup is not None:
            try:
                new_filter = cgroups.resolve_filter(cfg.filter.cgroup, self.cgroup_root)
            except cgroups.CgroupError as e:
                raise ConfigError(str(e)) from None
        self.cfg = cfg
        self.retirer.every = cfg.collection.retire_interval
        self.loader.cfg = cfg
        self._cgroup_filter = new_filter
        self._update_cgroup_filter()
        self.loader.set_live(cfg.collection.per_pid, cfg.filter.pid, cfg.filter.comm, new_filter is not None)
        self._configure_dns(cfg)

    def _update_cgroup_filter(self) -> None:
        if not self.objs:
            return
        if self._cgroup_filter is None:
            m = self.objs[0].maps["cgroup_filter"]
            for gone in self._filter_ids:
                m.delete(R.U64.pack(gone))
            self._filter_ids = set()
            return
        ids = cgroups.subtree_ids(self._cgroup_filter)
        m = self.objs[0].maps["cgroup_filter"]
        for gone in self._filter_ids - ids:
            m.delete(R.U64.pack(gone))
        for new in ids - self._filter_ids:
            m.update(R.U64.pack(new), b"\x01")
        self._filter_ids = ids

    # ---- collection -------------------------------------------------------------------------

    def refresh_mounts(self) -> None:
        self.mounts.refresh()
        if not self.mounts.mounts:
            if not self._no_mounts_logged:
                self.log("no NFS mounts yet; counts appear when one is mounted")
                self._no_mounts_logged = True
        else:
            self._no_mounts_logged = False

    @property
    def paths(self) -> dict[FileKey, tuple[str, bool]]:
        """File paths below their superblock's root, from the ring (collect.events)."""
        return self.events.paths

    @property
    def events_overflow(self) -> int:
        return self.op_queue.overflow if self.op_queue is not None else 0

    def drain(self) -> None:
        self.events.drain()

    def _retire(self, live_devs: set[int]) -> None:
        """Kernel entries of unmounted superblocks go, so a later mount that reuses the
        device number starts from zero."""
        gone = self._known_devs - live_devs
        self._known_devs = set(live_devs)
        if not gone or not self.objs:
            return
        maps = self.objs[0].maps
        for dev in gone:
            maps["io_stats"].delete(R.DEV_KEY.pack(dev))
        for name, key in (("vfs_stats", R.VFS_KEY), ("owners", R.OWNER_KEY), ("files", R.FILE_KEY)):
            m = maps[name]
            doomed = [k for k, _v in m.items() if key.unpack(k)[0] in gone]
            for k in doomed:
                m.delete(k)
            if name == "files":
                self._files_deleted += len(doomed)
        # The RPC clients only the unmounted superblocks used (a v4 lease client shared with a
        # live mount stays): their per-op entries, client records and errors go too.
        live_clids = {c for d, chain in self._chains.items() if d in live_devs for c in chain}
        dead_clids = {c for d in gone for c in self._chains.get(d, ())} - live_clids
        for d in gone:
            self._chains.pop(d, None)
        if dead_clids:
            rm = maps["rpc_stats"]
            for k in [k for k, _v in rm.items() if R.RPC_KEY.unpack(k)[0] in dead_clids]:
                rm.delete(k)
            for clid in dead_clids:
                maps["clients"].delete(R.U32.pack(clid))
        self.retirer.forget_devs(gone)
        em = maps["errors"]
        for k, _v in list(em.items()):
            eid, kind = R.ERR_KEY.unpack(k)[:2]
            if (kind == R.ERR_VFS and eid in gone) or (kind != R.ERR_VFS and eid in dead_clids):
                em.delete(k)
        self.events.forget_devs(gone)

    def collect(self) -> Report | None:
        """Attach if needed, refresh mounts, drain the ring and read the kernel's aggregates."""
        if not self.try_attach():
            return None
        assert self.obj is not None
        self.refresh_mounts()
        self.cgroups.new_interval()
        self._update_cgroup_filter()
        self.drain()
        self._retire({nm.mount.dev for nm in self.mounts.nfs_list()})
        if self.retirer.due():
            self.retirer.sweep(self.obj.maps)
        snap = read_snapshot(self.obj.maps)
        self.retirer.apply(snap)
        snap.counters["retired_entries"] = self.retirer.folded
        # Removed cgroups keep their last identity only while the kernel still counts them.
        self.identity.forget({k.cgroup_id for k in snap.vfs} | {k.cgroup_id for k in snap.owners})
        snap.programs = self.loader.program_stats()
        snap.hooks = hook_losses(snap.programs, snap.programs)
        snap.counters["file_evictions"] = max(
            0, snap.counters.get("file_inserts", 0) - len(snap.files) - self._files_deleted
        )
        snap.counters["ring_unknown_records"] = self.events.unknown_records
        if self.tracefs is not None and self.tier == "tracefs":
            specs = {lk.kprobe_event[1] for o in self.objs for lk in o.links if lk.kprobe_event}
            snap.counters["kretprobe_missed"] = kprobe_misses(self.tracefs, specs)
        snap.counters["events_overflow"] = self.events_overflow
        if self.span_sink is not None:
            snap.counters["spans_exported"] = self.span_sink.exported
            for reason, n in self.span_sink.dropped.items():
                snap.counters[f"spans_{reason}"] = n
        paths = self.events.paths_for(snap.files)
        # Without parent pointers from the kernel (tier tracefs), debugfs gives the transports.
        need_xprts = any(not c.parent_known for c in snap.clients.values())
        rep = build_report(
            snap,
            self.mounts.nfs_list(),
            client_transports() if need_xprts else None,
            paths=paths,
            probe_failures=self.probe_failures,
        )
        for m in rep.mounts:
            self._chains[m.kdev] = list(m.clients)
        for m in rep.mounts:  # kubelet's volume paths: pod, volume and claim (never waits for the API)
            v = self.volumes.of(m.mount_point)
            m.volume = v.as_dict() if v is not None else None
        self.volumes.forget({m.mount_point for m in rep.mounts})
        return with_dns(rep, self.dns)  # answers from the cache only; never waits for DNS

    def skipped_events(self) -> int | None:
        """Events the kernel skipped before any bpfnfs program saw them (collect/losses.py);
        None where the kernel keeps no miss counter (< 5.12)."""
        stats = self.loader.program_stats()
        return total_lost(hook_losses(stats, stats))

    def counter(self, name: str) -> int:
        """One self-accounting counter, read straight from the kernel (cheap: one lookup)."""
        if not self.objs:
            return 0
        m = self.objs[0].maps["counters"]
        raw = m.lookup(R.U32.pack(R.COUNTERS.index(name)))
        return sum(R.U64.unpack(s)[0] for s in m.percpu_slots(raw)) if raw else 0

    @property
    def cgroup_filter_ids(self) -> set[int]:
        return self._filter_ids

    @property
    def tier(self) -> str | None:
        return self.loader.tier

    def close(self) -> None:
        if self.dns is not None:
            self.dns.close()
        if self.pods is not None:
            self.pods.close()
        self.events.close()
        self.loader.close()


__all__ = ["Agent", "LoadError", "stderr_log"]
