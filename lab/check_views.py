"""Guest side: the operator's views against a real kernel and nfsd.

    python3 -m lab.check_views --out DIR

- Prometheus: `bpfnfs run --listen` scraped every second by Debian's own
  `prometheus` server; op and byte totals from its HTTP API must equal the
  /proc/self/mountstats deltas of a workload; every PromQL expression of the
  Grafana dashboard must return data; `promtool check metrics` on a scrape
  reports nothing; /healthz and /readyz answer.
- Compat mode: the original tool's six per-file series for a file of known size.
- Slow operations: a netem delay on loopback makes NFS calls slow; `bpfnfs
  trace` must print exactly the syscall-side operations slower than the
  threshold. The threshold sits on a histogram bucket bound, so the exporter's
  own `le` buckets (a separate agent) count the same set: they must agree op
  for op. The text mode runs in tmux and is read off the screen.
- `bpfnfs top` in tmux (lab.check_top).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bpfnfs.enrich.mountstats import NfsMountStats, parse_mountstats
from lab.check import drop_caches, sh
from lab.check_cli import Checks, our_programs
from lab.dashboard import dashboard_queries

ROOT = Path(__file__).resolve().parents[1]
BPFNFS = [sys.executable, "-m", "bpfnfs"]
PORT, COMPAT_PORT, PROM_PORT = 9763, 9764, 9090
SCRAPE_S = 10  # Prometheus scrape interval (a failed scrape marks every series stale)
INTERVAL_S = 1  # the exporter agent's collection interval
MOUNTS = ("/mnt/nfs3", "/mnt/nfs4")
# On a log2 bucket bound (2^17 µs): an op is traced iff it lands above le="0.131072".
SLOW_NS = 131_072_001
SLOW_LE = "0.131072"
BYTES = {  # mountstats bytes: field -> (metric, io label)
    "normalreadbytes": ("bpfnfs_read_bytes_total", "buffered"),
    "normalwritebytes": ("bpfnfs_write_bytes_total", "buffered"),
    "directreadbytes": ("bpfnfs_read_bytes_total", "direct"),
    "directwritebytes": ("bpfnfs_write_bytes_total", "direct"),
    "serverreadbytes": ("bpfnfs_server_read_bytes_total", None),
    "serverwritebytes": ("bpfnfs_server_write_bytes_total", None),
}


def log(msg: str) -> None:
    print(f"lab.check_views: {msg}", flush=True)


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_http(url: str, code: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if http_get(url, 5)[0] == code:
            return True
        time.sleep(0.5)
    return False


def promql(expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    code, body = http_get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query?{q}", 30)
    if code != 200:
        raise RuntimeError(f"prometheus query {expr!r}: HTTP {code}: {body[:300]}")
    return json.loads(body)["data"]["result"]


def mountstats() -> dict[str, NfsMountStats]:
    return parse_mountstats(Path("/proc/self/mountstats").read_text())


# NFSv4 lease upkeep runs on its own clock (the lab's lease is short): never still for long.
LEASE_OPS = {"SEQUENCE", "RENEW"}


def _still(ms: dict[str, NfsMountStats]) -> Any:
    return {
        mp: ({k: v.ops for k, v in s.ops.items() if k not in LEASE_OPS}, s.bytes)
        for mp, s in ms.items()
        if mp in MOUNTS
    }


PROM_SELECTOR = (
    '{__name__=~"bpfnfs_rpc_operations_total|bpfnfs_rpc_sent_bytes_total|bpfnfs_rpc_received_bytes_total'
    "|bpfnfs_rpc_retransmissions_total|bpfnfs_read_bytes_total|bpfnfs_write_bytes_total"
    '|bpfnfs_server_read_bytes_total|bpfnfs_server_write_bytes_total"}'
)


def prom_values() -> dict[tuple[str, str, str], float]:
    """(metric, mount, op or io) -> value, the latest sample of each series."""
    out = {}
    for r in promql(PROM_SELECTOR):
        m = r["metric"]
        out[(m["__name__"], m.get("mount", ""), m.get("op") or m.get("io") or "")] = float(r["value"][1])
    return out


def stable_prom() -> tuple[dict[str, NfsMountStats], dict[tuple[str, str, str], float]]:
    """mountstats and Prometheus' latest samples, with nothing completing in between: the
    sample is at most one collection plus one scrape (and its rendering) old."""
    for _ in range(20):
        a = mountstats()
        time.sleep(INTERVAL_S + SCRAPE_S + 3)
        vals = prom_values()
        b = mountstats()
        if _still(a) == _still(b):
            return b, vals
    raise RuntimeError(f"mountstats never held still for {INTERVAL_S + SCRAPE_S + 3} s")


def start(args: list[str], out: Path, name: str) -> subprocess.Popen[bytes]:
    log(f"$ {' '.join(args)}")
    return subprocess.Popen(
        args, stdout=(out / f"{name}.stdout").open("wb"), stderr=(out / f"{name}.stderr").open("wb")
    )


def stop(p: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def prometheus(out: Path) -> subprocess.Popen[bytes]:
    d = Path("/tmp/lab-prom")
    d.mkdir(exist_ok=True)
    (d / "prometheus.yml").write_text(
        # Under TCG a 300 kB scrape takes about 1 s to render; natively it is ~30 ms.
        f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S - 1}s\n"
        "scrape_configs:\n  - job_name: bpfnfs\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{PORT}']\n"
    )
    return start(
        [
            "prometheus",
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            "--log.level=warn",
        ],
        out,
        "prometheus",
    )


def workload(tag: str) -> None:
    for mp in MOUNTS:
        sh(f"dd if=/dev/zero of={mp}/{tag}-w bs=64k count=64 conv=fsync status=none")
        sh(f"dd if=/dev/zero of={mp}/{tag}-d bs=64k count=16 oflag=direct status=none")
    drop_caches()
    for mp in MOUNTS:
        sh(f"cat {mp}/{tag}-w > /dev/null")
        # count=16, not to EOF: mountstats counts an O_DIRECT read's requested bytes, even past EOF
        sh(f"dd if={mp}/{tag}-d of=/dev/null bs=64k count=16 iflag=direct status=none")
        sh(f"ls -l {mp} > /dev/null")
        # errors at every layer: LOOKUP ENOENT (rpc and server), open ENOENT (syscall side)
        subprocess.run(["stat", f"{mp}/{tag}-missing"], capture_output=True)
        subprocess.run(["cat", f"{mp}/{tag}-missing"], capture_output=True)
        secret = Path(mp) / f"{tag}-secret"  # EACCES on the syscall side (nfs_permission)
        secret.write_text("x")
        secret.chmod(0o600)
        subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(secret)],
            capture_output=True,
        )


def compare_prom(
    c: Checks,
    m0: dict[str, NfsMountStats],
    p0: dict[Any, float],
    m1: dict[str, NfsMountStats],
    p1: dict[Any, float],
) -> None:
    bad: list[str] = []
    n = 0
    for mp in MOUNTS:
        a, b = m0[mp], m1[mp]
        for op, s in b.ops.items():
            if op in LEASE_OPS:
                continue
            d = s.ops - a.ops[op].ops if op in a.ops else s.ops
            for metric, want in (
                ("bpfnfs_rpc_operations_total", d),
                ("bpfnfs_rpc_sent_bytes_total", s.bytes_sent - (a.ops[op].bytes_sent if op in a.ops else 0)),
                (
                    "bpfnfs_rpc_received_bytes_total",
                    s.bytes_recv - (a.ops[op].bytes_recv if op in a.ops else 0),
                ),
                (
                    "bpfnfs_rpc_retransmissions_total",
                    (s.ntrans - s.ops) - ((a.ops[op].ntrans - a.ops[op].ops) if op in a.ops else 0),
                ),
            ):
                got = p1.get((metric, mp, op), 0.0) - p0.get((metric, mp, op), 0.0)
                n += 1
                if got != want:
                    bad.append(f"{mp} {op} {metric}: prometheus {got:g}, mountstats {want}")
        for field, (metric, io) in BYTES.items():
            want = b.bytes.get(field, 0) - a.bytes.get(field, 0)
            got = p1.get((metric, mp, io or ""), 0.0) - p0.get((metric, mp, io or ""), 0.0)
            n += 1
            if got != want:
                bad.append(f"{mp} {field}: prometheus {got:g}, mountstats {want}")
    moved = sum(
        1 for mp in MOUNTS for op, s in m1[mp].ops.items() if s.ops != getattr(m0[mp].ops.get(op), "ops", 0)
    )
    c.add(
        f"prometheus totals equal mountstats deltas ({n} values, {moved} ops moved)",
        not bad and moved > 5,
        bad[:10],
    )


def check_prometheus(c: Checks, out: Path) -> bool:
    """True if the exporter got ready (the trace check then uses it)."""
    prom = prometheus(out)
    try:
        c.add("/healthz answers 200", wait_http(f"http://127.0.0.1:{PORT}/healthz", 200, 60))
        ready = wait_http(f"http://127.0.0.1:{PORT}/readyz", 200, 120)
        c.add(
            "/readyz turns 200 once attached and collected",
            ready,
            http_get(f"http://127.0.0.1:{PORT}/readyz"),
        )
        if not ready:
            return False
        c.add("prometheus is up", wait_http(f"http://127.0.0.1:{PROM_PORT}/-/ready", 200, 120))
        end = time.monotonic() + 60
        while time.monotonic() < end and not any(r["value"][1] == "1" for r in promql('up{job="bpfnfs"}')):
            time.sleep(1)
        c.add(
            "prometheus scrapes bpfnfs (up == 1)",
            any(r["value"][1] == "1" for r in promql('up{job="bpfnfs"}')),
        )
        m0, p0 = stable_prom()
        workload("prom")
        m1, p1 = stable_prom()
        compare_prom(c, m0, p0, m1, p1)
        (out / "prometheus-values.json").write_text(
            json.dumps(
                {"before": {str(k): v for k, v in p0.items()}, "after": {str(k): v for k, v in p1.items()}}
            )
        )

        code, text = http_get(f"http://127.0.0.1:{PORT}/metrics")
        (out / "scrape.txt").write_text(text)
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        c.add(
            "promtool check metrics reports nothing",
            code == 200 and r.returncode == 0 and not (r.stdout + r.stderr).strip(),
            (r.stdout + r.stderr)[:500],
        )

        time.sleep(3 * SCRAPE_S)  # rate() over [1m] wants a few samples after the workload
        empty = []
        queries = dashboard_queries(ROOT / "deploy/grafana/bpfnfs.json", rate_interval="1m")
        for title, expr in queries:
            try:
                # A slow scrape (TCG) marks every series stale until the next: retry across two
                # (seen on 7.3.4 under a loaded host: one query empty at its three tries over 1.5 scrapes).
                for _ in range(6):
                    if promql(expr):
                        break
                    time.sleep(SCRAPE_S / 2)
                else:
                    empty.append(f"{title}: {expr}")
            except RuntimeError as e:
                empty.append(f"{title}: {e}")
        c.add(
            f"every dashboard query returns data ({len(queries)} queries)",
            not empty and len(queries) > 20,
            empty,
        )
        return True
    finally:
        stop(prom)


def _scrape_hist(port: int) -> dict[tuple[str, str], tuple[float, float]]:
    """(mount, op) -> (ops <= SLOW_LE, all ops) of bpfnfs_vfs_operation_duration_seconds."""
    _code, text = http_get(f"http://127.0.0.1:{port}/metrics")
    out: dict[tuple[str, str], list[float]] = {}
    pat = re.compile(r"^bpfnfs_vfs_operation_duration_seconds_(bucket|count)\{(.*)\} (\S+)$")
    for line in text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        key = (labels["mount"], labels["op"])
        slot = out.setdefault(key, [0.0, 0.0])
        if m.group(1) == "bucket" and labels.get("le") == SLOW_LE:
            slot[0] = float(m.group(3))
        elif m.group(1) == "count":
            slot[1] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def check_trace(c: Checks, out: Path) -> None:
    """The exporter agent (PORT) is running; its histograms are the second count."""
    jt = start([*BPFNFS, "trace", "--min-latency", f"{SLOW_NS}ns", "--json"], out, "trace-json")
    tmux("kill-session", "-t", "trace")
    tmux(
        "new-session",
        "-d",
        "-s",
        "trace",
        "-x",
        "220",
        "-y",
        "50",
        f"cd {ROOT} && {' '.join(BPFNFS)} trace -m {SLOW_NS}ns 2>{out}/trace-text.stderr",
    )
    try:
        end = time.monotonic() + 300
        err = out / "trace-json.stderr"
        while time.monotonic() < end and "attached" not in err.read_text(errors="replace"):
            time.sleep(0.5)
        while time.monotonic() < end and "LAT(ms)" not in tmux("capture-pane", "-p", "-t", "trace"):
            time.sleep(0.5)
        c.add(
            "trace attaches (JSON and tmux text)",
            "attached" in err.read_text(errors="replace")
            and "LAT(ms)" in tmux("capture-pane", "-p", "-t", "trace"),
        )
        time.sleep(3)
        h0 = _scrape_hist(PORT)
        workload("fast")  # whatever is slow here must be traced too
        sh("tc qdisc add dev lo root netem delay 150ms")
        try:
            drop_caches()
            for mp in MOUNTS:
                sh(f"dd if={mp}/prom-w of=/dev/null bs=4k count=1 iflag=direct status=none")
                sh(f"ls {mp} > /dev/null")
        finally:
            sh("tc qdisc del dev lo root")
        time.sleep(3.5)
        h1 = _scrape_hist(PORT)
        time.sleep(1)
    finally:
        stop(jt)
        screen = tmux("capture-pane", "-p", "-t", "trace", "-S", "-200")
        (out / "trace-screen.txt").write_text(screen)
        tmux("send-keys", "-t", "trace", "C-c")
        time.sleep(1)
        tmux("kill-session", "-t", "trace")
    lines = [json.loads(ln) for ln in (out / "trace-json.stdout").read_text().splitlines() if ln.strip()]
    traced: dict[tuple[str, str], int] = {}
    for ev in lines:
        traced[(ev["mount"], ev["op"])] = traced.get((ev["mount"], ev["op"]), 0) + 1
    slow: dict[tuple[str, str], int] = {}
    for key, (le, total) in h1.items():
        le0, total0 = h0.get(key, (0.0, 0.0))
        n = int((total - le) - (total0 - le0))
        if n:
            slow[key] = n
    c.add(
        f"trace prints exactly the ops above {SLOW_NS} ns, per mount and op ({sum(slow.values())})",
        traced == slow and len(lines) >= 2,
        {"trace": str(traced), "histograms": str(slow)},
    )
    for mp in MOUNTS:
        hit = [
            ev for ev in lines if ev["op"] == "read" and ev["file"] == f"{mp}/prom-w" and ev["comm"] == "dd"
        ]
        c.add(
            f"trace shows the delayed dd read of {mp}/prom-w",
            len(hit) == 1 and hit[0]["latency_ms"] >= 131 and hit[0]["bytes"] == 4096,
            [str(ev) for ev in lines][:5],
        )
    err = (out / "trace-json.stderr").read_text(errors="replace")
    # No loss warning while it ran, and none in its exit summary.
    c.add(
        "trace lost nothing",
        "slow-op records lost" not in err and not re.search(r"printed, [1-9]\d* records lost", err),
        err[-500:],
    )
    text_lines = [ln for ln in screen.splitlines() if " dd " in ln and "/prom-w" in ln and " read " in ln]
    c.add("tmux trace screen shows the dd reads with file and latency", len(text_lines) == 2, screen[-1500:])


def check_compat(c: Checks, out: Path) -> None:
    agent = start(
        [
            *BPFNFS,
            "run",
            "--listen",
            f"127.0.0.1:{COMPAT_PORT}",
            "--quiet",
            "-i",
            "1",
            "--compat-bpfnfs-metrics",
        ],
        out,
        "compat",
    )
    try:
        if not wait_http(f"http://127.0.0.1:{COMPAT_PORT}/readyz", 200, 120):
            c.add("compat agent ready", False)
            return
        size = 2 << 20
        m0 = mountstats()
        sh(f"dd if=/dev/zero of=/mnt/nfs3/compat-file bs=64k count={size >> 16} conv=fsync status=none")
        drop_caches()
        sh("cat /mnt/nfs3/compat-file > /dev/null")
        time.sleep(3)
        m1 = mountstats()
        _code, text = http_get(f"http://127.0.0.1:{COMPAT_PORT}/metrics")
        (out / "compat-scrape.txt").write_text(text)
        vals: dict[str, float] = {}
        labels: dict[str, str] = {}
        for line in text.splitlines():
            m = re.match(r"^(nfs_\w+)\{(.*)\} (\S+)$", line)
            if m and 'file_path="compat-file"' in m.group(2) and 'mount_path="/mnt/nfs3"' in m.group(2):
                vals[m.group(1)] = float(m.group(3))
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))

        def delta(*ops: str) -> int:
            a, b = m0["/mnt/nfs3"].ops, m1["/mnt/nfs3"].ops
            return sum(b[o].ops - (a[o].ops if o in a else 0) for o in ops if o in b)

        want = {
            "nfs_write_size": size,
            "nfs_read_size": size,
            "nfs_write_count": delta("WRITE"),
            "nfs_read_count": delta("READ", "READ_PLUS"),
        }
        got = {k: vals.get(k) for k in want}
        c.add("compat series: sizes and RPC counts of a known file", got == want, {"got": got, "want": want})
        c.add(
            "compat latencies are positive",
            vals.get("nfs_read_latencies", 0) > 0 and vals.get("nfs_write_latencies", 0) > 0,
            vals,
        )
        c.add(
            "compat labels",
            bool(vals)
            and labels.get("node_name") == os.uname().nodename
            and labels.get("nfs_server", "").startswith("127.0.0.1:")
            and labels.get("dev_id", "").isdigit(),
            labels if vals else None,
        )
    finally:
        stop(agent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    c = Checks("lab.check_views")
    agent = start(
        [*BPFNFS, "run", "--listen", f"127.0.0.1:{PORT}", "--quiet", "-i", str(INTERVAL_S)], out, "exporter"
    )
    try:
        if check_prometheus(c, out) and agent.poll() is None:
            check_trace(c, out)
    except Exception as e:
        c.add(f"views check ran without error ({type(e).__name__})", False, str(e))
    finally:
        if agent is not None:  # always: a leftover agent would fail every later check
            rc = stop(agent)
            c.add("exporter agent exits 0 on SIGTERM", rc == 0, (out / "exporter.stderr").read_text()[-800:])
    try:
        check_compat(c, out)
    except Exception as e:
        c.add(f"compat check ran without error ({type(e).__name__})", False, str(e))
    try:
        from lab.check_top import check_top

        check_top(c, out)
    except Exception as e:
        c.add(f"top check ran without error ({type(e).__name__})", False, str(e))
    c.add("no bpfnfs program left after the views", not our_programs(), our_programs())
    (out / "views.json").write_text(json.dumps({"checks": c.items, "failed": c.failed}, indent=1))
    log(f"{len(c.items) - c.failed}/{len(c.items)} checks passed")
    return 3 if c.failed else 0  # 3: checks failed (each test reports its own)


if __name__ == "__main__":
    sys.exit(main())
