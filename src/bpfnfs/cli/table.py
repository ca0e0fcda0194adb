"""nfsiostat-style text report per mount and op."""

from __future__ import annotations

from bpfnfs.collect.snapshot import RpcOpStats
from bpfnfs.collect.views import MountReport

# Ops nfsiostat shows first; the rest follow by activity.
_ORDER = ("READ", "READ_PLUS", "WRITE", "COMMIT")


def _ms(ns: int, ops: int) -> str:
    return f"{ns / ops / 1e6:.3f}" if ops else "0.000"


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100.0 * part / whole:.1f}%)" if whole else f"{part} (0.0%)"


def format_mount(m: MountReport, seconds: float, tier: str | None, all_ops: bool = False) -> list[str]:
    io = m.io
    kb = 1024.0 * seconds
    app_r = (io.read_bytes + io.direct_read_bytes) / kb
    app_w = (io.write_bytes + io.direct_write_bytes) / kb
    server = m.server or "?"
    if m.server_name and m.server_address:  # from DNS (features.dns)
        server = f"{m.server_name} ({m.server_address})"
    where = m.mount_point
    if m.volume is not None:  # a pod volume: say whose, not only kubelet's long path
        v = m.volume
        who = f"{v['namespace']}/{v['pod']}" if v.get("pod") else f"pod {v['pod_uid']}"
        claim = f", claim {v['persistentvolumeclaim']}" if v.get("persistentvolumeclaim") else ""
        where = f"{where} (volume {v['volume']} of {who}{claim})"
    lines = [
        f"{server}:{m.export or '?'} mounted on {where} (nfs v{m.nfs_version or '?'}, dev {m.dev}):",
        f"   app read {app_r:10.1f} kB/s   app write {app_w:10.1f} kB/s   "
        f"wire read {io.server_read_bytes / kb:10.1f} kB/s   "
        f"wire write {io.server_write_bytes / kb:10.1f} kB/s",
    ]
    if not m.clients:
        why = "" if m.client_state in ("mapped", "probing") else f": {m.client_state}"
        lines.append(f"   (RPC client not identified yet{why})")
        return lines
    ops = m.ops if all_ops else m.moving_ops()
    if not ops:
        lines.append("   no RPCs in this interval")
        return lines
    lines.append(
        f"   {'op':<16}{'ops/s':>10}{'kB/s':>11}{'kB/op':>9}{'retrans':>14}"
        f"{'avg queue ms':>14}{'avg RTT ms':>12}{'avg exe ms':>12}{'errors':>14}"
    )
    names = [n for n in _ORDER if n in ops] + sorted(
        (n for n in ops if n not in _ORDER), key=lambda n: (-ops[n].ops, n)
    )
    for name in names:
        s: RpcOpStats = ops[name]
        nbytes = s.bytes_sent + s.bytes_recv
        kbs = f"{nbytes / kb:11.1f}"
        kbop = f"{nbytes / 1024.0 / s.ops:9.2f}" if s.ops else f"{'-':>9}"
        retrans = _pct(s.ntrans - s.ops, s.ops)
        lines.append(
            f"   {name:<16}{s.ops / seconds:10.2f}{kbs}{kbop}{retrans:>14}"
            f"{_ms(s.queue_ns, s.ops):>14}{_ms(s.rtt_ns, s.ops):>12}{_ms(s.execute_ns, s.ops):>12}"
            f"{_pct(s.errors, s.ops):>14}"
        )
    return lines


# ---- syscall-side views (--by op|process|cgroup|file) ------------------------------------------


def _avg_ms(ns: int, n: int) -> str:
    return f"{ns / n / 1e6:.3f}" if n else "-"


def format_vfs_ops(m: MountReport, seconds: float) -> list[str]:
    ops = {k: v for k, v in m.vfs_by_op().items() if v.calls}
    if not ops:
        return ["   no syscall-side ops in this interval"]
    errs = m.errors_by_op()
    lines = [f"   {'vfs op':<14}{'calls/s':>10}{'kB/s':>11}{'avg ms':>10}{'p99 ms':>10}  errors"]
    for op, v in sorted(ops.items(), key=lambda kv: -kv[1].calls):
        q = v.latency.quantile(0.99)
        p99 = f"{q * 1000:.3f}" if q is not None else "-"
        e = errs.get(("vfs", op), {})
        etxt = " ".join(f"{k}:{n}" for k, n in sorted(e.items())) or "0"
        lines.append(
            f"   {op:<14}{v.calls / seconds:10.2f}{v.bytes / 1024 / seconds:11.1f}"
            f"{_avg_ms(v.latency_ns, v.calls):>10}{p99:>10}  {etxt}"
        )
    return lines


def format_errors(m: MountReport) -> list[str]:
    errs = m.errors_by_op()
    if not errs:
        return []
    parts = [
        f"{layer}/{op} " + ",".join(f"{k}:{n}" for k, n in sorted(e.items()))
        for (layer, op), e in sorted(errs.items())
    ]
    return ["   errors: " + "; ".join(parts)]


def format_identities(rows: list[dict[str, object]], seconds: float, key_title: str) -> list[str]:
    if not rows:
        return ["   no activity in this interval"]
    kb = 1024.0 * seconds
    lines = [
        f"   {key_title:<34}{'ops/s':>9}{'read kB/s':>11}{'write kB/s':>11}{'avg ms':>9}{'errors':>8}"
        f"{'wire rd kB/s':>13}{'wire wr kB/s':>13}"
    ]
    for r in rows:
        lines.append(
            f"   {str(r['name'])[:34]:<34}{int(r['calls']) / seconds:9.1f}{int(r['read_bytes']) / kb:11.1f}"
            f"{int(r['write_bytes']) / kb:11.1f}{_avg_ms(int(r['latency_ns']), int(r['calls'])):>9}"
            f"{int(r['errors']):>8}{int(r['wire_read_bytes']) / kb:13.1f}"
            f"{int(r['wire_write_bytes']) / kb:13.1f}"
        )
    return lines


def format_files(rows: list[dict[str, object]], seconds: float) -> list[str]:
    if not rows:
        return ["   no file activity in this interval"]
    kb = 1024.0 * seconds
    lines = [f"   {'file':<44}{'ops/s':>9}{'read kB/s':>11}{'write kB/s':>11}{'avg ms':>9}{'errors':>8}"]
    for r in rows:
        name = str(r["path"] or f"fileid {r['fileid']}")
        if len(name) > 44:
            name = "…" + name[-43:]
        lines.append(
            f"   {name:<44}{int(r['ops']) / seconds:9.1f}{int(r['read_bytes']) / kb:11.1f}"
            f"{int(r['write_bytes']) / kb:11.1f}{_avg_ms(int(r['latency_ns']), int(r['ops'])):>9}"
            f"{int(r['errors']):>8}"
        )
    return lines
