"""Loading and attaching bpfnfs's programs: the tier and counting method, the
programs that fit this kernel, one object instance per batch of modules (NFSv4's
programs wait for its module), and what the kernel says about each attached
program afterwards.

The agent owns one Loader; nothing here reads or interprets the maps.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import check_layouts
from bpfnfs.config import Config
from bpfnfs.loader.libbpf import LibbpfError, libbpf
from bpfnfs.loader.object import BpfObject, LoadError, object_bytes
from bpfnfs.loader.progstats import ProgStats, read_prog_stats
from bpfnfs.loader.sched import MAP_SYSCALLS
from bpfnfs.probes import btf, hooks, system, tiers

# Without these nothing mountstats-like works: a failure to attach them is fatal.
CORE_PROGRAMS = {
    "btf_rpc_stats_latency",
    "raw_rpc_stats_latency",
    "tp_rpc_stats_latency",
    "tp_rpc_task_end",
    "tp_rpc_request",
}
# Calls in flight per kretprobe (the kernel's limit is 4096). NFS calls sleep, so the
# default (one per CPU on non-preemptible kernels) loses returns under any concurrency.
KRETPROBE_MAXACTIVE = 1024
# tp_btf programs: the tracepoint's argument count they are written for (5.11+ shapes).
TRACEPOINT_NARGS = {
    "rpc_stats_latency": 4,
    "nfs_readpage_done": 2,
    "nfs_writeback_done": 2,
    "nfs_initiate_read": 1,
    "nfs_initiate_write": 1,
    "nfs_commit_done": 2,
    "nfs_xdr_status": 2,
    "nfs4_xdr_status": 3,
}


# tp_btf programs -> (tracepoint, module).
_BTF_TRACEPOINTS = {p: (h.split(":")[1], m) for h, p, _k, m in hooks.TRACEPOINT_HOOKS}
_BTF_TRACEPOINTS["btf_rpc_execute_ns"] = ("rpc_stats_latency", "sunrpc")


def _btf_tracepoint(program: str) -> tuple[str, str] | None:
    return _BTF_TRACEPOINTS.get(program)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return True


@dataclass(frozen=True)
class Counting:
    """How counting hooks are attached (docs/design.md, "Preemption").

    fentry: tp_btf and fentry/fexit, the cheapest; on a preemptible kernel such a
    program can be preempted on its CPU, and the kernel then skips that program for
    every other task there until it resumes. kprobe: classic tracepoints and
    kprobes/kretprobes, whose handlers run with preemption disabled."""

    method: str  # fentry | kprobe
    preemption: system.Preemption
    reason: str

    def describe(self) -> str:
        how = {
            "fentry": "tp_btf and fentry/fexit",
            "kprobe": "classic tracepoints and kprobes, run with preemption disabled",
        }[self.method]
        return f"{self.preemption.describe()}: counting through {how} ({self.reason})"


def choose_counting(cfg: Config, tier: str, preemption: system.Preemption) -> Counting:
    if tier == "tracefs":
        return Counting("kprobe", preemption, "the tracefs tier's hooks")
    if cfg.collection.counting != "auto":
        method = cfg.collection.counting
        return Counting(method, preemption, f"requested (collection.counting {method})")
    if preemption.preemptible:
        return Counting(
            "kprobe", preemption, "a preempted tp_btf or fentry program would skip other tasks' events"
        )
    return Counting("fentry", preemption, "programs are not preempted on this kernel")


class Loader:
    """Owns the BPF object instances. Not thread-safe: the agent's main loop drives it."""

    def __init__(
        self,
        cfg: Config,
        log: Callable[[str], None],
        events: bool = False,
        btf_source: btf.BtfSource | None = None,
        trees: bool = False,
        sample: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.log = log
        # Where BTF comes from (config btf.kernel, btf.model_dir); default: the kernel's own.
        self.btf_source = btf_source or btf.BtfSource()
        self._core_btf: btf.CoreBtf | None = None
        self.events = events  # per-op records on the ring (bpfnfs trace), cfg.trace.min_latency and slower
        # ... as span trees (bpf/bpfnfs.h): roots that are slow or failed, or sampled at this ratio,
        # with their children
        self.trees = events and trees
        self.sample = sample
        self.tracefs: Path | None = None
        self.objs: list[BpfObject] = []
        self.plan: tiers.TierPlan | None = None
        self.counting: Counting | None = None
        self.preemption: system.Preemption | None = None
        self.attached_at: float | None = None
        self.probe_failures: dict[str, str] = {}  # program -> why it is not attached
        self._waiting_logged = False
        self._cgroup_filter_on = False
        self.cgroup_v1 = 0  # struct bpfnfs_config.cgroup_v1 (enrich.cgroups.Hierarchy.kernel_value)
        self._per_pid, self._filter_pid, self._filter_comm = self._initial_live()
        self._stats_fd = -1
        self._first_programs: tuple[str, ...] = ()

    @property
    def obj(self) -> BpfObject | None:
        return self.objs[0] if self.objs else None

    @property
    def tier(self) -> str | None:
        return self.plan.tier if self.plan else None

    def _initial_live(self) -> tuple[bool, int | None, str | None]:
        """(per_pid, filter_pid, filter_comm) at start: the only reads of the config's
        filter settings here. set_live() replaces them at run time."""
        cfg = self.cfg
        return cfg.collection.per_pid, cfg.filter.pid, cfg.filter.comm

    def live_flags(self) -> int:
        """The flags of struct bpfnfs_live (.data): the ones set_live() can change."""
        f = R.CFG_F_VFS_PID if self._per_pid else 0
        if self._filter_pid is not None:
            f |= R.CFG_F_FILTER_PID
        if self._filter_comm is not None:
            f |= R.CFG_F_FILTER_COMM
        if self._cgroup_filter_on:
            f |= R.CFG_F_FILTER_CGROUP
        return f

    def _pack_live(self) -> bytes:
        return R.pack_live(self.live_flags(), self._filter_pid or 0, self._filter_comm or "")

    def set_live(
        self, per_pid: bool, filter_pid: int | None, filter_comm: str | None, cgroup_filter: bool
    ) -> None:
        """Change the syscall-side filters and per-pid keying without reloading or
        re-attaching anything: the values are written to the .data of every loaded
        instance, and the programs apply them from their next event (the objects
        loaded later start with them). cgroup_filter: check the cgroup_filter map,
        which the caller keeps filled. Per-pid keying on or off starts new vfs_stats
        keys (pid 0 or not); the old ones keep their totals."""
        self._per_pid = per_pid
        self._filter_pid = filter_pid
        self._filter_comm = filter_comm
        self._cgroup_filter_on = cgroup_filter
        value = self._pack_live()
        failed = []
        for obj in self.objs:  # each instance has its own .data
            try:
                obj.write_global(".data", value)
            except (LoadError, LibbpfError) as e:
                failed.append(str(e))
        if failed:
            raise LoadError("cannot update the live settings: " + "; ".join(failed))

    def flags(self, tier: str, programs: tuple[str, ...] = ()) -> int:
        """The .rodata flags, fixed for an instance's lifetime (live_flags() has the others)."""
        f = R.CFG_F_EVENTS if self.events else 0
        if self.trees:
            f |= R.CFG_F_TREES
        method = self.counting.method if self.counting else "fentry"
        if method == "kprobe" and _kernel_at_least(5, 12):
            f |= R.CFG_F_IDMAP_ARGS
        if method == "kprobe" and tier == "btf":
            f |= R.CFG_F_RPC_KPROBE
        if method == "fentry" and self.preemption is not None and self.preemption.preemptible:
            f |= R.CFG_F_ATOMIC  # two preemptible programs can interleave on one CPU
        # The direct I/O functions count direct bytes where they are hooked (5.18+
        # prototype for fexit; kprobes need only the first two arguments, 5.10 has them).
        direct = {f"fx_{f.name}" for f in hooks.VFS_FUNCTIONS if f.direct}
        if method == "kprobe" or direct <= set(programs) or direct <= set(self.plan_programs()):
            f |= R.CFG_F_DIRECT_FNS
        if _kernel_at_least(5, 19):
            f |= R.CFG_F_WRITE_COUNTED_EARLY  # "NFS: Don't report ENOSPC write errors twice"
        return f

    def plan_programs(self) -> tuple[str, ...]:
        """Programs of the first instance (the direct I/O ones live there: module nfs)."""
        return self._first_programs

    def _usable(self, programs: tuple[str, ...], tier: str) -> tuple[str, ...]:
        """Drops programs whose kernel function or tracepoint is absent or shaped
        differently here: one of them would fail the whole object's load."""
        if tier != "btf":
            return programs
        keep = list(programs)
        by_mod: dict[str, tuple[set[str], set[str]]] = {}
        for p in programs:
            fn = hooks.vfs_function(p)
            if fn is not None and p.startswith(("fe_", "fx_")):
                by_mod.setdefault(fn.module, (set(), set()))[0].add(fn.name)
            tp = _btf_tracepoint(p)
            if tp is not None:
                by_mod.setdefault(tp[1], (set(), set()))[1].add(tp[0])
        arities = btf.function_arity(
            {m: (sorted(f), sorted(t)) for m, (f, t) in by_mod.items()}, source=self.btf_source
        )
        for mod, (funcs, tps) in by_mod.items():
            arity = arities[mod]
            for p in list(keep):
                fn = hooks.vfs_function(p) if p.startswith(("fe_", "fx_")) else None
                tp = _btf_tracepoint(p)
                why = None
                if fn is not None and fn.name in funcs:
                    got = arity.get(fn.name)
                    if got != fn.nargs:
                        if got is None and fn.optional:
                            keep.remove(p)  # absent by design on this kernel (e.g. < 6.5)
                            continue
                        why = (
                            f"{fn.name} is not in the {mod} module's BTF"
                            if got is None
                            else f"{fn.name} takes {got} arguments here, bpfnfs expects {fn.nargs}"
                        )
                elif tp is not None and tp[0] in tps:
                    want = TRACEPOINT_NARGS[tp[0]]
                    got = arity.get(f"tp:{tp[0]}")
                    if got != want:
                        why = (
                            f"tracepoint {tp[0]} is not in the {mod} module's BTF"
                            if got is None
                            else f"tracepoint {tp[0]} has {got} arguments here, bpfnfs expects {want}"
                        )
                if why is not None:
                    keep.remove(p)
                    self.probe_failures[p] = why
        return tuple(keep)

    def _load(self, programs: tuple[str, ...], offsets: dict[str, int], tier: str) -> BpfObject:
        obj = BpfObject(object_bytes(), btf_custom_path=self.core_btf_path()).open()
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
                obj.maps["files"].set_max_entries(self.cfg.collection.max_files)
            slow_ns = round(self.cfg.trace.min_latency * 1e6) if self.events else 0
            obj.set_rodata(
                R.pack_config(
                    os.getpid(),
                    self.flags(tier, programs),
                    slow_ns,
                    system.o_direct(),
                    offsets,
                    cgroup_v1=self.cgroup_v1,
                    sample=self.sample if self.trees else 0.0,
                )
            )
            obj.set_initial(".data", self._pack_live())
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
                    fn = hooks.vfs_function(name)
                    if fn is not None and fn.optional and name.startswith(("kp_", "krp_")):
                        continue  # a kprobe on a function this kernel does not have
                    self.probe_failures[name] = str(e).splitlines()[0]
        except Exception:
            obj.close()
            raise
        return obj

    def try_attach(self, cgroup_filter: bool) -> bool:
        """Load and attach if the NFS client modules are present; True once attached."""
        if self.objs:
            self._attach_deferred()
            return True
        assert self.tracefs is not None, "set tracefs first (Agent.preflight)"
        self._cgroup_filter_on = cgroup_filter
        mods = system.modules(self.tracefs, self.btf_source)
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
        tier = tiers.tier_for(self.cfg.collection.tier, mods.have_module_btf, mods.attach_btf_missing)
        self.preemption = system.preemption()
        self.counting = choose_counting(self.cfg, tier, self.preemption)
        self.plan = tiers.plan(
            self.cfg.collection.tier,
            mods.have_module_btf,
            self.tracefs,
            mods.loaded,
            self.counting.method,
            mods.attach_btf_missing,
            trees=self.trees,
        )
        self.log(self.plan.describe())
        self.log(self.counting.describe())
        # The agent's own map syscalls must not hold bpf_prog_active while preempted (loader/sched.py):
        # on a preemptible kernel, for every agent of this process (the kprobe method's programs and
        # the mount probe all depend on it). Process-wide: never turned off by a later agent.
        MAP_SYSCALLS.log = self.log
        MAP_SYSCALLS.enabled = MAP_SYSCALLS.enabled or self.preemption.preemptible
        progs = self._usable(self.plan.programs, self.plan.tier)
        self._first_programs = progs
        obj = self._load(progs, self.plan.offsets, self.plan.tier)
        self.objs.append(obj)
        self.attached_at = time.monotonic()
        waiting = f"; waiting for {', '.join(sorted(self.plan.deferred))}" if self.plan.deferred else ""
        self.log(
            f"attached {len(obj.links)} programs in {1000 * (self.attached_at - t0):.0f} ms "
            f"(libbpf {libbpf().version_string}){waiting}"
        )
        for p, why in sorted(self.probe_failures.items()):
            self.log(f"warning: {p} not attached: {why}")
        stats = self.program_stats()
        if stats and all(s.recursion_misses is None for s in stats.values()):
            self.log(
                "this kernel keeps no per-program miss counter (bpf_prog_info.recursion_misses, 5.12+): "
                "events it skips before bpfnfs sees them are reported as not available"
            )
        return True

    def _attach_deferred(self) -> None:
        """Programs whose module (e.g. nfsv4) loaded after start: a second instance of the
        object, sharing every map with the first."""
        plan = self.plan
        if plan is None or not plan.deferred or self.tracefs is None or self.counting is None:
            return
        mods = system.modules(self.tracefs, self.btf_source)
        ready = [m for m in plan.deferred if m in mods.loaded]
        if not ready:
            return
        method = self.counting.method
        full = tiers.plan(
            self.cfg.collection.tier,
            mods.have_module_btf,
            self.tracefs,
            mods.loaded,
            method,
            mods.attach_btf_missing,
        )
        progs = tuple(p for m in ready for p in plan.deferred[m])
        progs = self._usable(progs, plan.tier)
        obj = self._load(progs, full.offsets, plan.tier)
        self.objs.append(obj)
        deferred = {m: ps for m, ps in plan.deferred.items() if m not in ready}
        self.plan = tiers.TierPlan(
            plan.tier, plan.reason, plan.programs + progs, plan.offsets, deferred, plan.method
        )
        self.log(f"{', '.join(ready)} loaded: attached {len(obj.links)} more programs")

    def attached(self) -> list[tuple[str, int]]:
        """(program name, fd) of every attached program."""
        out = []
        for o in self.objs:
            for lk in o.links:
                out.append((lk.program, o.lib.lib.bpf_program__fd(o.programs[lk.program].ptr)))
        return out

    def program_stats(self) -> dict[str, ProgStats]:
        """What the kernel keeps about each attached program (one syscall each)."""
        lib = libbpf()
        out: dict[str, ProgStats] = {}
        for name, fd in self.attached():
            try:
                out[name] = read_prog_stats(lib, fd)
            except LibbpfError:
                continue  # the program went away under us: nothing to report for it
        return out

    def enable_run_stats(self) -> bool:
        """Turn on the kernel's per-program run time and count (BPF_ENABLE_STATS) for as
        long as this loader lives; False where the kernel refuses (< 5.8, no privilege)."""
        if self._stats_fd >= 0:
            return True
        fd = libbpf().lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
        if fd < 0:
            return False
        self._stats_fd = fd
        return True

    def core_btf_path(self) -> Path | None:
        """The BTF file CO-RE relocates against: None for the kernel's own (libbpf finds
        vmlinux and module BTF itself); else vmlinux and the NFS modules' BTF of the
        source merged into one file, rebuilt when module BTF appears or changes."""
        if not self.btf_source.custom:
            return None
        if self._core_btf is None or self._core_btf.source != self.btf_source:
            if self._core_btf is not None:
                self._core_btf.close()
            self._core_btf = btf.CoreBtf(self.btf_source)
        try:
            if self._core_btf.refresh():
                self.log(self._core_btf.describe())
        except btf.BtfError as e:
            raise LoadError(str(e)) from None
        return self._core_btf.path

    def close(self) -> None:
        while self.objs:
            self.objs.pop().close()
        if self._core_btf is not None:
            self._core_btf.close()
        if self._stats_fd >= 0:
            os.close(self._stats_fd)
            self._stats_fd = -1


__all__ = ["CORE_PROGRAMS", "Counting", "Loader", "choose_counting"]
