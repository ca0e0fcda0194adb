"""Guest side: pods that come and go all day.

    python3 -m lab.check_churn --out DIR [--pods N]

N pods (cgroups laid out as kubelet's cgroupfs driver lays them out,
/kubepods/besteffort/pod<uid>/<container id>) each run a process that writes 16 KiB to
/mnt/nfs3 with fsync and exits; the pod's cgroups are then removed, ten pods at a time.
bpfnfs runs throughout (--by cgroup --json --listen). After two sweeps (collect.retire):
- the kernel's vfs_stats and owners entries are back to their count before the churn
  (and rose during it), the agent's RSS and its number of per-identity /metrics series
  (those with a cgroup label) are back to their baseline (small tolerances, reported);
- nothing was lost: the syscall write bytes of all rows (the retired row included) equal what
  the pods wrote, and their billed WRITE bytes equal mountstats' server write bytes delta
  (with the kernel entries gone, what the dead pods did is in the retired row).
Per-file series are left out (--metrics-top-files 0): their budget bounds them, not identities.
`make test` runs 100 pods; `make churn` 1,000 (a long run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from lab.check_cli import Checks, docs, start, stop, wait_for
from lab.check_client import mountstats_bytes

PORT = 9135
MP = "/mnt/nfs3"
CGROOT = Path("/sys/fs/cgroup")
PER_POD = 16 * 1024
RETIRE_INTERVAL = 3  # collection.retire_interval for this agent (default 10 s): a shorter wait
SWEEP_WAIT = 2 * RETIRE_INTERVAL + 3.0  # two folds and an interval


def server_write_bytes_of(mp: str) -> int:
    return mountstats_bytes(mp)["serverwritebytes"]


def log(msg: str) -> None:
    print(f"lab.check_churn: {msg}", flush=True)


def entries() -> int:
    """Entries in every vfs_stats and owners map of the running agents."""
    maps = json.loads(
        subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, check=True).stdout
    )
    n = 0
    for m in maps:
        if m.get("name") in ("vfs_stats", "owners"):
            dump = subprocess.run(["bpftool", "map", "dump", "id", str(m["id"]), "-j"], capture_output=True)
            n += len(json.loads(dump.stdout or b"[]"))
    return n


SERIES: list[set[str]] = []  # each count's series (name and labels), for the log


def series() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as r:
        # Series that name an identity (a cgroup label): the ones churn could grow. Mount-level
        # per-op series appear when an op first moves (a GETATTR during the churn), bounded by
        # the op set, not by pods.
        got = {
            ln.rsplit(" ", 1)[0]
            for ln in r.read().decode().splitlines()
            if ln and not ln.startswith("#") and 'cgroup="' in ln
        }
    SERIES.append(got)
    return len(got)


def rss_kib(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def pod(i: int, d: Path) -> subprocess.Popen[bytes]:
    uid = uuid.UUID(int=i + 1)
    cg = CGROOT / "kubepods" / "besteffort" / f"pod{uid}" / f"{i + 1:064x}"
    cg.mkdir(parents=True, exist_ok=True)

    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(
        ["dd", "if=/dev/zero", f"of={d}/{i}", "bs=4k", "count=4", "conv=fsync"],
        preexec_fn=enter,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def remove_pod(i: int) -> None:
    uid = uuid.UUID(int=i + 1)
    p = CGROOT / "kubepods" / "besteffort" / f"pod{uid}"
    for _ in range(50):  # the exited process leaves its cgroup asynchronously
        try:
            (p / f"{i + 1:064x}").rmdir()
            p.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def churn(n: int, d: Path, first: int = 0) -> int:
    bad = 0
    for lo in range(first, first + n, 10):
        batch = [(i, pod(i, d)) for i in range(lo, min(lo + 10, first + n))]
        for i, p in batch:
            bad += p.wait() != 0
            remove_pod(i)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pods", type=int, default=100)
    args = ap.parse_args()
    out: Path = args.out / "churn"
    out.mkdir(parents=True, exist_ok=True)
    c = Checks("lab.check_churn")
    d = Path(MP) / "churn"
    d.mkdir(exist_ok=True)
    figures: dict[str, Any] = {"pods": args.pods}
    # --metrics-top-files 0: the per-file series are bounded by that budget, not by identities.
    args_ = [
        "--json",
        "--by",
        "cgroup",
        "--interval",
        "2",
        "--listen",
        f"127.0.0.1:{PORT}",
        "--metrics-top-files",
        "0",
    ]
    os.environ["BPFNFS_COLLECTION__RETIRE_INTERVAL"] = str(RETIRE_INTERVAL)
    p, so, se = start(args_, out, "agent")
    try:
        c.add("agent: first report", wait_for(so, '"mounts"', 120), se.read_text()[-800:])
        w0 = server_write_bytes_of(MP)
        churn(1, d, first=args.pods)  # warm-up: every mount-level series this workload moves exists
        time.sleep(SWEEP_WAIT)
        base = {"entries": entries(), "series": series(), "rss_kib": rss_kib(p.pid)}
        t = time.monotonic()
        half = args.pods // 2
        bad = churn(half, d)
        peak = entries()
        bad += churn(args.pods - half, d, first=half)
        figures["churn_seconds"] = round(time.monotonic() - t, 1)
        c.add("every pod's process wrote and exited 0", bad == 0, bad)
        time.sleep(SWEEP_WAIT)
        after = {"entries": entries(), "series": series(), "rss_kib": rss_kib(p.pid)}
        w1 = server_write_bytes_of(MP)
        text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10).read().decode()
    finally:
        rc = stop(p)
    figures.update(base={**base}, peak_entries=peak, after={**after})
    if len(SERIES) >= 2:
        figures["series_new"] = sorted(SERIES[-1] - SERIES[-2])[:40]
        figures["series_gone"] = sorted(SERIES[-2] - SERIES[-1])[:40]
    log(f"figures: {figures}")
    c.add("agent: exits 0", rc == 0, se.read_text()[-800:])
    c.add("kernel entries rose during the churn", peak >= base["entries"] + 10, (base["entries"], peak))
    c.add(
        "kernel entries back to their baseline after two sweeps",
        after["entries"] <= base["entries"],
        (base["entries"], peak, after["entries"]),
    )
    c.add(
        "/metrics series back to their baseline",
        after["series"] <= base["series"],
        (base["series"], after["series"]),
    )
    grew = after["rss_kib"] - base["rss_kib"]
    c.add("agent RSS within 8 MiB of its baseline", grew <= 8 * 1024, (base["rss_kib"], after["rss_kib"]))
    retired = [ln for ln in text.splitlines() if ln.startswith("bpfnfs_retired_entries_total")]
    c.add(
        "bpfnfs_retired_entries_total counts the folds",
        bool(retired) and float(retired[0].split()[-1]) >= args.pods,
        retired,
    )
    wrote = wire = 0
    for doc in docs(so):
        for m in doc["mounts"]:
            if m["mount_point"] != MP:
                continue
            for r in m.get("rows", []):
                wrote += r["write_bytes"]
                wire += r["wire_write_bytes"]
    want = (args.pods + 1) * PER_POD
    c.add("nothing lost: syscall write bytes of all rows = what the pods wrote", wrote == want, (wrote, want))
    c.add("nothing lost: billed WRITE bytes = mountstats' delta", wire == w1 - w0, (wire, w1 - w0))
    err = se.read_text()
    c.add("agent: no traceback", "Traceback" not in err, err[-1500:])
    (args.out / "churn.json").write_text(json.dumps({"checks": c.items, "figures": figures}, indent=1))
    log(f"{len(c.items) - c.failed}/{len(c.items)} checks passed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
