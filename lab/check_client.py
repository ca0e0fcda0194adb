"""Guest side: the full client picture (issue #3) against what the workload did.

    python3 -m lab.check_client --out DIR [--files N]

Runs inside a lab VM with /mnt/nfs3 and /mnt/nfs4 mounted (server export at
/srv/nfs). Scenarios, each judged against the workload's own counts or the
kernel's mountstats:

  attribution  two processes in two cgroups write one file each (buffered, fsync
               at the end), then read them back after dropping caches: per-pid
               syscall counts equal what each process counted; WRITE bytes billed
               to each cgroup equal what it wrote; the billed sum equals
               mountstats' serverwritebytes delta; READ bytes billed to each
               reader equal its file size.
  files        five files of known sizes: the top-N file view names each path and
               its exact bytes, in order.
  errors       ENOENT on lookup, EACCES on open (as nobody), ESTALE (v3: file
               removed on the server while open), and RPC timeouts on a soft mount
               whose server stops answering (netem drops all loopback packets).
  lru          N files stat()ed: an agent with room for them counts every one, an
               agent with room for half counts its evictions.
  stale        a deleted file, a removed cgroup and an unmounted mount leave no rows
               in the next interval and no kernel entries for the gone mount.

Writes DIR/client.json: {"checks": [{"check", "ok", "detail"}], ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bpfnfs.agent import Agent
from bpfnfs.collect.views import MountReport, Report, diff_report, file_rows, identity_rows
from bpfnfs.config import Config
from bpfnfs.enrich.mountstats import parse_mountstats

MOUNTS = ("/mnt/nfs3", "/mnt/nfs4")
EXPORT = Path("/srv/nfs")
CGROOT = Path("/sys/fs/cgroup")
CHUNK = 64 * 1024


def log(msg: str) -> None:
    print(f"lab.check_client: {msg}", flush=True)


class Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: Any = None) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        log(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail is not None else ""))

    def eq(self, name: str, ours: Any, truth: Any) -> None:
        self.add(name, ours == truth, {"bpfnfs": ours, "expected": truth})


def drop_caches() -> None:
    subprocess.run("sync", check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def mountstats_bytes(mp: str) -> dict[str, int]:
    return parse_mountstats(Path("/proc/self/mountstats").read_text())[mp].bytes


def by_mount(rep: Report) -> dict[str, MountReport]:
    return {m.mount_point: m for m in rep.mounts}


def interval(agent: Agent, prev: Report) -> tuple[Report, dict[str, MountReport]]:
    rep = agent.collect()
    assert rep is not None
    return rep, {d.mount_point: d for d in diff_report(rep, prev)}


# ---- the workload's own processes -------------------------------------------------------------

WORKER = r"""
import json, os, sys
cg, path, nchunks, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
n = dict(pid=os.getpid(), open=0, write=0, read=0, fsync=0, flush=0, getattr=0, written=0, read_bytes=0)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644); n["open"] += 1
buf = bytes([65 + n["pid"] % 26]) * chunk
for _ in range(nchunks):
    n["written"] += os.write(fd, buf); n["write"] += 1
os.fsync(fd); n["fsync"] += 1
os.close(fd); n["flush"] += 1
for _ in range(3):
    os.stat(path); n["getattr"] += 1
sys.stdout.write(json.dumps(n) + "\n"); sys.stdout.flush()
sys.stdin.readline()  # the parent drops caches in between
fd = os.open(path, os.O_RDONLY); n["open"] += 1
while True:
    b = os.read(fd, chunk); n["read"] += 1
    if not b:
        break
    n["read_bytes"] += len(b)
os.close(fd); n["flush"] += 1
sys.stdout.write(json.dumps(n) + "\n"); sys.stdout.flush()
"""


def attribution(agent: Agent, c: Checks) -> None:
    for name in ("bpfnfs-a", "bpfnfs-b"):
        (CGROOT / name).mkdir(exist_ok=True)
    cg_ids = {name: os.stat(CGROOT / name).st_ino for name in ("bpfnfs-a", "bpfnfs-b")}
    for mp in MOUNTS:
        tag = Path(mp).name
        sizes = {"bpfnfs-a": 40, "bpfnfs-b": 24}  # chunks of 64 KiB
        prev = agent.collect()
        assert prev is not None
        ms0 = mountstats_bytes(mp)
        procs = {
            cg: subprocess.Popen(
                [sys.executable, "-c", WORKER, str(CGROOT / cg), f"{mp}/attr-{tag}-{cg}", str(n), str(CHUNK)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for cg, n in sizes.items()
        }
        first = {cg: json.loads(p.stdout.readline()) for cg, p in procs.items() if p.stdout}
        drop_caches()
        for p in procs.values():
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
        counts = {cg: json.loads(p.stdout.readline()) for cg, p in procs.items() if p.stdout}
        for p in procs.values():
            p.wait(timeout=60)
        time.sleep(1.0)  # COMMITs and late completions
        _rep, d = interval(agent, prev)
        m = d[mp]
        ms1 = mountstats_bytes(mp)
        rows = {r["pid"]: r for r in identity_rows(m, "process", agent.identity.of)}
        cgrows = {r["cgroup_id"]: r for r in identity_rows(m, "cgroup", agent.identity.of)}
        for cg, n in counts.items():
            assert first[cg]["written"] == n["written"]
            pid = n["pid"]
            vfs = {op: v.calls for (op, p, _c, _m), v in m.vfs.items() if p == pid}
            for op in ("open", "write", "read", "fsync", "flush", "getattr"):
                c.eq(f"{mp} {cg} pid {pid}: {op} calls", vfs.get(op, 0), n[op])
            r = rows.get(pid, {})
            c.eq(f"{mp} {cg}: syscall write bytes", r.get("write_bytes"), n["written"])
            c.eq(f"{mp} {cg}: syscall read bytes", r.get("read_bytes"), n["read_bytes"])
            cr = cgrows.get(cg_ids[cg], {})
            c.eq(f"{mp} {cg}: WRITE bytes billed to the cgroup", cr.get("wire_write_bytes"), n["written"])
            c.eq(f"{mp} {cg}: READ bytes billed to the cgroup", cr.get("wire_read_bytes"), n["read_bytes"])
            c.eq(f"{mp} {cg}: cgroup path", cr.get("cgroup"), f"/{cg}")
        billed = sum(o.write_bytes for o in m.owners.values())
        c.eq(
            f"{mp}: billed WRITE bytes == mountstats serverwritebytes delta",
            billed,
            ms1["serverwritebytes"] - ms0["serverwritebytes"],
        )
        c.eq(
            f"{mp}: billed READ bytes == mountstats serverreadbytes delta",
            sum(o.read_bytes for o in m.owners.values()),
            ms1["serverreadbytes"] - ms0["serverreadbytes"],
        )


def top_files(agent: Agent, c: Checks) -> None:
    mp = "/mnt/nfs3"
    d = Path(mp) / "top"
    d.mkdir(exist_ok=True)
    prev = agent.collect()
    assert prev is not None
    want = {}
    for i in range(1, 6):
        p = d / f"f{i}.dat"
        data = b"x" * (i * 3 * CHUNK + i)  # distinct, not page aligned
        with p.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        want[str(p)] = len(data)
    time.sleep(0.5)
    rep, dm = interval(agent, prev)
    rows = file_rows(dm[mp], rep.paths, 5, "bytes")
    got = [(r["path"], r["write_bytes"]) for r in rows]
    exp = sorted(want.items(), key=lambda kv: -kv[1])
    c.eq("top-5 files by bytes: paths and exact write bytes, in order", got, exp)
    c.eq("top files: wire WRITE bytes per file", [r["wire_write_bytes"] for r in rows], [v for _k, v in exp])
    c.eq("top files: relative path", rows[0]["relative_path"] if rows else None, "/top/f5.dat")


def errors(agent: Agent, c: Checks) -> None:
    prev = agent.collect()
    assert prev is not None
    for mp in MOUNTS:
        for i in range(3):
            with contextlib.suppress(FileNotFoundError):
                os.stat(f"{mp}/no-such-file-{i}")
        secret = Path(mp) / "secret"
        secret.write_text("x")
        secret.chmod(0o600)
        r = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                f"open({str(secret)!r}).read()",
            ],
            capture_output=True,
            text=True,
        )
        c.add(f"{mp}: open as nobody fails with EACCES", "PermissionError" in r.stderr, r.stderr[-200:])
    # ESTALE: NFSv3 has no open state on the server, so removing the file there frees it.
    p = Path("/mnt/nfs3/stale")
    p.write_bytes(b"s" * CHUNK)
    fd = os.open(p, os.O_RDONLY)
    (EXPORT / "stale").unlink()
    drop_caches()
    try:
        os.pread(fd, 100, 0)
        stale_seen = False
    except OSError as e:
        stale_seen = e.errno == 116
    os.close(fd)
    c.add("/mnt/nfs3: read of a file removed on the server fails with ESTALE", stale_seen)
    _rep, d = interval(agent, prev)
    for mp in MOUNTS:
        errs = d[mp].errors_by_op()
        flat = {(layer, op, name) for (layer, op), e in errs.items() for name in e}
        log(f"{mp} errors this interval: {sorted(flat)}")
        c.add(
            f"{mp}: LOOKUP ENOENT counted at the RPC layer", ("rpc", "LOOKUP", "ENOENT") in flat, sorted(flat)
        )
        nfserr = f"NFS{3 if mp.endswith('3') else 4}ERR_NOENT"
        c.add(
            f"{mp}: LOOKUP {nfserr} reported by the server (xdr status)",
            ("server", "LOOKUP", nfserr) in flat,
            sorted(flat),
        )
        eacces = sorted(x for x in flat if x[2] == "EACCES")
        c.add(f"{mp}: EACCES counted", bool(eacces), eacces)
        # Every RPC error counted by errno adds up to mountstats' per-op error count.
        for op, s in d[mp].ops.items():
            n = sum(v for (layer, o), e in errs.items() if layer == "rpc" and o == op for v in e.values())
            if s.errors or n:
                c.eq(f"{mp} {op}: errors by errno sum to the op's errors", n, s.errors)
    flat3 = {(layer, op, name) for (layer, op), e in d["/mnt/nfs3"].errors_by_op().items() for name in e}
    c.add("/mnt/nfs3: ESTALE counted on READ", ("rpc", "READ", "ESTALE") in flat3, sorted(flat3))
    stale = ("server", "READ", "NFS3ERR_STALE")
    c.add("/mnt/nfs3: the server said NFS3ERR_STALE", stale in flat3, sorted(flat3))


def timeouts(agent: Agent, c: Checks) -> None:
    mp = "/mnt/soft"
    os.makedirs(mp, exist_ok=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "nfs",
            "-o",
            "vers=3,nolock,soft,timeo=5,retrans=1,proto=tcp",
            "127.0.0.1:/srv/nfs",
            mp,
        ],
        check=True,
    )
    prev = None
    for _ in range(20):  # the agent must have probed the new mount's client first
        prev = agent.collect()
        if prev and any(m.mount_point == mp and m.clients for m in prev.mounts):
            break
        time.sleep(0.2)
    assert prev is not None
    ms0 = parse_mountstats(Path("/proc/self/mountstats").read_text())[mp]
    subprocess.run(["modprobe", "sch_netem"], check=False)
    r = subprocess.run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", "100%"], capture_output=True
    )
    if r.returncode:
        c.add("netem on loopback (needed to stop the server answering)", False, r.stderr.decode()[-200:])
        return
    try:
        t0 = time.monotonic()
        try:
            os.stat(f"{mp}/timeout-probe")
            failed = None
        except OSError as e:
            failed = e.errno
        log(f"soft mount stat failed with errno {failed} after {time.monotonic() - t0:.1f} s")
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    c.add("soft mount: stat fails while the server is silent", failed is not None, failed)
    time.sleep(2.0)
    ms1 = parse_mountstats(Path("/proc/self/mountstats").read_text())[mp]
    _rep, d = interval(agent, prev)
    m = d[mp]
    total_ms = sum(s.timeouts for s in ms1.ops.values()) - sum(s.timeouts for s in ms0.ops.values())
    ours = sum(s.timeouts for s in m.ops.values())
    c.add("soft mount: RPC timeouts counted", ours > 0, ours)
    c.eq("soft mount: timeouts equal mountstats' delta", ours, total_ms)
    for op, s in m.ops.items():
        k0, k1 = ms0.ops.get(op), ms1.ops.get(op)
        if k1 is not None and s.ops:
            c.eq(f"soft mount {op}: ntrans", s.ntrans, k1.ntrans - (k0.ntrans if k0 else 0))
    errs = {(layer, op, name) for (layer, op), e in m.errors_by_op().items() for name in e}
    c.add("soft mount: the failed RPC's errno is counted", any(x[0] == "rpc" for x in errs), sorted(errs))


def lru(c: Checks, n: int, tier: str) -> None:
    d = EXPORT / "many"
    d.mkdir(exist_ok=True)
    t0 = time.monotonic()
    for i in range(n):
        os.close(os.open(d / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    log(f"created {n} files on the server in {time.monotonic() - t0:.1f} s")
    big_cfg = Config(collection={"tier": tier, "max_files": max(131072, n + 16384)})
    big = Agent(big_cfg, log=lambda m: log(f"agent(big): {m}"))
    small_cfg = Config(collection={"tier": tier, "max_files": n // 2})
    small = Agent(small_cfg, log=lambda m: log(f"agent(small): {m}"))
    for a in (big, small):
        a.preflight()
        a.try_attach()
        a.collect()
    try:
        t0 = time.monotonic()
        names = os.listdir("/mnt/nfs3/many")  # READDIRPLUS primes the dcache
        for name in names:
            os.stat(f"/mnt/nfs3/many/{name}")
        log(f"stat()ed {len(names)} files in {time.monotonic() - t0:.1f} s")
        dev = os.stat("/mnt/nfs3").st_dev
        kdev = (os.major(dev) << 20) | os.minor(dev)
        for name, a in (("big", big), ("small", small)):
            t0 = time.monotonic()
            rep = a.collect()
            assert rep is not None
            files = {fid: f for (dv, fid), f in rep.snapshot.files.items() if dv == kdev}
            ino = {os.stat(f"/mnt/nfs3/many/{x}").st_ino for x in names[:50]}
            cnt = rep.snapshot.counters
            log(
                f"agent({name}): read {len(rep.snapshot.files)} file entries "
                f"in {time.monotonic() - t0:.2f} s, "
                f"inserts {cnt['file_inserts']}, evictions {cnt['file_evictions']}"
            )
            if name == "big":
                c.eq(
                    "lru(big): files tracked with exactly one getattr",
                    sum(1 for f in files.values() if f.other_ops == 1 and f.reads == 0),
                    n,
                )
                c.eq("lru(big): evictions", cnt["file_evictions"], 0)
                c.add(
                    "lru(big): fileids are the 64-bit inode numbers", ino <= set(files), len(ino - set(files))
                )
                named = sum(1 for fid in files if rep.paths.get((kdev, fid), ("",))[0].startswith("/many/f"))
                c.eq("lru(big): every file named", named, n)
            else:
                live = len(rep.snapshot.files)
                c.eq(
                    "lru(small): evictions == inserts - live",
                    cnt["file_evictions"],
                    cnt["file_inserts"] - live,
                )
                c.add(
                    "lru(small): evictions counted beyond the LRU size",
                    cnt["file_evictions"] >= n - n // 2,
                    {"evictions": cnt["file_evictions"], "capacity": n // 2},
                )
    finally:
        big.close()
        small.close()


def stale(agent: Agent, c: Checks) -> None:
    prev = agent.collect()
    assert prev is not None
    gone = Path("/mnt/nfs3/gone.dat")
    gone.write_bytes(b"g" * 100)
    gone.unlink()
    (CGROOT / "bpfnfs-tmp").mkdir(exist_ok=True)
    subprocess.run(
        [
            "sh",
            "-c",
            "echo $$ > /sys/fs/cgroup/bpfnfs-tmp/cgroup.procs; "
            "dd if=/dev/zero of=/mnt/nfs3/tmpcg.dat bs=64k count=4 conv=fsync status=none",
        ],
        check=True,
    )
    (CGROOT / "bpfnfs-tmp").rmdir()
    subprocess.run(["umount", "/mnt/soft"], check=False)
    rep, d = interval(agent, prev)
    rep2, d2 = interval(agent, rep)
    c.add("unmounted /mnt/soft is gone from the report", "/mnt/soft" not in d2, sorted(d2))
    soft_devs = {m.kdev for m in prev.mounts if m.mount_point == "/mnt/soft"}
    left = [k for k in rep2.snapshot.vfs if k.dev in soft_devs] + [
        k for k in rep2.snapshot.files if k[0] in soft_devs
    ]
    c.eq("no kernel entries left for the unmounted superblock", len(left), 0)
    rows = identity_rows(d2["/mnt/nfs3"], "cgroup", agent.identity.of)
    c.eq("no rows in the next interval (deleted file, removed cgroup)", [r["name"] for r in rows], [])
    cg_rows = identity_rows(d["/mnt/nfs3"], "cgroup", agent.identity.of)
    c.add(
        "a removed cgroup is shown as removed, not dropped",
        any("removed" in str(r["name"]) for r in cg_rows),
        [r["name"] for r in cg_rows],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check_client")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--files", type=int, default=100_000, help="files for the LRU scenario")
    ap.add_argument("--tier", default="auto")
    ns = ap.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    c = Checks()
    cfg = Config(collection={"tier": ns.tier}, view={"by": "process"})
    agent = Agent(cfg, log=lambda m: log(f"bpfnfs: {m}"))
    agent.preflight()
    if not agent.try_attach():
        log("bpfnfs did not attach")
        return 1
    for _ in range(20):
        agent.refresh_mounts()
        if all(nm.clid is not None for nm in agent.mounts.nfs_list()):
            break
        time.sleep(0.2)
    timings: dict[str, float] = {}
    try:
        for name, fn in (
            ("attribution", lambda: attribution(agent, c)),
            ("files", lambda: top_files(agent, c)),
            ("errors", lambda: errors(agent, c)),
            ("timeouts", lambda: timeouts(agent, c)),
            ("stale", lambda: stale(agent, c)),
            ("lru", lambda: lru(c, ns.files, ns.tier)),
        ):
            t0 = time.monotonic()
            try:
                fn()
            except Exception as e:  # one scenario's crash must not hide the others' results
                c.add(f"{name}: scenario ran", False, f"{type(e).__name__}: {e}")
            timings[name] = round(time.monotonic() - t0, 2)
        rep = agent.collect()
        counters = rep.snapshot.counters if rep else {}
        failures = rep.probe_failures if rep else {}
    finally:
        agent.close()
    c.add("every syscall-side probe attached", not failures, failures)
    bad = [x for x in c.items if not x["ok"]]
    (ns.out / "client.json").write_text(
        json.dumps(
            {
                "kernel": platform.release(),
                "tier": agent.tier,
                "timings": timings,
                "self_counters": counters,
                "checks": c.items,
                "failed": len(bad),
            },
            indent=1,
        )
    )
    log(f"{len(c.items)} checks, {len(bad)} failed, tier {agent.tier}, kernel {platform.release()}")
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
