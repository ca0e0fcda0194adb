"""`bpfnfs top`: each view's text from synthetic reports, the keys, and the loop on a pty."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console, RenderableType

from bpfnfs.cli import top as T
from bpfnfs.collect import records as R
from bpfnfs.collect.histogram import Log2Hist
from bpfnfs.collect.snapshot import (
    ClientInfo,
    ErrKey,
    FileStats,
    IoStats,
    OwnerKey,
    OwnerStats,
    RpcOpStats,
    Snapshot,
    VfsKey,
    VfsStats,
)
from bpfnfs.collect.views import Report, build_report, diff_report
from bpfnfs.config import Config
from bpfnfs.enrich.identity import IdentityResolver
from bpfnfs.enrich.mountinfo import Mount
from bpfnfs.enrich.mounts import NfsMount

DEV_A, DEV_B = 55, 56


def _nfs(mp: str, minor: int, clid: int) -> NfsMount:
    opts = {"vers": "3", "addr": "10.0.0.1"}
    return NfsMount(Mount(minor, 0, 0, minor, "/", mp, "rw", (), "nfs", "srv:/export", opts), clid=clid)


MOUNTS = [_nfs("/mnt/a", DEV_A, 7), _nfs("/mnt/b", DEV_B, 8)]


def _hist(slot: int, n: int, ns: int) -> Log2Hist:
    counts = [0] * 32
    counts[slot] = n
    return Log2Hist(counts, ns)


def _rpc(ops: int, nbytes: int, exe_ns: int, slot: int, ntrans: int = 0, errors: int = 0) -> RpcOpStats:
    return RpcOpStats(
        ops=ops,
        ntrans=ntrans or ops,
        bytes_sent=nbytes,
        queue_ns=ops * 1000,
        rtt_ns=exe_ns // 2,
        execute_ns=exe_ns,
        errors=errors,
        execute=_hist(slot, ops, exe_ns),
    )


def _vfs(calls: int, nbytes: int, lat_ns: int, slot: int, errors: int = 0) -> VfsStats:
    return VfsStats(calls, errors, nbytes, lat_ns, _hist(slot, calls, lat_ns))


def _base(taken: float) -> Snapshot:
    s = Snapshot(taken=taken)
    s.clients = {c: ClientInfo(c, c, 3, "nfs", True) for c in (7, 8)}
    # Cumulative figures before the interval: every test diffs them away.
    s.rpc[(7, 3, "WRITE")] = _rpc(10, 10 << 10, 10_000_000, 10)
    s.vfs[VfsKey(DEV_A, "write", 100, 11, "fio")] = _vfs(10, 10 << 10, 1_000_000, 9)
    s.vfs[VfsKey(DEV_A, "open", 300, 33, "idle")] = _vfs(5, 0, 5_000, 2)
    s.owners[OwnerKey(DEV_A, 100, 11, "fio")] = OwnerStats(0, 0, 1, 4096, 0, 0)
    s.files[(DEV_A, 1)] = FileStats(writes=10, write_bytes=10 << 10, latency_ns=1_000_000)
    s.files[(DEV_A, 9)] = FileStats(other_ops=5, latency_ns=5_000)
    s.io[DEV_A] = IoStats(write_calls=10, write_bytes=10 << 10)
    return s


def _reports() -> tuple[Report, Report]:
    """Two snapshots 2 s apart; in between, on /mnt/a only:
    WRITE 200 ops, 400 kB, avg exe 5 ms; GETATTR 400 ops, 40 kB, avg 0.5 ms; READ 100 ops, 1000 kB,
    avg 20 ms, 10 retransmissions, 2 errors. fio wrote 400 kB in 100 calls (avg 1 ms), cat read
    1000 kB in 10 calls (avg 30 ms, 1 error), 'idle' did nothing."""
    prev = _base(10.0)
    cur = _base(12.0)
    cur.rpc[(7, 3, "WRITE")] = prev.rpc[(7, 3, "WRITE")] + _rpc(200, 400 << 10, 200 * 5_000_000, 12)
    cur.rpc[(7, 3, "GETATTR")] = _rpc(400, 40 << 10, 400 * 500_000, 8)
    cur.rpc[(7, 3, "READ")] = _rpc(100, 1000 << 10, 100 * 20_000_000, 14, ntrans=110, errors=2)
    k = VfsKey(DEV_A, "write", 100, 11, "fio")
    cur.vfs[k] = prev.vfs[k] + _vfs(100, 400 << 10, 100 * 1_000_000, 9)
    cur.vfs[VfsKey(DEV_A, "read", 101, 22, "cat")] = _vfs(10, 1000 << 10, 10 * 30_000_000, 14, errors=1)
    ok = OwnerKey(DEV_A, 100, 11, "fio")
    cur.owners[ok] = prev.owners[ok] + OwnerStats(0, 0, 100, 400 << 10, 1, 0)
    cur.files[(DEV_A, 1)] = prev.files[(DEV_A, 1)] + FileStats(
        writes=100, write_bytes=400 << 10, latency_ns=100_000_000, wire_write_bytes=400 << 10
    )
    cur.files[(DEV_A, 2)] = FileStats(reads=10, read_bytes=1000 << 10, errors=1, latency_ns=300_000_000)
    cur.io[DEV_A] = prev.io[DEV_A] + IoStats(write_calls=100, write_bytes=400 << 10)
    cur.errors[ErrKey(R.ERR_VFS, DEV_A, 0, "", R.VFS_OPS.index("read"), 5)] = 1  # EIO
    cur.counters = {"ringbuf_drops": 3, "rpc_map_full": 0, "file_evictions": 4}
    paths = {(DEV_A, 1): ("/dir/big", False), (DEV_A, 2): ("/r", False)}
    return (
        build_report(prev, MOUNTS, paths=paths),
        build_report(cur, MOUNTS, paths=paths, probe_failures={"fe_nfs_x": "not in BTF"}),
    )


def _text(r: RenderableType, height: int | None = None) -> str:
    c = Console(record=True, width=160, height=height, color_system=None)
    c.print(r)
    return c.export_text()


def _view(view: str, sort: str = "ops", **kw: Any) -> str:
    prev, cur = _reports()
    return _text(T.render(view, sort, cur, diff_report(cur, prev), 2.0, tier="btf", **kw))


def _line(text: str, start: str) -> list[str]:
    return next(ln.split() for ln in text.splitlines() if ln.strip().startswith(start))


def _order(text: str, names: list[str]) -> list[str]:
    """names as they appear top to bottom in the rendered text."""
    pos = {n: text.index(n) for n in names}
    return sorted(names, key=pos.__getitem__)


# ---- keys ----------------------------------------------------------------------------------------


def test_keys_switch_view_and_cycle_sort() -> None:
    s = T.TopState("mount", "ops")
    for key, view in (("f", "file"), ("p", "process"), ("c", "cgroup"), ("o", "op"), ("m", "mount")):
        s = T.handle_key(s, key)
        assert s.view == view and s.sort == "ops"
    sorts = []
    for _ in range(3):
        s = T.handle_key(s, "s")
        sorts.append(s.sort)
    assert sorts == ["bytes", "latency", "ops"]
    assert T.handle_key(s, "x") == s and T.handle_key(s, " ") == s
    assert T.handle_key(s, "F").view == "file"  # caps lock
    assert T.handle_key(s, "q").quit and not s.quit


def test_escape_sequences_are_not_keys() -> None:
    assert T.split_keys(b"fs") == "fs"
    assert T.split_keys(b"\x1b[C") == ""  # arrow right ends in C, which is not a cgroup request
    assert T.split_keys(b"p\x1b[D") == "p"


# ---- views ---------------------------------------------------------------------------------------


def test_header_names_tier_interval_view_sort_and_keys() -> None:
    text = _view("file", "latency", interval=0.5)
    head = text.splitlines()[0]
    assert head.startswith("bpfnfs top") and "tier btf" in head and "interval 0.5 s" in head
    assert "view files" in head and "sort latency" in head
    keys = text.splitlines()[1]
    for k in ("m mounts", "o ops", "p processes", "c cgroups", "k pods", "f files", "s sort", "q quit"):
        assert k in keys


def test_mount_view_rates_latency_and_idle_mount() -> None:
    text = _view("mount")
    # ops/s, kB/s, avg queue, avg RTT, avg exe, p99 exe (bucket 14: <= 32.768 ms), retrans, errors
    assert _line(text, "READ") == ["READ", "50.0", "500.0", "0.001", "10.000", "20.000", "32.768", "10", "2"]
    assert _line(text, "WRITE")[:3] == ["WRITE", "100.0", "200.0"]
    assert _line(text, "WRITE")[5:7] == ["5.000", "8.192"]
    assert "app read 0.0 write 200.0 kB/s" in text
    assert "errors: vfs/read EIO:1" in text
    b = text[text.index("/mnt/b") :]
    assert "no activity" in b and "WRITE" not in b  # listed, but without rows


def test_mount_view_sort_orders() -> None:
    ops = ["WRITE", "GETATTR", "READ"]
    assert _order(_view("mount", "ops"), ops) == ["GETATTR", "WRITE", "READ"]
    assert _order(_view("mount", "bytes"), ops) == ["READ", "WRITE", "GETATTR"]
    assert _order(_view("mount", "latency"), ops) == ["READ", "WRITE", "GETATTR"]


def test_op_view_syscall_side() -> None:
    text = _view("op")
    # calls/s, kB/s, avg ms, p99 ms (bucket upper bound), errors with their names
    assert _line(text, "write") == ["write", "50.0", "200.0", "1.000", "1.024", "0"]
    assert _line(text, "read") == ["read", "5.0", "500.0", "30.000", "32.768", "1", "EIO:1"]
    assert "open" not in text  # did not move in the interval
    assert _order(text, ["write", "read"]) == ["write", "read"]
    assert _order(_view("op", "bytes"), ["write", "read"]) == ["read", "write"]


def test_process_view_rows_order_and_filter() -> None:
    text = _view("process")
    assert _line(text, "fio [100]") == ["fio", "[100]", "50.0", "0.0", "200.0", "0.0", "200.0", "1.000", "0"]
    assert _line(text, "cat [101]") == ["cat", "[101]", "5.0", "500.0", "0.0", "0.0", "0.0", "30.000", "1"]
    assert "idle" not in text
    assert _order(text, ["fio [", "cat ["]) == ["fio [", "cat ["]
    assert _order(_view("process", "bytes"), ["fio [", "cat ["]) == ["cat [", "fio ["]
    assert _order(_view("process", "latency"), ["fio [", "cat ["]) == ["cat [", "fio ["]
    only_cat = _view("process", rows_filter=T.RowFilter(comm="cat"))
    assert "cat [101]" in only_cat and "fio [" not in only_cat


def test_cgroup_view_names_paths() -> None:
    text = _view("cgroup", identity=IdentityResolver({11: "/pod-a"}.get).of)
    assert _line(text, "/pod-a")[:2] == ["/pod-a", "50.0"]
    assert "cgroup 22 (removed)" in text
    kept = _view(
        "cgroup",
        identity=IdentityResolver({11: "/pod-a"}.get).of,
        rows_filter=T.RowFilter(cgroup_ids=frozenset({22})),
    )
    assert "/pod-a" not in kept and "cgroup 22" in kept


def test_file_view_paths_top_and_sort() -> None:
    text = _view("file")
    assert _line(text, "/mnt/a/dir/big") == [
        "/mnt/a/dir/big", "50.0", "0.0", "200.0", "0.0", "200.0", "1.000", "0"
    ]  # fmt: skip
    assert _line(text, "/mnt/a/r")[:3] == ["/mnt/a/r", "5.0", "500.0"]
    assert "fileid 9" not in text  # idle in the interval
    assert _order(text, ["/mnt/a/dir/big", "/mnt/a/r"]) == ["/mnt/a/dir/big", "/mnt/a/r"]
    assert _order(_view("file", "bytes"), ["/mnt/a/dir/big", "/mnt/a/r"]) == ["/mnt/a/r", "/mnt/a/dir/big"]
    one = _view("file", "latency", top=1)
    assert "/mnt/a/r" in one and "/mnt/a/dir/big" not in one and "… 1 more" in one


def test_footer_shows_losses_and_probes_not_attached() -> None:
    text = _view("mount")
    lost = next(ln for ln in text.splitlines() if ln.startswith("lost:"))
    assert "ringbuf_drops 3" in lost and "rpc_map_full" not in lost
    assert "file LRU evictions 4" in lost
    assert "1 probes not attached: fe_nfs_x" in text
    _prev, cur = _reports()
    cur.snapshot.counters = {}
    cur.probe_failures = {}
    quiet = _text(T.render("mount", "ops", cur, cur.mounts, 1.0))
    assert "lost:" not in quiet and "probes not attached" not in quiet


def test_waiting_and_no_mounts() -> None:
    assert "waiting for NFS modules" in _text(T.render("mount", "ops", None, [], 1.0))
    _prev, cur = _reports()
    assert "no NFS mounts match the filters" in _text(T.render("op", "ops", cur, [], 1.0, filtered=True))
    assert "no NFS mounts yet" in _text(T.render("op", "ops", cur, [], 1.0))


def test_screen_keeps_header_and_footer_when_the_body_overflows() -> None:
    prev, cur = _reports()
    for i in range(100, 160):
        cur.snapshot.files[(DEV_A, i)] = FileStats(reads=1)
    cur = build_report(cur.snapshot, MOUNTS, probe_failures=cur.probe_failures)
    frame = T.render("file", "ops", cur, diff_report(cur, prev), 2.0, top=100, screen=True)
    lines = _text(frame, height=20).splitlines()
    assert len(lines) == 20
    assert lines[0].startswith("bpfnfs top") and "probes not attached" in lines[-1]


def test_mount_filters() -> None:
    _prev, cur = _reports()
    got = T.select_mounts(Config(filter={"mount": "/mnt/b"}), cur.mounts)
    assert [m.mount_point for m in got] == ["/mnt/b"]
    assert T.select_mounts(Config(filter={"server": "other"}), cur.mounts) == []
    assert len(T.select_mounts(Config(filter={"server": "10.0.0.1"}), cur.mounts)) == 2


# ---- the loop ------------------------------------------------------------------------------------


def test_no_terminal_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    made: list[Config] = []
    assert T.run_top(Config(), lambda cfg: made.append(cfg)) == 2  # type: ignore[arg-type,func-returns-value]
    assert "bpfnfs top needs a terminal" in capsys.readouterr().err
    assert made == []


@dataclass
class _Cgroups:
    def path(self, cg: int) -> str | None:
        return None


def _growing(i: int) -> Report:
    """The i-th report of a steady writer: activity in every interval."""
    s = _base(10.0 + i)
    s.rpc[(7, 3, "WRITE")] = s.rpc[(7, 3, "WRITE")] + _rpc(100 * i, 100 * i << 10, i * 10**8, 12)
    s.files[(DEV_A, 1)] = s.files[(DEV_A, 1)] + FileStats(writes=100 * i, write_bytes=100 * i << 10)
    return build_report(s, MOUNTS, paths={(DEV_A, 1): ("/dir/big", False)})


@dataclass
class FakeAgent:
    cfg: Config
    tier: str = "btf"
    attached_at: float = 9.0
    cgroups: _Cgroups = field(default_factory=_Cgroups)
    identity: IdentityResolver = field(default_factory=lambda: IdentityResolver(lambda _cg: None))
    cgroup_filter_ids: set[int] = field(default_factory=set)
    closed: bool = False
    collects: int = 0

    def preflight(self) -> None:
        print("bpfnfs: preflight message", file=sys.stderr)

    def collect(self) -> Report | None:
        self.collects += 1
        return _growing(self.collects) if self.collects > 1 else None  # first: modules not loaded

    def close(self) -> None:
        self.closed = True


@dataclass
class PtyRun:
    rc: int
    agent: FakeAgent
    failures: list[str]
    screen: bytes
    attrs_restored: bool
    seconds: float  # in run_top


def _run_on_pty(monkeypatch: pytest.MonkeyPatch, script: Callable[[Callable[..., None]], None]) -> PtyRun:
    """run_top on a pseudo-terminal; `script(press)` drives it from another thread, where
    press(key, *texts) types key and waits for each text on the screen. q ends it."""
    # rich sizes the screen from fds 0-2 (pytest's here) or these: a narrow terminal, on purpose.
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "30")
    master, slave = os.openpty()
    tin = os.fdopen(slave, "r", closefd=False)
    tout = os.fdopen(os.dup(slave), "w")
    monkeypatch.setattr(sys, "stdin", tin)
    monkeypatch.setattr(sys, "stdout", tout)
    before = termios.tcgetattr(slave)
    agents: list[FakeAgent] = []
    seen = bytearray()
    failures: list[str] = []

    def factory(cfg: Config) -> FakeAgent:
        agents.append(FakeAgent(cfg))
        return agents[-1]

    def reader() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                seen.extend(chunk)

    def press(key: bytes, *want: bytes) -> None:
        if key:
            os.write(master, key)
        for w in want:
            end = time.monotonic() + 10
            while w not in seen and time.monotonic() < end:
                time.sleep(0.02)
            if w not in seen:
                failures.append(f"after {key!r}: no {w!r} on screen")

    def driver() -> None:
        try:
            script(press)
        finally:
            os.write(master, b"q")

    threads = [threading.Thread(target=f, daemon=True) for f in (driver, reader)]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        rc = T.run_top(Config(collection={"interval": 0.2}), factory)
        seconds = time.monotonic() - t0
        restored = termios.tcgetattr(slave) == before
    finally:
        # Driver first (it writes to master until its end), then the slave side, which
        # ends the reader's read; only then may the master fd number be reused.
        threads[0].join(30)
        tin.close()
        tout.close()
        os.close(slave)
        threads[1].join(5)
        os.close(master)
    return PtyRun(rc, agents[0], failures, bytes(seen), restored, seconds)


def test_loop_on_a_pty(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(press: Callable[..., None]) -> None:
        press(b"", b"waiting for NFS modules", b"WRITE")
        press(b"f", b"view files", b"/mnt/a/dir/big")
        press(b"s", b"sort bytes")

    r = _run_on_pty(monkeypatch, script)
    assert not r.failures, (r.failures, r.screen[-3000:])
    assert r.rc == 0
    assert r.attrs_restored  # cbreak mode undone
    assert r.agent.closed and r.agent.collects >= 2  # "waiting", then a report
    assert r.agent.cfg.collection.per_pid  # per-process keys whatever the start view
    assert r.screen.endswith(b"\x1b[?1049l")  # back from the alternate screen


def test_sigterm_quits_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = signal.getsignal(signal.SIGTERM)

    def script(press: Callable[..., None]) -> None:
        press(b"", b"WRITE")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(3)  # the q that follows must not be what ends it

    r = _run_on_pty(monkeypatch, script)
    assert r.seconds < 2.5 and r.rc == 0 and r.agent.closed and r.attrs_restored
    assert signal.getsignal(signal.SIGTERM) == handler
