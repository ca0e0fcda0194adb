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
    lines = [
        f"{m.server or '?'}:{m.export or '?'} mounted on {m.mount_point} "
        f"(nfs v{m.nfs_version or '?'}, dev {m.dev}):",
        f"   app read {app_r:10.1f} kB/s   app write {app_w:10.1f} kB/s   "
        f"wire read {io.server_read_bytes / kb:10.1f} kB/s   "
        f"wire write {io.server_write_bytes / kb:10.1f} kB/s",
    ]
    if not m.clients:
        lines.append("   (RPC client not identified yet)")
        return lines
    ops = m.ops if all_ops else m.moving_ops()
    if not ops:
        lines.append("   no RPCs in this interval")
        return lines
    wire = tier == "btf"
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
        kbs = f"{nbytes / kb:11.1f}" if wire else f"{'-':>11}"
        kbop = f"{nbytes / 1024.0 / s.ops:9.2f}" if wire and s.ops else f"{'-':>9}"
        retrans = _pct(s.ntrans - s.ops, s.ops) if wire else "-"
        lines.append(
            f"   {name:<16}{s.ops / seconds:10.2f}{kbs}{kbop}{retrans:>14}"
            f"{_ms(s.queue_ns, s.ops):>14}{_ms(s.rtt_ns, s.ops):>12}{_ms(s.execute_ns, s.ops):>12}"
            f"{_pct(s.errors, s.ops):>14}"
        )
    return lines
