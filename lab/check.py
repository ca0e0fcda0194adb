"""Guest side of the lab test: bpfnfs against the kernel's own counters.

Runs inside a lab VM with /mnt/nfs3 and /mnt/nfs4 mounted. It attaches the
agent, takes a stable pair of snapshots (mountstats, bpfnfs), runs the workload,
takes a second pair, and writes result.json with one check per (mount, op,
quantity): both values, the tolerance and `ok`.

    python3 -m lab.check --out DIR [--tier auto|btf|tracefs] [--small]

Tolerances: counts and bytes exact. Times: mountstats prints floor(ns / 1e6) of
its cumulative sums, so a delta of two floors differs from the floor of the
delta by at most 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfnfs.agent import Agent
from bpfnfs.collect.snapshot import IoStats, RpcOpStats
from bpfnfs.collect.views import Report
from bpfnfs.config import Config
from bpfnfs.enrich.mountstats import NfsMountStats, OpStats, parse_mountstats

MOUNTS = ("/mnt/nfs3", "/mnt/nfs4")
EXACT_BTF = ("ops", "ntrans", "timeouts", "bytes_sent", "bytes_recv", "errors")
# 5.10 has no module BTF, but its vmlinux BTF describes struct rpc_task: the raw_tp reads it.
EXACT_TRACEFS = EXACT_BTF
TIMES = (("queue_ms", "queue_ns"), ("rtt_ms", "rtt_ns"), ("execute_ms", "execute_ns"))
ZERO_OP = OpStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
BYTES = (
    ("normalreadbytes", "read_bytes"),
    ("normalwritebytes", "write_bytes"),
    ("directreadbytes", "direct_read_bytes"),
    ("directwritebytes", "direct_write_bytes"),
    ("serverreadbytes", "server_read_bytes"),
    ("serverwritebytes", "server_write_bytes"),
)


def log(msg: str) -> None:
    print(f"lab.check: {msg}", flush=True)


def mountstats() -> dict[str, NfsMountStats]:
    return parse_mountstats(Path("/proc/self/mountstats").read_text())


def _ms_view(ms: dict[str, NfsMountStats]) -> dict[str, Any]:
    # What must not move between the two reads for a snapshot pair to be consistent.
    return {mp: ({k: (v.ops, v.errors) for k, v in s.ops.items()}, s.bytes) for mp, s in ms.items()}


def stable_pair(agent: Agent) -> tuple[dict[str, NfsMountStats], Report]:
    """mountstats and bpfnfs read with nothing completing in between.

    The kernel bumps mountstats before the tracepoint fires, so reading
    mountstats, then the maps, then mountstats again and requiring the two
    mountstats reads to agree rules out an RPC (say, a v4 lease renewal)
    landing in only one of them."""
    for _ in range(50):
        a = mountstats()
        rep = agent.collect()
        b = mountstats()
        if rep is not None and _ms_view(a) == _ms_view(b):
            return b, rep
        time.sleep(0.05)
    raise RuntimeError("mountstats never held still around a bpfnfs read")


def sh(cmd: str) -> None:
    log(f"$ {cmd}")
    subprocess.run(cmd, shell=True, check=True)


def drop_caches() -> None:
    subprocess.run("sync", check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(
    out: Path, name: str, directory: str, rw: str, size: str, bs: str, direct: bool, filename: str
) -> int:
    """Runs one fio job; returns the bytes fio itself reports."""
    res = out / f"fio-{name}.json"
    cmd = [
        "fio",
        f"--name={name}",
        f"--directory={directory}",
        f"--filename={filename}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={size}",
        f"--direct={int(direct)}",
        "--ioengine=psync",
        "--output-format=json",
        f"--output={res}",
    ]
    if "write" in rw:
        cmd.append("--end_fsync=1")
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    job = json.loads(res.read_text())["jobs"][0]
    return int(job["read"]["io_bytes"]) + int(job["write"]["io_bytes"])


@dataclass
class Workload:
    app_read: dict[str, int]
    app_write: dict[str, int]
    files_made: int


def metadata_pass(directory: str, n: int) -> None:
    d = Path(directory) / "meta"
    d.mkdir(exist_ok=True)
    for i in range(n):
        fd = os.open(d / f"f{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    for i in range(n):
        os.stat(d / f"f{i:05d}")
    names = os.listdir(d)
    assert len(names) == n, f"listed {len(names)} of {n} files"
    for name in names:
        os.unlink(d / name)
    d.rmdir()


def workload(out: Path, small: bool) -> Workload:
    mb = 8 if small else 32
    meta = 200 if small else 1000
    reads: dict[str, int] = {}
    writes: dict[str, int] = {}
    for mp in MOUNTS:
        tag = Path(mp).name  # separate names: both mounts export the same tmpfs
        w = fio(out, f"{tag}-bufw", mp, "write", f"{mb}M", "1M", False, f"{tag}-buf")
        drop_caches()
        r = fio(out, f"{tag}-bufr", mp, "read", f"{mb}M", "1M", False, f"{tag}-buf")
        w += fio(out, f"{tag}-dirw", mp, "write", f"{mb // 2}M", "256k", True, f"{tag}-dir")
        r += fio(out, f"{tag}-dirr", mp, "read", f"{mb // 2}M", "256k", True, f"{tag}-dir")
        sh(f"dd if=/dev/zero of={mp}/{tag}-dd bs=1M count=4 conv=fsync status=none")
        drop_caches()
        sh(f"dd if={mp}/{tag}-dd of=/dev/null bs=1M status=none")
        w += 4 << 20
        r += 4 << 20
        metadata_pass(mp, meta)
        reads[mp] = r
        writes[mp] = w
    time.sleep(1.0)  # async completions (writeback, COMMIT, lease ops) settle
    return Workload(reads, writes, meta)


def _floor_ms(ns: int) -> int:
    return ns // 1_000_000


def compare(
    tier: str,
    ms0: dict[str, NfsMountStats],
    ms1: dict[str, NfsMountStats],
    rep0: Report,
    rep1: Report,
    wl: Workload,
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(mount: str, op: str, qty: str, ours: int | None, kernel: int, tol: int = 0) -> None:
        ok = ours is not None and abs(ours - kernel) <= tol
        checks.append(
            {
                "mount": mount,
                "op": op,
                "quantity": qty,
                "bpfnfs": ours,
                "mountstats": kernel,
                "tolerance": tol,
                "ok": ok,
            }
        )

    exact = EXACT_BTF if tier == "btf" else EXACT_TRACEFS
    r0 = {m.mount_point: m for m in rep0.mounts}
    r1 = {m.mount_point: m for m in rep1.mounts}
    for mp in MOUNTS:
        a, b = ms0[mp], ms1[mp]
        m1 = r1.get(mp)
        if m1 is None:
            add(mp, "-", "mount seen by bpfnfs", 0, 1)
            continue
        m0 = r0.get(mp) or m1.blank()
        d = m1 - m0
        names = {k for k, s in b.ops.items() if s.ops - a.ops.get(k, ZERO_OP).ops} | set(d.moving_ops())
        for op in sorted(names):
            kb, ka = b.ops.get(op, ZERO_OP), a.ops.get(op, ZERO_OP)
            ours = d.ops.get(op, RpcOpStats())
            for qty in exact:
                kd = (getattr(kb, qty) or 0) - (getattr(ka, qty) or 0)
                add(mp, op, qty, getattr(ours, qty), kd)
            for ms_name, ns_name in TIMES:
                kd = getattr(kb, ms_name) - getattr(ka, ms_name)
                add(mp, op, ms_name, _floor_ms(getattr(ours, ns_name)), kd, 1)
        io: IoStats = d.io
        for ms_name, io_name in BYTES:
            kd = b.bytes[ms_name] - a.bytes[ms_name]
            add(mp, "bytes", ms_name, getattr(io, io_name), kd)
        # The workload's own count of bytes (fio's report + dd) at the syscall side.
        add(mp, "workload", "app_read_bytes", io.read_bytes + io.direct_read_bytes, wl.app_read[mp])
        add(mp, "workload", "app_write_bytes", io.write_bytes + io.direct_write_bytes, wl.app_write[mp])
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tier", default="auto")
    ap.add_argument("--small", action="store_true", help="smaller workload (smoke runs)")
    ns = ap.parse_args(argv)
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    for mp in MOUNTS:
        if not os.path.ismount(mp):
            log(f"{mp} is not mounted")
            return 1
    t0 = time.monotonic()
    agent = Agent(Config(tier=ns.tier), log=lambda m: log(f"bpfnfs: {m}"))
    agent.preflight()
    if not agent.try_attach():
        log("bpfnfs did not attach")
        return 1
    attach_s = time.monotonic() - t0
    # Map every mount to its RPC client before the first snapshot.
    for _ in range(20):
        agent.refresh_mounts()
        if all(nm.clid is not None for nm in agent.mounts.nfs_list()):
            break
        time.sleep(0.2)
    ms0, rep0 = stable_pair(agent)
    tw = time.monotonic()
    wl = workload(out, ns.small)
    workload_s = time.monotonic() - tw
    ms1, rep1 = stable_pair(agent)
    tier = agent.tier or "?"
    checks = compare(tier, ms0, ms1, rep0, rep1, wl)
    counters = rep1.snapshot.counters
    agent.close()
    bad = [c for c in checks if not c["ok"]]
    result = {
        "kernel": platform.release(),
        "tier": tier,
        "tier_reason": agent.plan.reason if agent.plan else None,
        "attach_seconds": round(attach_s, 3),
        "workload_seconds": round(workload_s, 3),
        "clients": {nm.key: nm.clid for nm in agent.mounts.nfs_list()},
        "self_counters": counters,
        "checks": checks,
        "mismatches": len(bad),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    shutil.copy("/proc/self/mountstats", out / "mountstats.txt")
    for c in bad:
        log(f"MISMATCH {c}")
    log(f"{len(checks)} checks, {len(bad)} mismatches, tier {tier}, kernel {platform.release()}")
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
