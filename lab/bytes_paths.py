"""Guest side: every user-visible path that moves mountstats' six "bytes:" counters.

Runs inside a lab VM on one NFS mount directory. Each step exercises one path,
small enough for TCG (a few MiB), and returns what it knows it moved at the
syscall side. lab/check.py runs ``run_all`` inside its measured window, where
mountstats itself is the oracle for bpfnfs's six counters; the app figures
here are a secondary check.

    python3 -m lab.bytes_paths --out DIR [--mount /mnt/nfs3 ...]   # in a guest: DIR/bytes_paths.json
    python3 -m lab.bytes_paths --table FILE...                      # anywhere: the per-kernel table

The steps, in order (all under one work directory on the mount, removed at the end):

- ``write_sources``: the source tree (48 files of 1-256 KiB in three
  directories) and a 2 MiB blob, written with write(2), then sync.
- ``cp_tree``: drop caches, ``cp -r`` of the tree to another directory of the
  same mount, sync. coreutils 9 tries FICLONE, then copy_file_range(2). On
  NFSv3 the kernel serves that with splice (normal read and write bytes, like
  read/write would); on NFSv4.2 it is one server-side COPY per file that moves
  no client byte counter at all (the one CLONE the server refuses makes the
  client stop trying CLONE on that mount).
- ``tar_tree``: drop caches, ``tar c | tar x`` of the tree into a third
  directory (read(2) and write(2)), sync.
- ``sendfile``: drop caches, sendfile(2) of the blob into a file in /tmp.
- ``splice``: drop caches, splice(2) of the blob into a pipe this process drains.
- ``mmap_read``: drop caches, mmap the blob and touch every page.
- ``mmap_write``: a new file, ftruncate to 1 MiB and a bit, MAP_SHARED, write
  every page, msync, munmap. The write faults first READ each page back from
  the server (zeros: the file is now that long), so serverreadbytes moves too.
- ``direct_read_eof``: two O_DIRECT preads of 64 KiB, one straddling EOF (it
  returns the blob's 1234-byte tail), one past EOF (returns 0).
- ``sendfile_direct``: sendfile(2) of the blob opened O_DIRECT, into /tmp.
- ``io_uring_buffered``, ``io_uring_direct``: fio with io_uring, a buffered
  write (end_fsync) then a read of the file, its cache invalidated by fio
  (posix_fadvise DONTNEED); an O_DIRECT write then read.
- ``libaio_direct``: fio with libaio, O_DIRECT, iodepth 8, write then read.

App figures. ``app_read_bytes``/``app_write_bytes`` are the bytes the step moved
through read- and write-like calls that mountstats counts (normal*bytes, or
direct*bytes when ``direct``), and ``expected()`` turns them into exact
per-counter deltas. They are given only where they are exact on every lab
kernel (5.10, 6.1, 6.12, 7.3):

- write_sources, tar_tree, sendfile, splice, the fio steps: the sizes the step
  wrote, or the sums of what sendfile/splice returned, or fio's io_bytes.
  (splice and sendfile count as normal reads everywhere: through nfs_file_read
  before 6.5, through nfs_file_splice_read from 6.5.)
- mmap_read, mmap_write: zero. Faults and writeback move serverreadbytes and
  serverwritebytes only; no read(2)/write(2) is issued.
- cp_tree: None. cp's copy_file_range is no read or write the step can count:
  whether it moves client bytes depends on the NFS version (a server-side COPY
  on 4.2), on cp's own choices (clone first, then copy_file_range, then
  read/write in older coreutils) and on the server's support for COPY.
- direct_read_eof, sendfile_direct: read side None. nfs_file_direct_read adds
  what each call *asked for* to directreadbytes on entry, before EOF is known,
  so the bytes returned undercount it: direct_read_eof moves 128 KiB for 1234
  bytes returned, and sendfile_direct moves 2 MiB + 3 x 64 KiB for the blob
  (each splice chunk asks for a full pipe, and the chunks at and past EOF are
  asked for too, their number set by splice's internal loop).

Server bytes (serverreadbytes/serverwritebytes) are never predicted: they
depend on readahead, on what is cached and on the pages a partial write
reads back first.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bpfnfs.enrich.mountstats import BYTES_NAMES, NfsMountStats, parse_mountstats

MOUNTS = ("/mnt/nfs3", "/mnt/nfs4")
COUNTERS = BYTES_NAMES[:6]  # the six byte counters; readpages and writepages count pages
KIB = 1024
MIB = 1024 * KIB
TREE_FILES = 48
TREE_DIRS = ("a", "b", "b/c")
BLOB_SIZE = 2 * MIB + 1234  # not page aligned: the last page is partial
MMAP_WRITE_SIZE = 1 * MIB + 777
FIO_SIZE = "4M"
CHUNK = 64 * KIB  # a pipe's default capacity

Around = Callable[[str], AbstractContextManager[object]]


def log(msg: str) -> None:
    print(f"lab.bytes_paths: {msg}", flush=True)


@dataclass(frozen=True)
class StepResult:
    """One step: how long it took and what it moved at the syscall side.

    ``app_read_bytes``/``app_write_bytes``: bytes through read-/write-like calls
    that mountstats counts as normal*bytes (or direct*bytes when ``direct``);
    None where no figure is exact on every kernel (see the module docstring).
    ``data_bytes`` is the file data the step handled, whatever the path.
    """

    name: str
    seconds: float
    app_read_bytes: int | None
    app_write_bytes: int | None
    direct: bool = False
    files: int = 0
    data_bytes: int = 0
    note: str = ""

    def expected(self) -> dict[str, int]:
        """Exact mountstats deltas the step implies for the four app-side counters."""
        kind, other = ("direct", "normal") if self.direct else ("normal", "direct")
        out: dict[str, int] = {}
        if self.app_read_bytes is not None:
            out[f"{kind}readbytes"] = self.app_read_bytes
            out[f"{other}readbytes"] = 0
        if self.app_write_bytes is not None:
            out[f"{kind}writebytes"] = self.app_write_bytes
            out[f"{other}writebytes"] = 0
        return out


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], StepResult]


# --- pure helpers -------------------------------------------------------------------------------


def tree_layout(n_files: int = TREE_FILES, dirs: tuple[str, ...] = TREE_DIRS) -> list[tuple[str, int]]:
    """(relative path, size) of the source tree: sizes 1 KiB to 256 KiB, most not page aligned."""
    out: list[tuple[str, int]] = []
    for i in range(n_files):
        size = min((KIB << (i % 9)) + (i * 131) % 1000, 256 * KIB)
        out.append((f"{dirs[i % len(dirs)]}/f{i:02d}", size))
    return out


def fio_io_bytes(doc: Mapping[str, Any]) -> tuple[int, int]:
    """(read, write) io_bytes summed over the jobs of one fio JSON report."""
    jobs = doc.get("jobs", [])
    return (
        sum(int(j["read"]["io_bytes"]) for j in jobs),
        sum(int(j["write"]["io_bytes"]) for j in jobs),
    )


def bytes_delta(before: NfsMountStats, after: NfsMountStats) -> dict[str, int]:
    """The six counters' change between two readings of one mount."""
    return {c: after.bytes.get(c, 0) - before.bytes.get(c, 0) for c in COUNTERS}


def ops_delta(before: NfsMountStats, after: NfsMountStats) -> dict[str, int]:
    """RPC procedures whose call count changed, with the change."""
    out: dict[str, int] = {}
    for name, op in after.ops.items():
        prev = before.ops.get(name)
        n = op.ops - (prev.ops if prev is not None else 0)
        if n:
            out[name] = n
    return out


def mismatches(result: StepResult, delta: Mapping[str, int]) -> list[str]:
    """Counters whose mountstats delta differs from what the step implies."""
    return [
        f"{c}: step {v}, mountstats {delta.get(c, 0)}"
        for c, v in result.expected().items()
        if delta.get(c, 0) != v
    ]


def settle(
    read: Callable[[], NfsMountStats],
    pause: float = 0.1,
    tries: int = 50,
    sleep: Callable[[float], None] = time.sleep,
) -> NfsMountStats:
    """A reading whose byte counters held still over ``pause`` (async completions landed)."""
    prev = read()
    for _ in range(tries):
        sleep(pause)
        cur = read()
        if cur.bytes == prev.bytes:
            return cur
        prev = cur
    raise RuntimeError("mountstats bytes never held still")


# RPC procedures that carry file data (or replace it: COPY, CLONE), shown in the table.
_DATA_OPS = frozenset({"READ", "READ_PLUS", "WRITE", "COMMIT", "COPY", "CLONE", "ALLOCATE", "SEEK"})


def release_key(release: str) -> tuple[int, ...]:
    """Sort key of a kernel release: "6.12.117+deb13-amd64" -> (6, 12, 117)."""
    m = re.match(r"[0-9]+(?:\.[0-9]+)*", release)
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def format_table(docs: Iterable[Mapping[str, Any]]) -> str:
    """Markdown table: one row per (kernel, mount, step), the six deltas and the step's figures."""
    short = ("nread", "nwrite", "dread", "dwrite", "sread", "swrite")
    head = ["kernel", "mount", "step", *short, "app r", "app w", "ok", "ops"]
    rows = [head, ["---"] * len(head)]

    def fig(v: int | None) -> str:
        return "-" if v is None else str(v)

    merged: dict[str, Mapping[str, Any]] = {}
    for doc in docs:
        merged.update(doc)
    for release in sorted(merged, key=release_key):
        for mount, steps in merged[release].items():
            for name, s in steps.items():
                ops = " ".join(f"{k}:{v}" for k, v in sorted(s["ops"].items()) if k in _DATA_OPS)
                rows.append(
                    [
                        release,
                        mount,
                        name,
                        *(str(s["deltas"][c]) for c in COUNTERS),
                        fig(s["app_read_bytes"]),
                        fig(s["app_write_bytes"]),
                        "yes" if not s["mismatches"] else "NO",
                        ops,
                    ]
                )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


# --- the steps ----------------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _run(cmd: list[str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def _pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write_file(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        return done
    finally:
        os.close(fd)


def _check_tree(root: Path, layout: list[tuple[str, int]]) -> None:
    # stat only: comparing contents would read them and move the counters.
    for rel, size in layout:
        got = (root / rel).stat().st_size
        if got != size:
            raise RuntimeError(f"{root / rel}: {got} bytes, expected {size}")


class _Paths:
    """What one run_all creates; all of it under ``work`` on the mount, plus ``tmp``."""

    def __init__(self, mount: str, tag: str) -> None:
        self.work = Path(mount) / f"{tag}-bytes-paths"
        self.tree = self.work / "tree"
        self.cp = self.work / "cp"
        self.tar = self.work / "tar"
        self.blob = self.work / "blob"
        self.mmapw = self.work / "mmapw"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bytes-paths-{tag}-", dir="/tmp"))


def _steps(p: _Paths, out: Path, tag: str) -> list[Step]:
    layout = tree_layout()
    tree_bytes = sum(size for _, size in layout)

    def write_sources() -> StepResult:
        p.work.mkdir()
        for d in TREE_DIRS:
            (p.tree / d).mkdir(parents=True)
        written = 0
        for i, (rel, size) in enumerate(layout):
            written += _write_file(p.tree / rel, _pattern(i, size))
        written += _write_file(p.blob, _pattern(1000, BLOB_SIZE))
        os.sync()
        return StepResult(
            "write_sources", 0.0, 0, written, files=len(layout) + 1, data_bytes=tree_bytes + BLOB_SIZE
        )

    def cp_tree() -> StepResult:
        drop_caches()
        _run(["cp", "-r", str(p.tree), str(p.cp)])
        os.sync()
        _check_tree(p.cp, layout)
        return StepResult(
            "cp_tree", 0.0, None, None, files=len(layout), data_bytes=tree_bytes,
            note="copy_file_range: splice on NFSv3, server-side COPY on NFSv4.2",
        )  # fmt: skip

    def tar_tree() -> StepResult:
        drop_caches()
        p.tar.mkdir()
        cmd_c = ["tar", "-C", str(p.tree), "-cf", "-", "."]
        cmd_x = ["tar", "-C", str(p.tar), "-xf", "-"]
        log("$ " + " ".join(cmd_c) + " | " + " ".join(cmd_x))
        with subprocess.Popen(cmd_c, stdout=subprocess.PIPE) as create:
            assert create.stdout is not None
            subprocess.run(cmd_x, stdin=create.stdout, check=True)
            create.stdout.close()
        if create.returncode != 0:
            raise subprocess.CalledProcessError(create.returncode, cmd_c)
        os.sync()
        _check_tree(p.tar, layout)
        return StepResult("tar_tree", 0.0, tree_bytes, tree_bytes, files=len(layout), data_bytes=tree_bytes)

    def sendfile() -> StepResult:
        drop_caches()
        total = 0
        src = os.open(p.blob, os.O_RDONLY)
        dst = os.open(p.tmp / "sendfile", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while n := os.sendfile(dst, src, total, MIB):
                total += n
        finally:
            os.close(dst)
            os.close(src)
        if total != BLOB_SIZE:
            raise RuntimeError(f"sendfile moved {total} bytes of {BLOB_SIZE}")
        return StepResult("sendfile", 0.0, total, 0, files=1, data_bytes=BLOB_SIZE)

    def splice() -> StepResult:
        drop_caches()
        total = 0
        src = os.open(p.blob, os.O_RDONLY)
        r, w = os.pipe()
        try:
            while n := os.splice(src, w, CHUNK):
                total += n
                left = n
                while left:
                    left -= len(os.read(r, left))
        finally:
            for fd in (r, w, src):
                os.close(fd)
        if total != BLOB_SIZE:
            raise RuntimeError(f"splice moved {total} bytes of {BLOB_SIZE}")
        return StepResult("splice", 0.0, total, 0, files=1, data_bytes=BLOB_SIZE)

    def mmap_read() -> StepResult:
        drop_caches()
        page = mmap.PAGESIZE
        fd = os.open(p.blob, os.O_RDONLY)
        try:
            with mmap.mmap(fd, BLOB_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
                pages = range(0, BLOB_SIZE, page)
                checksum = sum(m[off] for off in pages)  # one byte of every page
        finally:
            os.close(fd)
        return StepResult(
            "mmap_read",
            0.0,
            0,
            0,
            files=1,
            data_bytes=BLOB_SIZE,
            note=f"{len(pages)} pages touched, sum {checksum}",
        )

    def mmap_write() -> StepResult:
        page = mmap.PAGESIZE
        data = _pattern(2000, MMAP_WRITE_SIZE)
        fd = os.open(p.mmapw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, MMAP_WRITE_SIZE)
            m = mmap.mmap(fd, MMAP_WRITE_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            for off in range(0, MMAP_WRITE_SIZE, page):
                m[off : off + page] = data[off : off + page]
            m.flush()  # msync(MS_SYNC)
            m.close()  # munmap
        finally:
            os.close(fd)
        if p.mmapw.stat().st_size != MMAP_WRITE_SIZE:
            raise RuntimeError(f"{p.mmapw}: wrong size after the mmap writes")
        return StepResult("mmap_write", 0.0, 0, 0, files=1, data_bytes=MMAP_WRITE_SIZE)

    def direct_read_eof() -> StepResult:
        # Two O_DIRECT preads of CHUNK: one straddling EOF (returns the tail), one past it (0).
        buf = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT buffers must be on most filesystems
        start = BLOB_SIZE - BLOB_SIZE % CHUNK
        fd = os.open(p.blob, os.O_RDONLY | os.O_DIRECT)
        try:
            got = [os.preadv(fd, [buf], off) for off in (start, start + 2 * CHUNK)]
        finally:
            os.close(fd)
            buf.close()
        if got != [BLOB_SIZE - start, 0]:
            raise RuntimeError(f"O_DIRECT reads at EOF returned {got}")
        return StepResult(
            "direct_read_eof", 0.0, None, 0, direct=True, files=1, data_bytes=sum(got),
            note=f"asked {2 * CHUNK}, got {sum(got)}",
        )  # fmt: skip

    def sendfile_direct() -> StepResult:
        total = 0
        src = os.open(p.blob, os.O_RDONLY | os.O_DIRECT)
        dst = os.open(p.tmp / "sendfile-direct", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while n := os.sendfile(dst, src, total, MIB):
                total += n
        finally:
            os.close(dst)
            os.close(src)
        if total != BLOB_SIZE:
            raise RuntimeError(f"sendfile (O_DIRECT source) moved {total} bytes of {BLOB_SIZE}")
        return StepResult(
            "sendfile_direct", 0.0, None, 0, direct=True, files=1, data_bytes=total, note=f"returned {total}"
        )

    def fio_step(name: str, engine: str, direct: bool, iodepth: int, bs: str) -> Callable[[], StepResult]:
        def step() -> StepResult:
            fname = f"fio-{name}"
            # No drop_caches before the buffered read: it would also drop fio's many shared
            # libraries, which the guest then reloads over 9p (~10 s under TCG). fio's own
            # invalidate=1 (posix_fadvise DONTNEED on the file, clean after end_fsync) sends
            # the reads to the server just as well.
            w = fio(out, f"{tag}-{name}-w", p.work, fname, "write", engine, direct, iodepth, bs)
            r = fio(out, f"{tag}-{name}-r", p.work, fname, "read", engine, direct, iodepth, bs)
            return StepResult(
                name, 0.0, r[0], w[1], direct=direct, files=1, data_bytes=w[1], note=f"fio {engine}"
            )

        return step

    return [
        Step("write_sources", write_sources),
        Step("cp_tree", cp_tree),
        Step("tar_tree", tar_tree),
        Step("sendfile", sendfile),
        Step("splice", splice),
        Step("mmap_read", mmap_read),
        Step("mmap_write", mmap_write),
        Step("direct_read_eof", direct_read_eof),
        Step("sendfile_direct", sendfile_direct),
        Step("io_uring_buffered", fio_step("io_uring_buffered", "io_uring", False, 4, "128k")),
        Step("io_uring_direct", fio_step("io_uring_direct", "io_uring", True, 4, "128k")),
        Step("libaio_direct", fio_step("libaio_direct", "libaio", True, 8, "64k")),
    ]


def fio(
    out: Path,
    name: str,
    directory: Path,
    filename: str,
    rw: str,
    engine: str,
    direct: bool,
    iodepth: int,
    bs: str,
) -> tuple[int, int]:
    """Runs one fio job; returns the (read, write) bytes fio itself reports."""
    res = out / f"fio-{name}.json"
    cmd = [
        "fio",
        f"--name={name}",
        f"--directory={directory}",
        f"--filename={filename}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={FIO_SIZE}",
        f"--direct={int(direct)}",
        f"--ioengine={engine}",
        f"--iodepth={iodepth}",
        "--invalidate=1",
        "--eta=never",
        "--output-format=json",
        f"--output={res}",
    ]
    if "write" in rw:
        cmd.append("--end_fsync=1")
    _run(cmd)
    return fio_io_bytes(json.loads(res.read_text()))


def run_all(mount: str, out: Path, tag: str, *, around: Around | None = None) -> dict[str, StepResult]:
    """Runs every step on ``mount``; returns {step name: StepResult}, in order.

    ``around(name)``, if given, is a context manager entered just outside each
    step (the CLI reads mountstats there). Everything the steps create is
    removed before returning, also on failure.
    """
    out.mkdir(parents=True, exist_ok=True)
    p = _Paths(mount, tag)
    results: dict[str, StepResult] = {}
    wrap: Around = around or (lambda _name: nullcontext())
    shutil.rmtree(p.work, ignore_errors=True)  # left by a run that was killed
    try:
        for step in _steps(p, out, tag):
            with wrap(step.name):
                t0 = time.monotonic()
                res = step.run()
                seconds = time.monotonic() - t0
            results[step.name] = replace(res, seconds=round(seconds, 3))
            log(f"{mount} {step.name}: {seconds:.2f} s, app read {res.app_read_bytes}, "
                f"app write {res.app_write_bytes}")  # fmt: skip
    finally:
        shutil.rmtree(p.work, ignore_errors=True)
        shutil.rmtree(p.tmp, ignore_errors=True)
        if p.work.exists():
            log(f"could not remove {p.work}")
    return results


# --- CLI: per-step mountstats deltas --------------------------------------------------------------


@dataclass
class _Recorder:
    """The ``around`` hook of the CLI: settled mountstats readings before and after each step."""

    mount: str
    readings: dict[str, tuple[NfsMountStats, NfsMountStats]] = field(default_factory=dict)

    def read(self) -> NfsMountStats:
        return parse_mountstats(Path("/proc/self/mountstats").read_text())[self.mount]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        before = settle(self.read)
        yield
        self.readings[name] = (before, settle(self.read))


def measure(mount: str, out: Path, tag: str) -> dict[str, dict[str, Any]]:
    """run_all on one mount with per-step mountstats deltas: the JSON of one mount."""
    rec = _Recorder(mount)
    results = run_all(mount, out, tag, around=rec)
    doc: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        before, after = rec.readings[name]
        delta = bytes_delta(before, after)
        bad = mismatches(res, delta)
        for b in bad:
            log(f"MISMATCH {mount} {name}: {b}")
        doc[name] = {
            **asdict(res),
            "expected": res.expected(),
            "deltas": delta,
            "ops": ops_delta(before, after),
            "mismatches": bad,
        }
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.bytes_paths")
    ap.add_argument("--out", type=Path, help="(in a guest) write OUT/bytes_paths.json")
    ap.add_argument("--mount", action="append", help=f"NFS mount directory (default: {' '.join(MOUNTS)})")
    ap.add_argument("--table", type=Path, nargs="+", metavar="FILE", help="print the table of these JSONs")
    ns = ap.parse_args(argv)
    if ns.table:
        print(format_table(json.loads(f.read_text()) for f in ns.table))
        return 0
    if ns.out is None:
        ap.error("--out or --table is required")
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    mounts: list[str] = ns.mount or list(MOUNTS)
    for mp in mounts:
        if not os.path.ismount(mp):
            log(f"{mp} is not mounted")
            return 1
    release = platform.release()
    per_mount: dict[str, Any] = {}
    t0 = time.monotonic()
    for mp in mounts:
        tm = time.monotonic()
        per_mount[mp] = measure(mp, out, Path(mp).name)
        log(f"{mp}: {time.monotonic() - tm:.1f} s")
    doc = {release: per_mount}
    (out / "bytes_paths.json").write_text(json.dumps(doc, indent=1))
    print(format_table([doc]))
    bad = sum(len(s["mismatches"]) for m in per_mount.values() for s in m.values())
    log(f"kernel {release}: {len(mounts)} mounts in {time.monotonic() - t0:.1f} s, {bad} mismatches")
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
