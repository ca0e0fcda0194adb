"""The agent: preflight, tier choice, load and attach (lazily, when the NFS
modules appear), and periodic collection into per-mount reports."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bpfnfs.collect import records as R
from bpfnfs.collect.snapshot import check_layouts, read_snapshot
from bpfnfs.collect.views import Report, build_report
from bpfnfs.config import Config
from bpfnfs.enrich.mounts import MountRegistry, client_transports
from bpfnfs.loader.libbpf import libbpf
from bpfnfs.loader.object import BpfObject, LoadError, object_bytes
from bpfnfs.probes import system, tiers


def stderr_log(msg: str) -> None:
    print(f"bpfnfs: {msg}", file=sys.stderr, flush=True)


class Agent:
    def __init__(self, cfg: Config, log: Callable[[str], None] = stderr_log) -> None:
        self.cfg = cfg
        self.log = log
        self.tracefs: Path | None = None
        self.obj: BpfObject | None = None
        self.plan: tiers.TierPlan | None = None
        self.mounts = MountRegistry(None, proc=cfg.proc, log=log)
        self.attached_at: float | None = None
        self._waiting_logged = False
        self._no_mounts_logged = False

    def preflight(self) -> None:
        """Everything that must hold before loading; raises RequirementError or LibbpfError."""
        system.check_privileges()
        system.check_vmlinux_btf()
        self.tracefs = system.check_tracefs()
        libbpf()  # loads the library and checks its version

    def try_attach(self) -> bool:
        """Load and attach if the NFS client modules are present; True once attached."""
        if self.obj is not None:
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
        self.plan = tiers.plan(self.cfg.tier, mods.have_module_btf, self.tracefs)
        self.log(self.plan.describe())
        obj = BpfObject(object_bytes()).open()
        try:
            obj.set_autoload(set(self.plan.programs))
            flags = R.CFG_F_EVENTS if self.cfg.slow_ms is not None else 0
            slow_ns = int((self.cfg.slow_ms or 0) * 1e6)
            obj.set_rodata(R.pack_config(os.getpid(), flags, slow_ns, system.o_direct(), self.plan.offsets))
            obj.load()
            check_layouts(obj.maps)
            for name in self.plan.programs:
                obj.attach(name)
        except Exception:
            obj.close()
            raise
        self.obj = obj
        self.attached_at = time.monotonic()
        self.mounts.probe_map = obj.maps["mount_probe"]
        self.log(
            f"attached {len(obj.links)} programs in {1000 * (self.attached_at - t0):.0f} ms "
            f"(libbpf {libbpf().version_string})"
        )
        return True

    def refresh_mounts(self) -> None:
        self.mounts.refresh()
        if not self.mounts.mounts:
            if not self._no_mounts_logged:
                self.log("no NFS mounts yet; counts appear when one is mounted")
                self._no_mounts_logged = True
        else:
            self._no_mounts_logged = False

    def collect(self) -> Report | None:
        """Attach if needed, refresh mounts, and read the kernel's aggregates."""
        if not self.try_attach():
            return None
        assert self.obj is not None
        self.refresh_mounts()
        snap = read_snapshot(self.obj.maps)
        # Without parent pointers from the kernel (tier tracefs), debugfs gives the transports.
        need_xprts = any(not c.parent_known for c in snap.clients.values())
        return build_report(snap, self.mounts.nfs_list(), client_transports() if need_xprts else None)

    @property
    def tier(self) -> str | None:
        return self.plan.tier if self.plan else None

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None


__all__ = ["Agent", "LoadError", "stderr_log"]
