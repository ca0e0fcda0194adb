"""Guest side: the node's mounts from another mount namespace, and an NFS server that dies.

    python3 -m lab.check_dead --out DIR

1. bpfnfs in a mount namespace of its own whose NFS mounts are unmounted (as a DaemonSet's
   container sees the node): it says it reads the node's mounts through /proc/1, lists both
   and maps them to their RPC clients (statfs through /proc/1/root).
2. The same agent's SIGTERM-to-exit time with the server alive (the baseline: every detach
   is slow under TCG).
3. nfsd stopped (`rpc.nfsd 0`) under the hard NFSv3 and NFSv4.2 mounts, a reader left hanging
   on each, then bpfnfs --json --interval 2 --listen started as a new user would: reports keep
   their 2 s spacing, /metrics answers every scrape, both mounts are listed as "server not
   responding" (the probe's statfs runs off the collection path and is not repeated), and
   SIGINT ends it as fast as on a live server (+3 s).
4. Again, then nfsd started while it runs: the blocked probe returns, both mounts are mapped,
   "answers again" is logged, SIGTERM ends it, and the stuck readers finish.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from lab.check_cli import BPFNFS, Checks, docs, start, wait_for

PORT = 9133
INTERVAL = 2.0
WINDOW = 16.0  # seconds of reports looked at with the server dead
MOUNTS = ("/mnt/nfs3", "/mnt/nfs4")


def log(msg: str) -> None:
    print(f"lab.check_dead: {msg}", flush=True)


def stamp(d: dict[str, Any]) -> float:
    return datetime.fromisoformat(d["timestamp"]).timestamp()


def ended(p: subprocess.Popen[bytes], sig: int, limit: float = 30.0) -> tuple[int | None, float]:
    """Send sig and time the exit; SIGKILL (rc None) past limit."""
    t = time.monotonic()
    p.send_signal(sig)
    try:
        rc: int | None = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGUSR1)  # its stacks, for the log
        time.sleep(1)
        p.kill()
        p.wait()
        rc = None
    return rc, round(time.monotonic() - t, 2)


def scrape_seconds() -> float | None:
    t = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as r:
            r.read()
    except OSError:
        return None
    return round(time.monotonic() - t, 2)


def run_agent(out: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    return start(["--json", "--interval", str(INTERVAL), "--listen", f"127.0.0.1:{PORT}"], out, name)


def baseline(c: Checks, out: Path) -> float:
    """The same agent's SIGTERM exit with the server alive."""
    p, so, se = run_agent(out, "alive")
    ok = wait_for(so, '"mounts"', 120)
    c.add("live server: reports start", ok, se.read_text()[-500:])
    time.sleep(3)
    rc, took = ended(p, signal.SIGTERM)
    c.add("live server: SIGTERM exits 0", rc == 0, (rc, took))
    log(f"live server: SIGTERM to exit {took} s")
    return took


def container_view(c: Checks, out: Path) -> None:
    """bpfnfs in a mount namespace of its own without the NFS mounts (a DaemonSet's
    container): it reads the node's mounts through pid 1 and probes them there."""
    so, se = out / "netns.stdout", out / "netns.stderr"
    inner = " ".join([*BPFNFS, "--json", "--count", "2", "--interval", "1"])
    r = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"umount -l {' '.join(MOUNTS)} && exec {inner}",
        ],
        stdout=so.open("wb"),
        stderr=se.open("wb"),
        timeout=180,
    )
    err = se.read_text(errors="replace")
    c.add("own mount namespace: exits 0", r.returncode == 0, err[-800:])
    c.add(
        "own mount namespace: says it reads the node's mounts through /proc/1",
        "through /proc/1" in err,
        err[-800:],
    )
    d = docs(so)
    mps = {m["mount_point"]: m for m in d[-1]["mounts"]} if d else {}
    c.add("own mount namespace: both mounts listed", set(MOUNTS) <= set(mps), sorted(mps))
    c.add(
        "own mount namespace: both mapped to their RPC clients (statfs through /proc/1/root)",
        all(mps.get(mp, {}).get("rpc_clients") for mp in MOUNTS),
        {mp: (m.get("rpc_clients"), m.get("client_state")) for mp, m in mps.items()},
    )


def watch(c: Checks, name: str, p: subprocess.Popen[bytes], so: Path, window: float) -> None:
    """Reports keep their interval and /metrics answers, for `window` seconds."""
    n0 = len(docs(so))
    scrapes = []
    t_end = time.monotonic() + window
    while time.monotonic() < t_end:
        scrapes.append(scrape_seconds())
        time.sleep(1.5)
    d = docs(so)[n0:]
    want = window / INTERVAL - 2
    if len(d) < want:
        p.send_signal(signal.SIGUSR1)  # where it is stuck, in its stderr
        time.sleep(1)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(stamp(x) for x in d)]
    c.add(
        f"{name}: reports keep their {INTERVAL:g} s spacing",
        len(d) >= want and max(gaps, default=99) <= INTERVAL + 0.8,
        (len(d), gaps),
    )
    mps = {m["mount_point"]: m for m in d[-1]["mounts"]} if d else {}
    c.add(f"{name}: both mounts listed", set(MOUNTS) <= set(mps), sorted(mps))
    c.add(
        f"{name}: unmapped, as not responding",
        all(mps.get(mp, {}).get("client_state") == "server not responding" for mp in MOUNTS),
        {mp: (m.get("rpc_clients"), m.get("client_state")) for mp, m in mps.items()},
    )
    c.add(
        f"{name}: /metrics answers every scrape within 3 s",
        bool(scrapes) and all(s is not None and s <= 3.0 for s in scrapes),
        scrapes,
    )
    log(f"{name}: report gaps {gaps}; scrapes {scrapes}")


def dead(c: Checks, out: Path, base: float) -> None:
    subprocess.run(["rpc.nfsd", "0"], check=True)
    # Readers stuck on each mount (a hard mount retries forever), as the node's pods would be.
    stuck = [subprocess.Popen(["stat", "-f", mp], stdout=subprocess.DEVNULL) for mp in MOUNTS]
    stuck += [subprocess.Popen(["ls", "-l", mp], stdout=subprocess.DEVNULL) for mp in MOUNTS]
    time.sleep(2)
    c.add("dead server: readers hang", all(s.poll() is None for s in stuck), [s.poll() for s in stuck])
    alive = False
    try:
        # SIGINT with the server dead.
        p, so, se = run_agent(out, "dead-SIGINT")
        c.add("dead server: first report", wait_for(so, '"mounts"', 120), se.read_text()[-500:])
        watch(c, "dead server", p, so, WINDOW)
        rc, took = ended(p, signal.SIGINT)
        err = se.read_text(errors="replace")
        c.add(
            "dead server: SIGINT ends bpfnfs as on a live server (+3 s)",
            rc == 0 and took < base + 3.0,
            (rc, took, base),
        )
        c.add(
            "dead server: not responding logged once per mount",
            err.count("is not responding") == 2,
            err[-1500:],
        )
        c.add("dead server (SIGINT run): no traceback", "Traceback" not in err, err[-1500:])
        log(f"dead server: SIGINT to exit {took} s (live {base} s)")
        # SIGTERM: the server comes back while bpfnfs runs; the blocked probe returns and maps.
        p, so, se = run_agent(out, "dead-SIGTERM")
        c.add("dead, then back: first report", wait_for(so, '"mounts"', 120), se.read_text()[-500:])
        time.sleep(8)
        subprocess.run(["rpc.nfsd", "4"], check=True)
        alive = True
        end = time.monotonic() + 90
        mapped: dict[str, Any] = {}
        while time.monotonic() < end:
            d = docs(so)
            mapped = {m["mount_point"]: m.get("client_state") for m in d[-1]["mounts"]} if d else {}
            if all(mapped.get(mp) == "mapped" for mp in MOUNTS):
                break
            time.sleep(1)
        c.add(
            "server back: both mounts mapped while bpfnfs runs",
            all(mapped.get(mp) == "mapped" for mp in MOUNTS),
            mapped,
        )
        rc, took = ended(p, signal.SIGTERM)
        err = se.read_text(errors="replace")
        c.add("server back: 'answers again' logged", "answers again" in err, err[-1000:])
        c.add("server back: SIGTERM exits 0", rc == 0 and took < base + 3.0, (rc, took, base))
        c.add("dead, then back: no traceback", "Traceback" not in err, err[-1500:])
    finally:
        if not alive:
            subprocess.run(["rpc.nfsd", "4"], check=True)
    end = time.monotonic() + 90
    while time.monotonic() < end and any(s.poll() is None for s in stuck):
        time.sleep(1)
    done = [s.poll() for s in stuck]
    c.add("server back: the stuck readers finish", all(x is not None for x in done), done)
    for s in stuck:
        if s.poll() is None:
            s.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out: Path = args.out
    work = out / "dead"
    work.mkdir(parents=True, exist_ok=True)
    c = Checks("lab.check_dead")
    try:
        container_view(c, work)
        base = baseline(c, work)
        dead(c, work, base)
    except Exception as e:  # a guest error must still leave a result file
        c.add("check_dead ran to the end", False, f"{type(e).__name__}: {e}")
    (out / "dead.json").write_text(json.dumps({"checks": c.items}, indent=1))
    log(f"{len(c.items) - c.failed}/{len(c.items)} checks passed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
