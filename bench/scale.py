"""Scale: many files, cgroups and mounts at once; what the agent costs and whether it loses counts.

Runs inside a lab VM (guest side) with the lab's NFSv3 and NFSv4.2 mounts of one export
(/mnt/nfs3, /mnt/nfs4), ``workdir`` on one of them.

1. Mounts: ``mounts`` NFS mounts in all, the lab's two included. The others mount
   ``<export>/<workdir>/mNN`` at /mnt/scale/mNN, alternately v3 and v4.2, with
   ``nosharecache`` so that each is its own superblock (checked: distinct devices).
2. The agent: ``bpfnfs run --listen 127.0.0.1:PORT --quiet --interval 5``. Five seconds is
   what a DaemonSet behind a 15 s Prometheus scrape would use (docs/metrics.md shows
   ``-i 5``); the default 1 s serves the live table, not an exporter.
3. Activity: ``cgroups`` cgroups under the cgroup2 root (bench-scale/cgNNNN). One forked
   worker per cgroup moves itself into its cgroup (cgroup.procs) before any I/O, names
   itself ``bench-scale`` and creates, writes (1 KiB) and reads back its share of the
   ``files`` distinct files, PARALLEL workers at a time. A cgroup works on one mount
   (``c % mounts``; with fewer cgroups than mounts, a cgroup takes several), as a container
   does: (mount, cgroup, op) keys then stay below the vfs_stats map's 16,384 entries.
   Every cgroup on every mount would make 1000 x 50 x ~7 keys, far above that limit.
4. While it runs, /metrics is scraped as Prometheus would (every 15 s, less often when a
   scrape is slow): the agent's RSS, its collection time, the scrape's size and time, and
   the self-accounting loss counters.
5. Correctness: per mount, the agent's RPC counts (every op) and bytes against
   /proc/self/mountstats, as deltas between two stable readings (mountstats read before a
   collection began and after it ended, and equal: no RPC landed in between). v4 lease ops
   (SEQUENCE...) renew in the background on all v4 mounts at once; when no reading catches
   them still, they are only checked to lie within the two reads. And per (mount, cgroup):
   the write/read ops and bytes and the WRITE payload billed to it, against what its
   worker did.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench import agents
from bench.workloads import WorkloadError
from bpfnfs.enrich.cgroups import cgroup2_root
from bpfnfs.enrich.mountinfo import Mount, nfs_mounts, read_mountinfo
from bpfnfs.enrich.mountstats import NfsMountStats, parse_mountstats

INTERVAL = 5.0  # the agent's --interval (see above)
FILE_BYTES = 1024
PARALLEL = 4  # workers (cgroups) at a time: the guest has one vCPU, nfsd four threads
COMM = "bench-scale"
MOUNT_ROOT = Path("/mnt/scale")
CGROUP_DIR = "bench-scale"
URL = f"http://127.0.0.1:{agents.PORT}/metrics"
PROGRESS_EVERY = 60.0
_HIST_SUFFIX = re.compile(r"_(bucket|sum|count)$")
MOUNTSTATS = Path("/proc/self/mountstats")

# Series each kind of scrape keeps (the rest, histograms above all, is not parsed).
SELF = frozenset(
    {
        "bpfnfs_collection_duration_seconds",
        "bpfnfs_last_collection_timestamp_seconds",
        "bpfnfs_events_lost_total",
        "bpfnfs_map_full_total",
        "bpfnfs_map_evictions_total",
        "bpfnfs_kretprobe_missed_total",
        "bpfnfs_unattributed_rpcs_total",
        "bpfnfs_mountinfo_parse_errors_total",
        "bpfnfs_files_tracked",
        "bpfnfs_files_capacity",
        "bpfnfs_identities",
        "bpfnfs_mount_info",
        "bpfnfs_probe_attached",
    }
)
LOSSES = (
    ("events_lost", "bpfnfs_events_lost_total", "reason"),
    ("map_full", "bpfnfs_map_full_total", "map"),
    ("evictions", "bpfnfs_map_evictions_total", "map"),
    ("kretprobe_missed", "bpfnfs_kretprobe_missed_total", ""),
    ("unattributed_rpcs", "bpfnfs_unattributed_rpcs_total", "op"),
    ("mountinfo_parse_errors", "bpfnfs_mountinfo_parse_errors_total", ""),
)
# mountstats bytes -> the agent's series (and the io label it needs, if any).
BYTES = (
    ("normalreadbytes", "bpfnfs_read_bytes_total", "buffered"),
    ("normalwritebytes", "bpfnfs_write_bytes_total", "buffered"),
    ("directreadbytes", "bpfnfs_read_bytes_total", "direct"),
    ("directwritebytes", "bpfnfs_write_bytes_total", "direct"),
    ("serverreadbytes", "bpfnfs_server_read_bytes_total", ""),
    ("serverwritebytes", "bpfnfs_server_write_bytes_total", ""),
)
PROCESS = (
    "bpfnfs_process_operations_total",
    "bpfnfs_process_read_bytes_total",
    "bpfnfs_process_write_bytes_total",
    "bpfnfs_process_server_write_bytes_total",
)
COMPARE = SELF | {"bpfnfs_rpc_operations_total"} | {b[1] for b in BYTES} | set(PROCESS)
# NFSv4 lease and session ops run on the nfs_client's own RPC client, which every v4 mount's
# mountstats includes: they move in the background, on all v4 mounts at once.
LEASE_OPS = frozenset(
    {"SEQUENCE", "RENEW", "EXCHANGE_ID", "CREATE_SESSION", "DESTROY_SESSION", "RECLAIM_COMPLETE"}
)


class ScaleError(WorkloadError):
    """The scale section could not set itself up or run its workers; the message says why."""


# ---- scraping -------------------------------------------------------------------------------


@dataclass
class Scrape:
    started: float  # wall clock
    seconds: float
    size: int
    lines: int
    samples: dict[str, list[tuple[dict[str, str], float]]]
    families: dict[str, int]  # sample lines per family (histogram buckets, sums and counts together)

    def get(self, name: str, **match: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``match``."""
        return sum(v for lb, v in self.samples.get(name, ()) if all(lb.get(k) == x for k, x in match.items()))

    def labelled(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lb, v in self.samples.get(name, ()):
            out[lb.get(label, "")] = out.get(lb.get(label, ""), 0.0) + v
        return out

    @property
    def collected_at(self) -> float:
        return self.get("bpfnfs_last_collection_timestamp_seconds")

    @property
    def collection_s(self) -> float:
        return self.get("bpfnfs_collection_duration_seconds")

    @property
    def collection_started(self) -> float:
        return self.collected_at - self.collection_s

    def mounts(self) -> set[str]:
        return {lb["mount"] for lb, _ in self.samples.get("bpfnfs_mount_info", ())}


def scrape(keep: Iterable[str]) -> Scrape:
    """One GET of /metrics; only the series in ``keep`` are parsed (the comment lines are
    dropped too, so every sample keeps its name as exposed, ``_total`` included)."""
    wanted = frozenset(keep)
    t_wall, t0 = time.time(), time.monotonic()
    with urllib.request.urlopen(URL, timeout=1800) as r:
        body = r.read()
    seconds = time.monotonic() - t0
    text = body.decode("utf-8", "replace")
    lines = text.splitlines()
    kept: list[str] = []
    families: dict[str, int] = {}
    for ln in lines:
        if not ln or ln[0] == "#":
            continue
        name = ln.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            kept.append(ln)
        fam = _HIST_SUFFIX.sub("", name)
        families[fam] = families.get(fam, 0) + 1
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families("\n".join(kept) + "\n"):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return Scrape(t_wall, seconds, len(body), len(lines), samples, families)


# ---- the agent's process --------------------------------------------------------------------


@dataclass
class Monitor:
    """Periodic scrapes and the agent's memory while the activity runs."""

    run: agents.Running
    scrapes: list[Scrape] = field(default_factory=list)
    collections: dict[float, float] = field(default_factory=dict)  # collected_at -> duration
    rss_kib: list[int] = field(default_factory=list)
    bpf_bytes: list[int] = field(default_factory=list)

    def sample(self, keep: Iterable[str] = SELF) -> Scrape:
        s = scrape(keep)
        self.note(s)
        return s

    def note(self, s: Scrape) -> None:
        self.scrapes.append(s)
        if s.collected_at:
            self.collections[s.collected_at] = s.collection_s
        pid = self.run.pid
        if pid is not None:
            self.rss_kib.append(agents.status_kib(pid, "VmRSS"))
            self.bpf_bytes.append(agents.bpf_map_memory(pid)[0])

    @property
    def last(self) -> Scrape:
        return next(s for s in reversed(self.scrapes) if s.collected_at)


# ---- mounts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One mount under test, and the directory the files go to on it."""

    index: int
    mount_point: str
    directory: Path
    version: str
    added: bool  # mounted here (and unmounted at the end)


def _base_mounts(workdir: Path) -> tuple[Mount, Mount, str]:
    """(v3 mount, v4 mount, workdir relative to the one of them it is on)."""
    nfs = nfs_mounts(read_mountinfo())
    v3 = next((m for m in nfs if (m.nfs_version or "").startswith("3")), None)
    v4 = next((m for m in nfs if (m.nfs_version or "").startswith("4")), None)
    if v3 is None or v4 is None:
        raise ScaleError("needs an NFSv3 and an NFSv4 mount of one export (the lab's /mnt/nfs3, /mnt/nfs4)")
    holder = max(
        (m for m in (v3, v4) if workdir.is_relative_to(m.mount_point)),
        key=lambda m: len(m.mount_point),
        default=None,
    )
    if holder is None:
        raise ScaleError(f"{workdir} is on neither {v3.mount_point} nor {v4.mount_point}")
    return v3, v4, str(workdir.relative_to(holder.mount_point))


def _source(m: Mount, rel: str) -> str:
    """host:/path of ``rel`` (a path below the export's root) through mount ``m``'s export."""
    host = m.server or "127.0.0.1"
    path = (m.export or "/").rstrip("/") + "/" + rel.strip("/")
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


def _sh(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise ScaleError(f"{' '.join(argv)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()}")


def _mount_all(workdir: Path, mounts: int, log: Callable[[str], None]) -> tuple[list[Target], Path | None]:
    """The mounts under test (the two base ones first) and, when the server is this machine
    (the lab), the export directory behind workdir, for a fast cleanup."""
    v3, v4, rel = _base_mounts(workdir)
    targets: list[Target] = []
    for i in range(mounts):
        workdir.joinpath(f"m{i:02d}").mkdir(parents=True, exist_ok=True)
    for i, base in enumerate((v3, v4)[:mounts]):
        mp = base.mount_point
        targets.append(Target(i, mp, Path(mp) / rel / f"m{i:02d}", base.nfs_version or "", False))
    for i in range(len(targets), mounts):
        v3_turn = i % 2 == 0
        base = v3 if v3_turn else v4
        mp = MOUNT_ROOT / f"m{i:02d}"
        mp.mkdir(parents=True, exist_ok=True)
        opts = "vers=3,nolock,nosharecache" if v3_turn else "vers=4.2,nosharecache"
        src = _source(base, f"{rel}/m{i:02d}")
        try:
            _sh("mount", "-t", "nfs", "-o", opts, src, str(mp))
        except ScaleError:
            _unmount(targets, log)
            raise
        targets.append(Target(i, str(mp), mp, "3" if v3_turn else "4.2", True))
    local = Path(v3.export or "/") / rel  # v3 names the server's own path (v4: below its pseudo-root)
    server_local = (v3.server or "") in ("127.0.0.1", "::1", "localhost") and local.joinpath("m00").is_dir()
    return targets, local if server_local else None


def _unmount(targets: list[Target], log: Callable[[str], None]) -> list[str]:
    failed = []
    for t in reversed(targets):
        if not t.added:
            continue
        p = subprocess.run(["umount", t.mount_point], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            # Busy (a worker killed in I/O): detach it so the VM can go on.
            subprocess.run(["umount", "-l", t.mount_point], capture_output=True, check=False)
            failed.append(t.mount_point)
            log(f"scale: umount {t.mount_point}: {p.stderr.strip()} (detached lazily)")
        with contextlib.suppress(OSError):
            os.rmdir(t.mount_point)
    return failed


def _devices(targets: list[Target]) -> int:
    by_mp = {m.mount_point: (m.major, m.minor) for m in nfs_mounts(read_mountinfo())}
    return len({by_mp[t.mount_point] for t in targets if t.mount_point in by_mp})


# ---- workers --------------------------------------------------------------------------------


def _plan(files: int, cgroups: int, mounts: int) -> dict[int, list[tuple[int, int]]]:
    """cgroup -> [(mount index, files)]. Each cgroup works on mount c % mounts; with fewer
    cgroups than mounts, mount m goes to cgroup m % cgroups. Files are dealt out evenly."""
    pairs = sorted({(c, c % mounts) for c in range(cgroups)} | {(m % cgroups, m) for m in range(mounts)})
    n, extra = divmod(files, len(pairs))
    plan: dict[int, list[tuple[int, int]]] = {}
    for k, (c, m) in enumerate(pairs):
        plan.setdefault(c, []).append((m, n + (1 if k < extra else 0)))
    return plan


def _worker(procs: Path, jobs: list[tuple[Path, int]], report_fd: int, cg: int, idx: list[int]) -> None:
    """In the child: join the cgroup, then create, write and read back each file."""
    procs.write_text("0\n")  # this process, before any I/O
    Path("/proc/self/comm").write_text(COMM)
    payload = bytes(range(256)) * (FILE_BYTES // 256) + b"x" * (FILE_BYTES % 256)
    for (d, n), m in zip(jobs, idx, strict=True):
        d.mkdir(exist_ok=True)
        done = 0
        for i in range(n):
            p = os.fspath(d / f"f{i:06d}")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if os.write(fd, payload) != FILE_BYTES:
                    raise OSError(f"{p}: short write")
            finally:
                os.close(fd)
            fd = os.open(p, os.O_RDONLY)
            try:
                if len(os.read(fd, 2 * FILE_BYTES)) != FILE_BYTES:
                    raise OSError(f"{p}: short read")
            finally:
                os.close(fd)
            done += 1
        os.write(report_fd, f"{cg} {m} {done}\n".encode())


@dataclass
class Activity:
    done: dict[tuple[int, int], int] = field(default_factory=dict)  # (cgroup, mount) -> files
    failed: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(self.done.values())


def _spawner(
    plan: dict[int, list[tuple[int, int]]], targets: list[Target], cgdirs: list[Path], wfd: int
) -> None:
    """In its own process (and process group): forks one worker per cgroup, PARALLEL at a
    time, and reports the ones that failed. Single-threaded, so forking is safe here."""
    queue = sorted(plan)
    running: dict[int, int] = {}
    while queue or running:
        while queue and len(running) < PARALLEL:
            c = queue.pop(0)
            jobs = [(targets[m].directory / f"cg{c:04d}", n) for m, n in plan[c]]
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    _worker(cgdirs[c] / "cgroup.procs", jobs, wfd, c, [m for m, _ in plan[c]])
                except BaseException as exc:  # reported through the exit status
                    os.write(2, f"scale: worker cg{c:04d}: {exc}\n".encode())
                    code = 1
                os._exit(code)
            running[pid] = c
        pid, status = os.wait()
        c = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            os.write(wfd, f"failed {c}\n".encode())


def _run_workers(
    plan: dict[int, list[tuple[int, int]]],
    targets: list[Target],
    cgdirs: list[Path],
    act: Activity,
    mon: Monitor,
    log: Callable[[str], None],
) -> None:
    """Runs the workers (through a spawner process, so that a slow scrape here never holds
    up the next fork) and scrapes the agent meanwhile, as Prometheus would (every 15 s), but
    idle at least three times as long as the last scrape took: under TCG a scrape at full size takes
    minutes, and back-to-back scrapes would measure the scraper, not the agent."""
    rfd, wfd = os.pipe()
    spawner = os.fork()
    if spawner == 0:
        code = 0
        try:
            os.setpgid(0, 0)
            os.close(rfd)
            _spawner(plan, targets, cgdirs, wfd)
        except BaseException as exc:
            os.write(2, f"scale: spawner: {exc}\n".encode())
            code = 1
        os._exit(code)
    os.close(wfd)
    with contextlib.suppress(OSError):
        os.setpgid(spawner, spawner)  # also here: no race with the first kill below
    os.set_blocking(rfd, False)
    buf = b""
    total = sum(n for jobs in plan.values() for _, n in jobs)
    t0 = time.monotonic()
    next_scrape = t0 + agents.SCRAPE_EVERY
    next_log = t0 + PROGRESS_EVERY

    def read_reports() -> bool:
        """False at EOF: the spawner and every worker have exited."""
        nonlocal buf
        eof = False
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            f = line.split()
            if f[0] == b"failed":
                act.failed.append(f"cg{int(f[1]):04d}")
            else:
                act.done[(int(f[0]), int(f[1]))] = int(f[2])
        return not eof

    try:
        while read_reports():
            now = time.monotonic()
            if now >= next_scrape:
                s = mon.sample()
                next_scrape = max(now + agents.SCRAPE_EVERY, time.monotonic() + 3 * s.seconds)
            if now >= next_log:
                rate = act.files / (now - t0)
                log(f"scale: {act.files}/{total} files, {rate:.0f} files/s, {len(act.failed)} workers failed")
                next_log = now + PROGRESS_EVERY
            time.sleep(0.2)
        _, status = os.waitpid(spawner, 0)
        spawner = 0
        if os.waitstatus_to_exitcode(status) != 0:
            act.failed.append("spawner")
    finally:
        if spawner:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spawner, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(spawner, 0)
        os.close(rfd)


# ---- mountstats against the agent -----------------------------------------------------------

Key = tuple[str, str]  # (mount point, "OP" or "bytes:NAME")


def _ms_values(ms: dict[str, NfsMountStats], mps: list[str]) -> dict[Key, int]:
    out: dict[Key, int] = {}
    for mp in mps:
        m = ms.get(mp)
        if m is None:
            continue
        for op, s in m.ops.items():
            out[(mp, op)] = s.ops
        for name, _, _ in BYTES:
            out[(mp, f"bytes:{name}")] = m.bytes.get(name, 0)
    return out


def _agent_values(s: Scrape, mps: list[str]) -> dict[Key, int]:
    want = set(mps)
    out: dict[Key, int] = {}
    for lb, v in s.samples.get("bpfnfs_rpc_operations_total", ()):
        if lb.get("mount") in want:
            k = (lb["mount"], lb["op"])
            out[k] = out.get(k, 0) + int(v)
    for name, series, io in BYTES:
        for lb, v in s.samples.get(series, ()):
            if lb.get("mount") in want and (not io or lb.get("io") == io):
                k = (lb["mount"], f"bytes:{name}")
                out[k] = out.get(k, 0) + int(v)
    return out


@dataclass
class Reading:
    """Per key, (agent, mountstats) from a collection that no change of mountstats straddled."""

    stable: dict[Key, tuple[int, int]] = field(default_factory=dict)
    # Keys never stable: (mountstats before, agent, mountstats after) of the last reading.
    moving: dict[Key, tuple[int, int, int]] = field(default_factory=dict)
    seen: set[Key] = field(default_factory=set)
    attempts: int = 0
    last: Scrape | None = None

    def triple(self, key: Key) -> tuple[int, int, int]:
        """(mountstats before, agent, mountstats after); zeros for a key not seen at all."""
        if key in self.stable:
            ours, kernel = self.stable[key]
            return kernel, ours, kernel
        return self.moving.get(key, (0, 0, 0))


def _stable_reading(mon: Monitor, mps: list[str], keep: Iterable[str], tries: int = 8) -> Reading:
    """mountstats just before a collection begins, the agent's figures from that collection,
    mountstats just after it ended. A key whose two mountstats values agree is read exactly.
    Retried (up to ``tries``) until every key was read so."""
    rd = Reading()
    margin = 0.3
    for _ in range(tries):
        rd.attempts += 1
        ref = mon.last
        d_est = 1.5 * ref.collection_s
        start = ref.collection_started
        k = math.ceil((time.time() + margin + 0.5 - start) / INTERVAL)
        nxt = start + k * INTERVAL
        time.sleep(max(0.0, nxt - margin - time.time()))
        text_a = MOUNTSTATS.read_text()  # parsed later: only the read must precede the collection
        t1 = time.time()
        time.sleep(max(0.0, nxt + d_est + margin - time.time()))
        t2 = time.time()
        text_b = MOUNTSTATS.read_text()
        s = scrape(keep)
        a = _ms_values(parse_mountstats(text_a), mps)
        b = _ms_values(parse_mountstats(text_b), mps)
        mon.note(s)
        if not (t1 < s.collection_started and s.collected_at < t2):
            margin = min(4.0, margin * 2)  # the collection drifted out of the window: widen it
            continue
        rd.last = s
        ours = _agent_values(s, mps)
        keys = set(a) | set(b) | set(ours)
        rd.seen |= keys
        for key in keys - set(rd.stable):
            lo, hi, v = a.get(key, 0), b.get(key, 0), ours.get(key, 0)
            if lo == hi:
                rd.stable[key] = (v, hi)
                rd.moving.pop(key, None)
            else:
                rd.moving[key] = (lo, v, hi)
        if all(k in rd.stable or k[1] in LEASE_OPS for k in rd.seen):
            break
    if rd.last is None:
        raise ScaleError(f"no collection fell between two mountstats reads in {tries} tries")
    return rd


def _compare(before: Reading, after: Reading, mps: list[str]) -> dict[str, Any]:
    problems: list[dict[str, Any]] = []
    unsettled: list[str] = []
    exact_mounts = lease_bounded = 0
    for mp in mps:
        ok = True
        for key in sorted(k for k in before.seen | after.seen if k[0] == mp):
            s0, s1 = before.stable.get(key), after.stable.get(key)
            if s0 is not None and s1 is not None:
                ours, kernel = s1[0] - s0[0], s1[1] - s0[1]
                if ours != kernel:
                    problems.append({"mount": mp, "what": key[1], "bpfnfs": ours, "mountstats": kernel})
                    ok = False
                continue
            # Moving in every reading: the delta is only known within bounds. Expected of the
            # v4 lease ops (SEQUENCE every ~2/3 of the 10 s lease, shared by all v4 mounts), which
            # are then checked against the bounds only; any other op is not exact.
            lo0, v0, hi0 = before.triple(key)
            lo1, v1, hi1 = after.triple(key)
            ours = v1 - v0
            if not lo1 - hi0 <= ours <= hi1 - lo0:
                problems.append(
                    {"mount": mp, "what": key[1], "bpfnfs": ours, "mountstats": [lo1 - hi0, hi1 - lo0]}
                )
                ok = False
            elif key[1] in LEASE_OPS:
                lease_bounded += 1
            else:
                unsettled.append(f"{mp} {key[1]}")
                ok = False
        exact_mounts += ok
    return {
        "mounts_exact": exact_mounts,
        "mounts_total": len(mps),
        "mismatches": problems[:20],
        "mismatch_count": len(problems),
        "unsettled": unsettled[:20],  # never read between two equal mountstats reads, within bounds
        "lease_ops_within_bounds": lease_bounded,  # (mount, lease op) pairs checked only so
        "readings": [before.attempts, after.attempts],
    }


# ---- per (mount, cgroup): what each worker did ----------------------------------------------


def _attribution(
    s: Scrape, act: Activity, targets: list[Target], cg_label: Callable[[int], str]
) -> dict[str, Any]:
    got: dict[tuple[str, str], dict[str, float]] = {}

    def add(lb: dict[str, str], what: str, v: float) -> None:
        if lb.get("comm") != COMM:
            return
        d = got.setdefault((lb.get("mount", ""), lb.get("cgroup", "")), {})
        d[what] = d.get(what, 0.0) + v

    for lb, v in s.samples.get("bpfnfs_process_operations_total", ()):
        if lb.get("op") in ("read", "write"):
            add(lb, f"{lb['op']}_ops", v)
    for name, what in zip(PROCESS[1:], ("read_bytes", "write_bytes", "server_write_bytes"), strict=True):
        for lb, v in s.samples.get(name, ()):
            add(lb, what, v)
    checked = exact = 0
    problems: list[dict[str, Any]] = []
    for (c, m), n in sorted(act.done.items()):
        key = (targets[m].mount_point, cg_label(c))
        if key not in got:
            continue  # folded into _other (over the identity budget): counted apart
        checked += 1
        want = {
            "read_ops": n,
            "write_ops": n,
            "read_bytes": n * FILE_BYTES,
            "write_bytes": n * FILE_BYTES,
            "server_write_bytes": n * FILE_BYTES,
        }
        have = {k: int(got[key].get(k, 0)) for k in want}
        if have == want:
            exact += 1
        else:
            problems.append({"mount": key[0], "cgroup": key[1], "bpfnfs": have, "expected": want})
    return {
        "identities_checked": checked,
        "identities_exact": exact,
        "identities_missing": len(act.done) - checked,
        "mismatches": problems[:10],
    }


# ---- the section ----------------------------------------------------------------------------


def _losses(s: Scrape) -> dict[str, int]:
    out: dict[str, int] = {}
    for short, name, label in LOSSES:
        if label:
            for lv, v in sorted(s.labelled(name, label).items()):
                out[f"{short}/{lv}"] = int(v)
        else:
            out[short] = int(s.get(name))
    return out


def _wait_ready(mon: Monitor, mps: list[str], timeout: float = 300.0) -> Scrape:
    """Until a collection has seen every mount under test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = mon.sample()
        except OSError:
            s = None
        if s is not None and s.collected_at and set(mps) <= s.mounts():
            return s
        if time.monotonic() > deadline:
            seen = len(set(mps) & s.mounts()) if s else 0
            raise ScaleError(f"the agent saw {seen} of {len(mps)} mounts within {timeout:.0f} s")
        time.sleep(0.5)


def run_scale(
    workdir: Path,
    logdir: Path,
    *,
    files: int,
    cgroups: int,
    mounts: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The scale section (see the module's docstring); returns its figures, JSON-serialisable."""
    if files < 1 or cgroups < 1 or mounts < 2:
        raise ScaleError(
            f"scale: need files >= 1, cgroups >= 1, mounts >= 2 (got {files}, {cgroups}, {mounts})"
        )
    phases: dict[str, float] = {}
    t = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        phases[name] = round(now - t, 1)
        t = now

    cg_root = cgroup2_root() or Path("/sys/fs/cgroup")
    cg_base = cg_root / CGROUP_DIR
    cgdirs = [cg_base / f"cg{c:04d}" for c in range(cgroups)]

    def cg_label(c: int) -> str:
        return f"/{CGROUP_DIR}/cg{c:04d}"

    targets: list[Target] = []
    local: Path | None = None
    run: agents.Running | None = None
    act = Activity()
    result: dict[str, Any] = {"asked": {"files": files, "cgroups": cgroups, "mounts": mounts}}
    cost: agents.Cost | None = None
    try:
        log(f"scale: mounting {mounts} NFS mounts ({mounts - 2} new)")
        targets, local = _mount_all(workdir, mounts, log)
        mps = [tg.mount_point for tg in targets]
        devices = _devices(targets)
        if devices != mounts:
            raise ScaleError(f"{mounts} mounts share {devices} devices: nosharecache did not take")
        phase("mount_s")

        for d in [cg_base, *cgdirs]:
            d.mkdir(exist_ok=True)
        phase("cgroups_s")

        spec = agents.Spec(
            "bpfnfs-scale",
            "bpfnfs metrics at scale",
            agents.bpfnfs(
                "run", "--listen", f"127.0.0.1:{agents.PORT}", "--quiet", "--interval", f"{INTERVAL:g}"
            ),
            ready="attached ",
        )
        run = agents.start(spec, logdir / "scale-agent.log")
        t_attached = time.time()
        mon = Monitor(run)
        phase("agent_attach_s")
        _wait_ready(mon, mps)
        assert run.pid is not None
        rss_ready = agents.status_kib(run.pid, "VmRSS")
        phase("agent_ready_s")
        before = _stable_reading(mon, mps, COMPARE)
        phase("baseline_s")
        log(
            f"scale: agent ready on {len(mps)} mounts ({devices} devices); {files} files in {cgroups} cgroups"
        )

        cpu0 = run.cpu_seconds()
        plan = _plan(files, cgroups, mounts)
        _run_workers(plan, targets, cgdirs, act, mon, log)
        cpu_activity = run.cpu_seconds() - cpu0
        phase("activity_s")
        rate = act.files / phases["activity_s"] if phases["activity_s"] else 0.0
        log(f"scale: {act.files} files in {phases['activity_s']:.0f} s ({rate:.1f} files/s)")
        if act.failed:
            log(f"scale: {len(act.failed)} workers failed: {', '.join(act.failed[:5])}")

        time.sleep(2 * INTERVAL)  # completions (writeback, v4 CLOSE) and two collections
        after = _stable_reading(mon, mps, COMPARE)
        phase("settle_compare_s")
        final = after.last
        assert final is not None
        rpc = _compare(before, after, mps)
        attribution = _attribution(final, act, targets, cg_label)

        pid = run.pid
        assert pid is not None
        rss_now = agents.status_kib(pid, "VmRSS")
        bpf_bytes, bpf_maps = agents.bpf_map_memory(pid)
        cost = run.stop()
        run = None
        # The first collection attaches the programs too (its duration includes the attach):
        # it is reported apart.
        steady = {at: d for at, d in mon.collections.items() if at - d >= t_attached}
        first = [d for at, d in mon.collections.items() if at - d < t_attached]
        collections = sorted(steady.values())
        slowest = sorted(steady.items(), key=lambda kv: -kv[1])[:3]
        scrapes = mon.scrapes
        losses = _losses(final)
        lost = {k: v for k, v in losses.items() if v}
        identities = {k: int(v) for k, v in sorted(final.labelled("bpfnfs_identities", "state").items())}
        result.update(
            {
                "reached": {
                    "files": act.files,
                    "cgroups": len({c for c, _ in act.done}),
                    "mounts": len(set(mps) & final.mounts()),
                    "devices": devices,
                    "workers_failed": len(act.failed),
                },
                "interval_s": INTERVAL,
                "files_per_s": round(rate, 1),
                "memory_kib": {
                    "peak_rss": cost.peak_rss_kib,
                    "rss_ready": rss_ready,
                    "rss_end": rss_now,
                    "rss_max_sampled": max(mon.rss_kib, default=0),
                    "bpf_maps": bpf_bytes // 1024,
                    "bpf_maps_max_sampled": max(mon.bpf_bytes, default=0) // 1024,
                    "bpf_map_count": bpf_maps,
                },
                "agent_cpu_s": {"activity": round(cpu_activity, 2), "total": round(cost.cpu_s, 2)},
                "collection_s": {
                    "with_attach": round(max(first), 3) if first else None,
                    "n": len(collections),
                    "median": round(statistics.median(collections), 3) if collections else None,
                    "max": round(max(collections), 3) if collections else None,
                    # [seconds after attach when it ended, duration]
                    "slowest": [[round(at - t_attached, 1), round(d, 3)] for at, d in slowest],
                },
                "scrape": {
                    "n": len(scrapes),
                    "bytes_max": max(s.size for s in scrapes),
                    "lines_max": max(s.lines for s in scrapes),
                    "seconds_median": round(statistics.median(s.seconds for s in scrapes), 3),
                    "seconds_max": round(max(s.seconds for s in scrapes), 3),
                },
                "files_tracked": int(final.get("bpfnfs_files_tracked")),
                "files_capacity": int(final.get("bpfnfs_files_capacity")),
                "identities": identities,
                "process_series": len(final.samples.get("bpfnfs_process_operations_total", ())),
                "scrape_lines_by_family": dict(sorted(final.families.items(), key=lambda kv: -kv[1])[:8]),
                "losses": losses,
                "lost": lost,
                "rpc_vs_mountstats": rpc,
                "attribution": attribution,
                "phases_s": phases,
            }
        )
        result["ok"] = (
            not lost
            and not act.failed
            and act.files == files
            and rpc["mounts_exact"] == rpc["mounts_total"]
            and attribution["identities_exact"] == attribution["identities_checked"]
        )
        log(
            f"scale: rss peak {cost.peak_rss_kib / 1024:.1f} MiB, bpf maps {bpf_bytes / 2**20:.1f} MiB, "
            f"collection max {result['collection_s']['max']} s, "
            f"scrape max {result['scrape']['seconds_max']} s "
            f"({result['scrape']['bytes_max'] / 1024:.0f} KiB), lost {lost or 'nothing'}, "
            f"mounts exact {rpc['mounts_exact']}/{rpc['mounts_total']}, identities exact "
            f"{attribution['identities_exact']}/{attribution['identities_checked']}, ok {result['ok']}"
        )
        return result
    finally:
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for d in reversed(cgdirs):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log(f"scale: rmdir {d}: {exc}")
        with contextlib.suppress(OSError):
            cg_base.rmdir()
        busy = _unmount(targets, log)
        if local is not None and not busy:
            shutil.rmtree(local, ignore_errors=True)  # on the server's tmpfs: no RPC per file
        t_clean = time.monotonic() - t
        phases["cleanup_s"] = round(t_clean, 1)
