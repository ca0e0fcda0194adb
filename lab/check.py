"""Guest side of the lab test: bpfnfs against the kernel's own counters.

Runs inside a lab VM with /mnt/nfs3 and /mnt/nfs4 mounted. It attaches the
agent, takes a stable pair of snapshots (mountstats, bpfnfs), runs the workload
in worker processes (fio, dd and metadata), takes a second pair, runs every
path that moves mountstats' bytes: counters (lab/bytes_paths.py: cp of a tree,
tar, sendfile, splice, mmap reads and writes, io_uring, O_DIRECT AIO), takes a
third pair, and writes result.json with one check per (mount, op, quantity):
both values, the tolerance and `ok`.

On a preemptible kernel the workload runs from several workers at once, and a
second agent counts the same window with the old method (tp_btf and
fentry/fexit, --counting fentry): it must lose events there, and report every
one it lost (checks named "old method ...").

    python3 -m lab.check --out DIR [--tier auto|btf|tracefs] [--small] [--workers N]

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
from bpfnfs.collect.losses import total_lost
from bpfnfs.collect.snapshot import IoStats, RpcOpStats
from bpfnfs.collect.views import Report
from bpfnfs.config import Config
from bpfnfs.enrich.mountstats import NfsMountStats, OpStats, parse_mountstats
from lab import bytes_paths

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


def stable_pair(*agents: Agent) -> tuple[dict[str, NfsMountStats], list[Report]]:
    """mountstats and bpfnfs read with nothing completing in between.

    The kernel bumps mountstats before the tracepoint fires, so reading
    mountstats, then the maps, then mountstats again and requiring the two
    mountstats reads to agree rules out an RPC (say, a v4 lease renewal)
    landing in only one of them."""
    for _ in range(50):
        a = mountstats()
        reps = [agent.collect() for agent in agents]
        b = mountstats()
        if all(r is not None for r in reps) and _ms_view(a) == _ms_view(b):
            return b, [r for r in reps if r is not None]
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


def metadata_pass(directory: str, n: int, tag: str = "") -> None:
    d = Path(directory) / f"meta{tag}"
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


def workload(out: Path, small: bool, worker: str = "") -> Workload:
    """fio, dd and metadata on both mounts; worker keeps concurrent workers' files apart."""
    mb = 8 if small else 32
    meta = 200 if small else 1000
    reads: dict[str, int] = {}
    writes: dict[str, int] = {}
    for mp in MOUNTS:
        tag = f"{Path(mp).name}{worker}"  # separate names: both mounts export the same tmpfs
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
        metadata_pass(mp, meta, worker)
        reads[mp] = r
        writes[mp] = w
    return Workload(reads, writes, meta)


def run_workers(out: Path, n: int, phase: str, small: bool) -> Workload:
    """The phase ("workload" or "paths") in n worker processes at once, each on its own
    files; the workers' own counts of what they read and wrote, summed."""
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "lab.check", "--out", str(out), "--worker", f"w{i}", "--phase", phase]
        procs.append(subprocess.Popen([*cmd, *(["--small"] if small else [])]))
    bad = [p.args for p in procs if p.wait() != 0]
    if bad:
        raise RuntimeError(f"workers failed: {bad}")
    wl = Workload({mp: 0 for mp in MOUNTS}, {mp: 0 for mp in MOUNTS}, 0)
    for i in range(n):
        part = json.loads((out / f"worker-w{i}-{phase}.json").read_text())
        for mp in MOUNTS:
            wl.app_read[mp] += part["app_read"][mp]
            wl.app_write[mp] += part["app_write"][mp]
        wl.files_made += part["files_made"]
    time.sleep(1.0)  # async completions (writeback, COMMIT, lease ops) settle
    return wl


def worker_main(out: Path, worker: str, phase: str, small: bool) -> int:
    if phase == "workload":
        wl = workload(out, small, f"-{worker}")
    else:
        for mp in MOUNTS:
            bytes_paths.run_all(mp, out / f"paths-{worker}", f"{Path(mp).name}-{worker}")
        wl = Workload({mp: 0 for mp in MOUNTS}, {mp: 0 for mp in MOUNTS}, 0)
    (out / f"worker-{worker}-{phase}.json").write_text(
        json.dumps({"app_read": wl.app_read, "app_write": wl.app_write, "files_made": wl.files_made})
    )
    return 0


def _floor_ms(ns: int) -> int:
    return ns // 1_000_000


def compare(
    tier: str,
    ms0: dict[str, NfsMountStats],
    ms1: dict[str, NfsMountStats],
    rep0: Report,
    rep1: Report,
    wl: Workload | None,
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
        if wl is not None:
            # The workload's own count of bytes (fio's report + dd) at the syscall side.
            add(mp, "workload", "app_read_bytes", io.read_bytes + io.direct_read_bytes, wl.app_read[mp])
            add(mp, "workload", "app_write_bytes", io.write_bytes + io.direct_write_bytes, wl.app_write[mp])
    return checks


def old_method_checks(
    ms0: dict[str, NfsMountStats], ms2: dict[str, NfsMountStats], rep0: Report, rep2: Report
) -> list[dict[str, Any]]:
    """The old method (tp_btf, fentry/fexit) on a preemptible kernel: it loses events, and
    reports them. Its shortfall per RPC op is within what its rpc_stats_latency hook
    reports lost (that hook also sees RPCs of clients no mount owns, e.g. nfsd's
    callbacks); it never counts more than the kernel; a short syscall side comes with
    losses reported on the read/write hooks."""
    checks: list[dict[str, Any]] = []

    def add(check: str, ours: int | None, kernel: int, ok: bool) -> None:
        checks.append({"check": check, "bpfnfs": ours, "mountstats": kernel, "ok": ok})

    hooks = rep2.snapshot.hooks
    lost = total_lost(hooks) or 0
    add("old method lost events (reported by the kernel's miss counters)", lost, 0, lost > 0)
    short_ops = 0
    over = []
    io_short = 0
    r0 = {m.mount_point: m for m in rep0.mounts}
    for mp in MOUNTS:
        m2 = next(m for m in rep2.mounts if m.mount_point == mp)
        d = m2 - (r0.get(mp) or m2.blank())
        for op, kb in ms2[mp].ops.items():
            kd = kb.ops - ms0[mp].ops.get(op, ZERO_OP).ops
            ours = d.ops.get(op, RpcOpStats()).ops
            short_ops += max(0, kd - ours)
            if ours > kd:
                over.append((mp, op, ours, kd))
        for ms_name, io_name in BYTES[:4]:
            io_short += (ms2[mp].bytes[ms_name] - ms0[mp].bytes[ms_name]) - getattr(d.io, io_name)
    rpc_lost = hooks["sunrpc:rpc_stats_latency"].lost if "sunrpc:rpc_stats_latency" in hooks else 0
    add("old method RPC ops short of mountstats, all reported lost", short_ops, rpc_lost or 0,
        short_ops <= (rpc_lost or 0))  # fmt: skip
    add("old method never counts more than mountstats", len(over), 0, not over)
    io_hooks = sum(
        x.lost or 0 for h, x in hooks.items() if h.split("/")[0] in ("nfs_file_read", "nfs_file_write",
        "nfs_file_splice_read", "nfs_file_direct_read", "nfs_file_direct_write")
    )  # fmt: skip
    add("old method app bytes short of mountstats only with losses reported", io_short, io_hooks,
        io_short == 0 or io_hooks > 0)  # fmt: skip
    return checks


def _hooks(rep: Report) -> dict[str, Any]:
    return {h: x.lost for h, x in rep.snapshot.hooks.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tier", default="auto")
    ap.add_argument("--small", action="store_true", help="smaller workload (smoke runs)")
    ap.add_argument("--workers", type=int, default=None, help="concurrent workers (3 if preemptible, else 1)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one worker's phase
    ap.add_argument("--phase", default="workload", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    if ns.worker:
        return worker_main(out, ns.worker, ns.phase, ns.small)
    for mp in MOUNTS:
        if not os.path.ismount(mp):
            log(f"{mp} is not mounted")
            return 1
    t0 = time.monotonic()
    agent = Agent(Config(collection={"tier": ns.tier}), log=lambda m: log(f"bpfnfs: {m}"))
    agent.preflight()
    if not agent.try_attach():
        log("bpfnfs did not attach")
        return 1
    attach_s = time.monotonic() - t0
    assert agent.counting is not None
    preemptible = agent.counting.preemption.preemptible
    agents = [agent]
    old: Agent | None = None
    if preemptible and agent.counting.method != "fentry" and agent.tier == "btf":
        # The old method in the same window, to show what it loses and that it says so.
        old = Agent(
            Config(collection={"tier": ns.tier, "counting": "fentry"}),
            log=lambda m: log(f"bpfnfs (old method): {m}"),
        )
        old.preflight()
        old.try_attach()
        agents.append(old)
    # Map every mount to its RPC client before the first snapshot.
    for _ in range(20):
        for a in agents:
            a.refresh_mounts()
        if all(nm.clid is not None for a in agents for nm in a.mounts.nfs_list()):
            break
        time.sleep(0.2)
    workers = ns.workers or (3 if preemptible else 1)
    small = ns.small or workers > 1
    ms0, reps0 = stable_pair(*agents)
    tw = time.monotonic()
    wl = run_workers(out, workers, "workload", small)
    ms1, reps1 = stable_pair(*agents)
    run_workers(out, workers, "paths", small)
    time.sleep(1.0)
    ms2, reps2 = stable_pair(*agents)
    workload_s = time.monotonic() - tw
    tier = agent.tier or "?"
    # Ops and bytes over the whole window; the workers' own counts over the first phase.
    checks = compare(tier, ms0, ms2, reps0[0], reps2[0], None)
    checks += [c for c in compare(tier, ms0, ms1, reps0[0], reps1[0], wl) if c["op"] == "workload"]
    old_checks = old_method_checks(ms0, ms2, reps0[1], reps2[1]) if old is not None else []
    counters = reps2[0].snapshot.counters
    result = {
        "kernel": platform.release(),
        "tier": tier,
        "tier_reason": agent.plan.reason if agent.plan else None,
        "counting": agent.counting.method,
        "counting_reason": agent.counting.describe(),
        "preemptible": preemptible,
        "workers": workers,
        "attach_seconds": round(attach_s, 3),
        "workload_seconds": round(workload_s, 3),
        "clients": {nm.key: nm.clid for nm in agent.mounts.nfs_list()},
        "self_counters": counters,
        "hooks_lost": _hooks(reps2[0]),
        "checks": checks,
        "mismatches": len([c for c in checks if not c["ok"]]),
    }
    if old is not None:
        old_cmp = compare(old.tier or "?", ms0, ms2, reps0[1], reps2[1], None)
        result["old_method"] = {
            "hooks_lost": _hooks(reps2[1]),
            "mismatches": [c for c in old_cmp if not c["ok"]],
            "checks": old_checks,
        }
    for a in agents:
        a.close()
    bad = [c for c in checks + old_checks if not c["ok"]]
    (out / "result.json").write_text(json.dumps(result, indent=1))
    shutil.copy("/proc/self/mountstats", out / "mountstats.txt")
    for c in bad:
        log(f"MISMATCH {c}")
    if old is not None:
        om = result["old_method"]
        log(f"old method: {len(om['mismatches'])} mismatches, lost {om['hooks_lost']}")
    log(f"{len(checks)} checks, {len(bad)} failed, tier {tier}, counting {agent.counting.method}, "
        f"kernel {platform.release()}")  # fmt: skip
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
