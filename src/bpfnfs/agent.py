"""The agent: preflight, tier choice, load and attach (lazily, when the NFS
modules appear), and periodic collection into per-mount reports."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import FileKey, check_layouts, read_snapshot
from bpfnfs.collect.views import Report, build_report
from bpfnfs.config import Config, ConfigError
from bpfnfs.enrich import cgroups
from bpfnfs.enrich.mounts import MountRegistry, client_transports
from bpfnfs.loader.libbpf import libbpf
from bpfnfs.loader.object import BpfObject, LoadError, kprobe_misses, object_bytes
from bpfnfs.probes import btf, system, tiers
from bpfnfs.ringbuf import RingBuffer

# Without these nothing mountstats-like works: a failure to attach them is fatal.
CORE_PROGRAMS = {
    "btf_rpc_stats_latency",
    "raw_rpc_stats_latency",
    "tp_rpc_stats_latency",
    "tp_rpc_task_end",
    "tp_rpc_request",
}
MAX_EVENTS = 65536
# Calls in flight per kretprobe (the kernel's limit is 4096). NFS calls sleep, so the
# default (one per CPU on non-preemptible kernels) loses returns under any concurrency.
KRETPROBE_MAXACTIVE = 1024
DRAIN_PERIOD = 0.1  # seconds between ring buffer drains


def stderr_log(msg: str) -> None:
    print(f"bpfnfs: {msg}", file=sys.stderr, flush=True)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return True


class Agent:
    def __init__(self, cfg: Config, log: Callable[[str], None] = stderr_log) -> None:
        self.cfg = cfg
        self.log = log
        self.tracefs: Path | None = None
        self.objs: list[BpfObject] = []
        self.plan: tiers.TierPlan | None = None
        self.mounts = MountRegistry(None, proc=cfg.proc, log=log)
        self.attached_at: float | None = None
        self.probe_failures: dict[str, str] = {}  # program -> why it is not attached
        self.paths: dict[FileKey, tuple[str, bool]] = {}  # (path below the superblock root, truncated)
        self.events: deque[tuple[object, ...]] = deque(maxlen=MAX_EVENTS)
        self.events_overflow = 0
        self.ring: RingBuffer | None = None
        self.cgroup_root = cgroups.cgroup2_root(cfg.proc)
        self.cgroups = cgroups.CgroupResolver(self.cgroup_root)
        self._cgroup_filter: Path | None = None
        self._filter_ids: set[int] = set()
        self._waiting_logged = False
        self._no_mounts_logged = False
        self._known_devs: set[int] = set()
        self._files_deleted = 0
        self._ring_lock = threading.Lock()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None

    @property
    def obj(self) -> BpfObject | None:
        return self.objs[0] if self.objs else None

    def preflight(self) -> None:
        """Everything that must hold before loading; raises RequirementError, LibbpfError or ConfigError."""
        system.check_privileges()
        system.check_vmlinux_btf()
        self.tracefs = system.check_tracefs()
        libbpf()  # loads the library and checks its version
        if self.cfg.filter_pid is not None and not Path(f"{self.cfg.proc}/{self.cfg.filter_pid}").exists():
            raise ConfigError(f"--pid {self.cfg.filter_pid}: no such process")
        if self.cfg.filter_cgroup is not None:
            try:
                self._cgroup_filter = cgroups.resolve_filter(self.cfg.filter_cgroup, self.cgroup_root)
            except cgroups.CgroupError as e:
                raise ConfigError(str(e)) from None

    # ---- loading ----------------------------------------------------------------------------

    def _flags(self) -> int:
        f = R.CFG_F_EVENTS if self.cfg.slow_ms is not None else 0
        if self.cfg.by == "process" or self.cfg.filter_pid is not None or self.cfg.metrics_pid:
            f |= R.CFG_F_VFS_PID
        if self.cfg.filter_pid is not None:
            f |= R.CFG_F_FILTER_PID
        if self.cfg.filter_comm is not None:
            f |= R.CFG_F_FILTER_COMM
        if self._cgroup_filter is not None:
            f |= R.CFG_F_FILTER_CGROUP
        return f

    def _usable(self, programs: tuple[str, ...], tier: str) -> tuple[str, ...]:
        """Drops syscall-side programs whose function this kernel lacks or shaped differently."""
        keep = list(programs)
        if tier == "btf":
            by_mod: dict[str, list[str]] = {}
            for p in programs:
                fn = tiers.vfs_function(p) if p.startswith(("fe_", "fx_")) else None
                if fn:
                    by_mod.setdefault(fn[1], []).append(fn[0])
            for mod, names in by_mod.items():
                arity = btf.function_arity(mod, sorted(set(names)))
                for name in names:
                    want = next(n for f, _m, n in tiers.VFS_FUNCTIONS if f == name)
                    got = arity.get(name)
                    if got != want:
                        why = (
                            f"{name} is not in the {mod} module's BTF"
                            if got is None
                            else f"{name} takes {got} arguments here, bpfnfs expects {want}"
                        )
                        for p in (f"fe_{name}", f"fx_{name}"):
                            if p in keep:
                                keep.remove(p)
                                self.probe_failures[p] = why
        return tuple(keep)

    def _load(self, programs: tuple[str, ...], offsets: dict[str, int], tier: str) -> BpfObject:
        obj = BpfObject(object_bytes()).open()
        try:
            obj.set_autoload(set(programs))
            first = self.obj
            if first is not None:
                # Every map is shared with the first instance, except its own
                # .rodata/.bss/.data (libbpf names those "<object>.<section>").
                for name, m in obj.maps.items():
                    if "." not in name:
                        m.reuse_fd(first.maps[name].fd)
            else:
                obj.maps["files"].set_max_entries(self.cfg.max_files)
            flags = self._flags()
            if tier == "tracefs" and _kernel_at_least(5, 12):
                flags |= R.CFG_F_IDMAP_ARGS
            slow_ns = round((self.cfg.slow_ms or 0) * 1e6)
            obj.set_rodata(
                R.pack_config(
                    os.getpid(),
                    flags,
                    slow_ns,
                    system.o_direct(),
                    offsets,
                    self.cfg.filter_pid or 0,
                    self.cfg.filter_comm or "",
                )
            )
            obj.load()
            check_layouts(obj.maps)
            for name in programs:
                try:
                    if name.startswith("krp_") and self.tracefs is not None:
                        obj.attach_kretprobe(name, name[4:], KRETPROBE_MAXACTIVE, self.tracefs)
                    else:
                        obj.attach(name)
                except LoadError as e:
                    if name in CORE_PROGRAMS:
                        raise
                    self.probe_failures[name] = str(e).splitlines()[0]
        except Exception:
            obj.close()
            raise
        return obj

    def try_attach(self) -> bool:
        """Load and attach if the NFS client modules are present; True once attached."""
        if self.objs:
            self._attach_deferred()
            return True
        assert self.tracefs is not None, "preflight() first"
        mods = system.modules(self.tracefs)
        if not mods.ready:
            if not self._waiting_logged:
                missing = [n for n, ok in (("sunrpc", mods.sunrpc), ("nfs", mods.nfs)) if not ok]
                self.log(
                    f"waiting for the {' and '.join(missing)} module{'s' if len(missing) > 1 else ''} "
                    "(no NFS client loaded yet); will attach when they appear"
                )
                self._waiting_logged = True
            return False
        t0 = time.monotonic()
        self.plan = tiers.plan(self.cfg.tier, mods.have_module_btf, self.tracefs, mods.loaded)
        self.log(self.plan.describe())
        progs = self._usable(self.plan.programs, self.plan.tier)
        obj = self._load(progs, self.plan.offsets, self.plan.tier)
        self.objs.append(obj)
        self.ring = RingBuffer(libbpf(), obj.maps["events"].fd, (R.OP_EVENT.size, R.PATH_EVENT.size))
        self._drainer = threading.Thread(target=self._drain_loop, name="bpfnfs-ring", daemon=True)
        self._drainer.start()
        self.attached_at = time.monotonic()
        self.mounts.probe_map = obj.maps["mount_probe"]
        self._update_cgroup_filter()
        waiting = f"; waiting for {', '.join(sorted(self.plan.deferred))}" if self.plan.deferred else ""
        self.log(
            f"attached {len(obj.links)} programs in {1000 * (self.attached_at - t0):.0f} ms "
            f"(libbpf {libbpf().version_string}){waiting}"
        )
        for p, why in sorted(self.probe_failures.items()):
            self.log(f"warning: {p} not attached: {why}")
        return True

    def _attach_deferred(self) -> None:
        """Programs whose module (e.g. nfsv4) loaded after start: a second instance of the
        object, sharing every map with the first."""
        plan = self.plan
        if plan is None or not plan.deferred or self.tracefs is None:
            return
        mods = system.modules(self.tracefs)
        ready = [m for m in plan.deferred if m in mods.loaded]
        if not ready:
            return
        full = tiers.plan(self.cfg.tier, mods.have_module_btf, self.tracefs, mods.loaded)
        progs = tuple(p for m in ready for p in plan.deferred[m])
        progs = self._usable(progs, plan.tier)
        obj = self._load(progs, full.offsets, plan.tier)
        self.objs.append(obj)
        deferred = {m: ps for m, ps in plan.deferred.items() if m not in ready}
        self.plan = tiers.TierPlan(plan.tier, plan.reason, plan.programs + progs, plan.offsets, deferred)
        self.log(f"{', '.join(ready)} loaded: attached {len(obj.links)} more programs")

    def _update_cgroup_filter(self) -> None:
        if self._cgroup_filter is None or not self.objs:
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

    def _drain_loop(self) -> None:
        # Between collections too: a burst of new files (one path record each) must not
        # outgrow the ring while the main loop sleeps through its interval.
        while not self._stop.wait(DRAIN_PERIOD):
            self.drain()

    def drain(self) -> None:
        """Empty the ring buffer: file paths into self.paths, per-op records into self.events."""
        with self._ring_lock:
            if self.ring is None:
                return
            got = self.ring.drain()
            recs = R.PATH_EVENT.iter_unpack(got[R.PATH_EVENT.size])
            for kind, fileid, dev, flags, length, _depth, raw in recs:
                if kind != R.OP_PATH:
                    continue
                parts = [p.decode("utf-8", "replace") for p in raw[:length].split(b"\0") if p]
                truncated = bool(flags & R.PATH_F_TRUNCATED)
                self.paths[(dev, fileid)] = ("/" + "/".join(reversed(parts)), truncated)
            for ev in R.OP_EVENT.iter_unpack(got[R.OP_EVENT.size]):
                if len(self.events) == self.events.maxlen:
                    self.events_overflow += 1
                self.events.append(ev)

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
        em = maps["errors"]
        for k, _v in list(em.items()):
            eid, kind = R.ERR_KEY.unpack(k)[:2]
            if kind == R.ERR_VFS and eid in gone:
                em.delete(k)
        with self._ring_lock:
            for fk in [fk for fk in self.paths if fk[0] in gone]:
                del self.paths[fk]

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
        snap = read_snapshot(self.obj.maps)
        snap.counters["file_evictions"] = max(
            0, snap.counters.get("file_inserts", 0) - len(snap.files) - self._files_deleted
        )
        snap.counters["ring_unknown_records"] = self.ring.unknown_records if self.ring else 0
        if self.tracefs is not None and self.tier == "tracefs":
            specs = {lk.kprobe_event[1] for o in self.objs for lk in o.links if lk.kprobe_event}
            snap.counters["kretprobe_missed"] = kprobe_misses(self.tracefs, specs)
        snap.counters["events_overflow"] = self.events_overflow
        with self._ring_lock:
            # Paths of files the LRU evicted are no longer needed.
            if len(self.paths) > len(snap.files) + 1024:
                for fk in [fk for fk in self.paths if fk not in snap.files]:
                    del self.paths[fk]
            paths = dict(self.paths)
        # Without parent pointers from the kernel (tier tracefs), debugfs gives the transports.
        need_xprts = any(not c.parent_known for c in snap.clients.values())
        return build_report(
            snap,
            self.mounts.nfs_list(),
            client_transports() if need_xprts else None,
            paths=paths,
            probe_failures=self.probe_failures,
        )

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
        return self.plan.tier if self.plan else None

    def close(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(2 * DRAIN_PERIOD)
        with self._ring_lock:
            if self.ring is not None:
                self.ring.close()
                self.ring = None
        while self.objs:
            self.objs.pop().close()


__all__ = ["Agent", "LoadError", "stderr_log"]
