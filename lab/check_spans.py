"""Guest side: span trees (bpfnfs trace --spans) against the kernel's own counters.

    python3 -m lab.check_spans --out DIR

Two extra mounts of the lab's server with rsize=wsize=131072 (NFSv3 and v4.2), and
`bpfnfs trace --spans --sample-ratio 1 --min-latency 10s --json` running (no
operation here is that slow: every tree is kept by the sampler). On each mount, one
process per step:

- a 1 MiB O_DIRECT read: one read span with exactly 8 READ children (1 MiB / rsize),
  each inside its parent's time range;
- a buffered read of another 1 MiB file after drop_caches: its READs (readahead,
  started by the reader) are children of the reader's read spans;
- 1 MiB written and fsync'd: the WRITEs and the COMMIT are children of the fsync.

Then over the whole window: the RPC spans per mount and procedure equal the
/proc/self/mountstats deltas (exact), every parent id is a span of the same trace,
every child of a synchronous parent (read, fsync) lies inside it, and nothing was
lost (ring buffer, span counters).

Then `bpfnfs run` with output.type otlp sends the same trees to the stand-in OTLP
receiver (lab/otlp.py) over gRPC, with a configured header; /metrics counts them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bpfnfs.enrich.mountstats import parse_mountstats
from lab.check import drop_caches, sh
from lab.check_cli import Checks
from lab.check_views import BPFNFS, LEASE_OPS, start, stop
from lab.otlp import Receiver

MOUNTS = {"/mnt/span3": "vers=3,nolock", "/mnt/span4": "vers=4.2"}
SOURCES = {"/mnt/span3": "127.0.0.1:/srv/nfs", "/mnt/span4": "127.0.0.1:/"}
RSIZE = 131072
MIB = 1 << 20
READS = ("READ", "READ_PLUS")  # NFSv4.2 reads with READ_PLUS from 6.x


def log(msg: str) -> None:
    print(f"lab.check_spans: {msg}", flush=True)


def mount_all() -> None:
    for mp, opts in MOUNTS.items():
        Path(mp).mkdir(parents=True, exist_ok=True)
        sh(f"mount -t nfs -o {opts},rsize={RSIZE},wsize={RSIZE} {SOURCES[mp]} {mp}")


def umount_all() -> None:
    for mp in MOUNTS:
        subprocess.run(["umount", mp], capture_output=True)


def subdir(mp: str) -> Path:
    # Both mounts show the same export: each works in its own directory.
    d = Path(mp) / f"spans-{Path(mp).name}"
    d.mkdir(exist_ok=True)
    return d


def run(cmd: list[str]) -> int:
    """Runs a workload process; returns its pid (the spans' process.pid)."""
    log("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = p.communicate()
    if p.returncode:
        raise RuntimeError(f"{cmd}: exit {p.returncode}: {err.decode(errors='replace')}")
    return p.pid


def mountstats() -> dict[str, dict[str, int]]:
    stats = parse_mountstats(Path("/proc/self/mountstats").read_text())
    return {mp: {op: s.ops for op, s in stats[mp].ops.items()} for mp in MOUNTS}


def inside(child: dict[str, Any], parent: dict[str, Any]) -> bool:
    return (
        parent["start_unix_nano"] <= child["start_unix_nano"]
        and child["end_unix_nano"] <= parent["end_unix_nano"]
    )


def check(c: Checks, out: Path) -> None:
    mount_all()
    try:
        files = {mp: subdir(mp) for mp in MOUNTS}
        for d in files.values():
            sh(f"dd if=/dev/urandom of={d}/direct bs=1M count=1 conv=fsync status=none")
            sh(f"dd if=/dev/urandom of={d}/buffered bs=1M count=1 conv=fsync status=none")
        drop_caches()
        tr = start(
            [*BPFNFS, "trace", "--spans", "--sample-ratio", "1", "--min-latency", "10s", "--json"],
            out,
            "spans",
        )
        err = out / "spans.stderr"
        end = time.monotonic() + 600
        while time.monotonic() < end and "attached" not in err.read_text(errors="replace"):  # TCG: minutes
            if tr.poll() is not None:
                break
            time.sleep(0.5)
        attached = "attached" in err.read_text(errors="replace")
        c.add("trace --spans attaches", attached, err.read_text(errors="replace")[-2000:])
        if not attached:
            stop(tr)
            return
        time.sleep(2)
        m0 = mountstats()
        t0 = time.time_ns()
        pids: dict[tuple[str, str], int] = {}
        for mp, d in files.items():
            pids[(mp, "direct")] = run(
                ["dd", f"if={d}/direct", "of=/dev/null", "bs=1M", "count=1", "iflag=direct", "status=none"]
            )
            drop_caches()
            pids[(mp, "buffered")] = run(["dd", f"if={d}/buffered", "of=/dev/null", "bs=1M", "status=none"])
            pids[(mp, "fsync")] = run(
                ["dd", "if=/dev/zero", f"of={d}/synced", "bs=1M", "count=1", "conv=fsync", "status=none"]
            )
        time.sleep(2)
        t1 = time.time_ns()
        m1 = mountstats()
        time.sleep(1)  # the drain of the last records
        rc = stop(tr)
        c.add("trace --spans exits cleanly", rc == 0, rc)
        check_otlp(c, out, files)
    finally:
        umount_all()

    spans = [json.loads(ln) for ln in (out / "spans.stdout").read_text().splitlines() if ln.strip()]
    stderr = err.read_text(errors="replace")
    log(f"{len(spans)} spans; {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        if s["parent_span_id"]:
            children[s["parent_span_id"]].append(s)
    ids = all(s.get("trace_id") and s.get("span_id") for s in spans)
    c.add("every record has a trace id and a span id", ids)
    c.add("span ids are unique", len(by_id) == len(spans), len(spans) - len(by_id))
    orphans = [s for s in spans if s["parent_span_id"] and s["parent_span_id"] not in by_id]
    c.add("every parent id is a span", not orphans, orphans[:3])
    wrong_trace = [
        s
        for s in spans
        if s["parent_span_id"] in by_id and by_id[s["parent_span_id"]]["trace_id"] != s["trace_id"]
    ]
    c.add("every child is in its parent's trace", not wrong_trace, wrong_trace[:3])
    roots = [s for s in spans if not s["parent_span_id"]]
    c.add(
        "every root says why it was kept (sampled: nothing took 10 s)",
        all(s.get("kept") == ["sampled"] for s in roots),
        [s for s in roots if s.get("kept") != ["sampled"]][:3],
    )

    def reads_of(pid: int) -> list[dict[str, Any]]:
        return [s for s in spans if s["kind"] == "vfs" and s["pid"] == pid and s["op"] == "read"]

    figures: dict[str, Any] = {}
    for mp in MOUNTS:
        # O_DIRECT: one read(2) of 1 MiB -> one read span, 1 MiB / rsize READ children.
        direct = [s for s in reads_of(pids[(mp, "direct")]) if s["bytes"] == MIB]
        kids = [k for s in direct for k in children[s["span_id"]]]
        c.add(
            f"{mp}: a 1 MiB O_DIRECT read is one read span with exactly {MIB // RSIZE} READ children",
            len(direct) == 1 and len(kids) == MIB // RSIZE and all(k["op"] in READS for k in kids),
            {"reads": len(direct), "children": [k["op"] for k in kids]},
        )
        c.add(
            f"{mp}: each O_DIRECT READ lies inside its read span",
            bool(direct) and all(inside(k, direct[0]) for k in kids),
            [(k["start_unix_nano"], k["end_unix_nano"]) for k in kids][:3]
            + ([(direct[0]["start_unix_nano"], direct[0]["end_unix_nano"])] if direct else []),
        )
        # Buffered read after drop_caches: the READs hang under the reader's read spans.
        buf = reads_of(pids[(mp, "buffered")])
        ra = [k for s in buf for k in children[s["span_id"]] if k["op"] in READS]
        c.add(
            f"{mp}: a buffered read's READs (readahead) are children of the reader's reads",
            bool(ra),
            {"reads": len(buf), "READ children": len(ra)},
        )
        # fsync: its WRITEs and COMMIT are its children.
        fsync_pid = pids[(mp, "fsync")]
        fs = [s for s in spans if s["pid"] == fsync_pid and s["op"] == "fsync" and s["kind"] == "vfs"]
        fk = Counter(k["op"] for s in fs for k in children[s["span_id"]])
        dstats = {op: m1[mp].get(op, 0) - m0[mp].get(op, 0) for op in m1[mp]}
        c.add(
            f"{mp}: an fsync's COMMIT is its child",
            len(fs) == 1 and (fk["COMMIT"] >= 1 or dstats.get("COMMIT", 0) == 0),
            {"fsyncs": len(fs), "children": dict(fk), "COMMIT delta": dstats.get("COMMIT", 0)},
        )
        # Exact: RPC spans per procedure on this mount = mountstats deltas (the spans that ended
        # between the two reads of mountstats: the agent's own statfs at attach came before).
        got = Counter(
            s["op"]
            for s in spans
            if s["kind"] == "rpc" and s["mount"] == mp and t0 <= s["end_unix_nano"] <= t1
        )
        want = {op: n for op, n in dstats.items() if n and op not in LEASE_OPS}
        got_cmp = {op: n for op, n in got.items() if op not in LEASE_OPS}
        c.add(
            f"{mp}: RPC spans per procedure equal the mountstats deltas",
            got_cmp == want and sum(want.values()) > 0,
            {"spans": dict(got_cmp), "mountstats": want},
        )
        figures[mp] = {"rpc spans": dict(got_cmp), "READ children (readahead)": len(ra)}
    # Children of synchronous parents (O_DIRECT reads, fsync, and everything else but the
    # readahead of a buffered read) end before their parent.
    sync_bad = []
    for s in spans:
        p = by_id.get(s["parent_span_id"] or "")
        if p is None or (p["op"] == "read" and s["op"] in READS):
            continue
        if not inside(s, p):
            sync_bad.append((s["op"], p["op"]))
    c.add("every child of a synchronous parent lies inside it", not sync_bad, sync_bad[:5])
    late = [
        s
        for s in spans
        if s["op"] in READS and s["parent_span_id"] in by_id and not inside(s, by_id[s["parent_span_id"]])
    ]
    figures["readahead READs ending after their read"] = len(late)
    c.add(
        "nothing lost (ring buffer, queue)",
        "0 records lost" in stderr,
        stderr.strip().splitlines()[-1:] if stderr.strip() else None,
    )
    figures["spans"] = len(spans)
    (out / "spans-figures.json").write_text(json.dumps(figures, indent=1))
    log(f"figures: {figures}")


def check_otlp(c: Checks, out: Path, files: dict[str, Path]) -> None:
    """`bpfnfs run` with output.type otlp sends the same trees to the stand-in receiver (lab/otlp.py:
    OTLP over gRPC as a collector speaks it; no collector with an OTLP receiver is installable)."""
    rx = Receiver()
    try:
        conf = out / "otlp.yaml"
        conf.write_text(
            "output:\n  type: otlp\n  otlp:\n"
            f"    endpoint: {rx.grpc_endpoint}\n    headers:\n      x-lab: spans\n"
            "trace:\n  min_latency: 10s\n  sample_ratio: 1\n"
        )
        port = 9765
        p = start(
            [*BPFNFS, "run", "--config", str(conf), "--quiet", "--listen", f"127.0.0.1:{port}", "-i", "2"],
            out,
            "otlp-run",
        )
        err = out / "otlp-run.stderr"
        end = time.monotonic() + 600
        while time.monotonic() < end and "attached" not in err.read_text(errors="replace"):
            if p.poll() is not None:
                break
            time.sleep(0.5)
        text = err.read_text(errors="replace")
        c.add(
            "run with output.type otlp attaches and says where spans go",
            "sending spans over OTLP" in text,
            text,
        )
        time.sleep(3)
        d = files["/mnt/span3"]
        pid = run(["dd", f"if={d}/direct", "of=/dev/null", "bs=1M", "count=1", "iflag=direct", "status=none"])
        time.sleep(5)  # the drain, the processor's 1 s schedule, an interval for /metrics
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        rc = stop(p)
        c.add("run exits cleanly after flushing its spans", rc == 0, rc)
    finally:
        rx.close()
    spans = rx.spans()
    ids = {s.span_id: s for s in spans}

    def attrs(s: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in s.attributes:
            v = a.value
            out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
        return out

    reads = [s for s in spans if s.name == "read" and attrs(s).get("process.pid") == pid]
    kids = [s for s in spans if reads and s.parent_span_id == reads[0].span_id]
    c.add(
        "OTLP: the O_DIRECT read arrived as one read span with 8 READ children, same trace",
        len(reads) == 1
        and len(kids) == MIB // RSIZE
        and all(k.name in READS and k.trace_id == reads[0].trace_id for k in kids),
        {"reads": len(reads), "children": [k.name for k in kids], "spans": len(spans)},
    )
    a = attrs(kids[0]) if kids else {}
    c.add(
        "OTLP: RPC spans carry onc_rpc attributes and the server",
        a.get("rpc.system.name") == "onc_rpc"
        and a.get("onc_rpc.procedure.name") in READS
        and a.get("server.address") == "127.0.0.1"
        and a.get("bpfnfs.mount") == "/mnt/span3",
        a,
    )
    c.add(
        "OTLP: every parent id is a span it sent",
        all(not s.parent_span_id or s.parent_span_id in ids for s in spans),
    )
    got = rx.of("traces")
    c.add("OTLP: the configured header arrived", bool(got) and got[0].headers.get("x-lab") == "spans")
    exported = re.search(r"^bpfnfs_spans_exported_total (\S+)", metrics, re.M)
    failed = re.search(r'^bpfnfs_spans_dropped_total\{reason="export_failed"\} (\S+)', metrics, re.M)
    c.add(
        "/metrics counts the spans exported, none failed",
        bool(exported and float(exported.group(1)) > 0 and failed and float(failed.group(1)) == 0),
        [ln for ln in metrics.splitlines() if ln.startswith("bpfnfs_spans")],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check_spans")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    c = Checks("lab.check_spans")
    try:
        check(c, a.out)
    except Exception as e:  # a broken step is a failed check, with the rest reported
        c.add(f"check_spans ran to the end ({type(e).__name__})", False, str(e))
    (a.out / "spans.json").write_text(json.dumps({"checks": c.items}, indent=1))
    log(f"{len(c.items) - c.failed}/{len(c.items)} passed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
