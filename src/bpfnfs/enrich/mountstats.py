"""Parser for ``/proc/<pid>/mountstats``.

Every mount contributes one line (``show_vfsstat()`` in fs/proc_namespace.c)::

    device <source> mounted on <mount point> with fstype <fstype>[ statvers=<v>]

NFS mounts add ``statvers=`` and a block of tab-indented lines written by
``nfs_show_stats()`` (fs/nfs/super.c) and ``rpc_clnt_show_stats()``
(net/sunrpc/stats.c)::

    \\topts:\\trw,vers=3,...
    \\tage:\\t3600
    \\tevents:\\t<27 counters>
    \\tbytes:\\t<8 counters>
    \\tRPC iostats version: 1.1  p/v: 100003/3 (nfs)
    \\txprt:\\ttcp <transport-specific counters>
    \\tper-op statistics
    \\t        READ: ops ntrans timeouts bytes_sent bytes_recv queue rtt execute [errors]

Only NFS mounts are returned.  Unknown keys are ignored so newer kernels keep parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bpfnfs.enrich.mountinfo import parse_super_options, unescape_octal

__all__ = [
    "BYTES_NAMES",
    "EVENT_NAMES",
    "XPRT_GAUGES",
    "MountstatsError",
    "NfsMountStats",
    "OpStats",
    "diff",
    "parse_mountstats",
    "read_mountstats",
]

# enum nfs_stat_eventcounters (include/linux/nfs_iostat.h), kernel order.
EVENT_NAMES: tuple[str, ...] = (
    "inoderevalidate",
    "dentryrevalidate",
    "datainvalidate",
    "attrinvalidate",
    "vfsopen",
    "vfslookup",
    "vfsaccess",
    "vfsupdatepage",
    "vfsreadpage",
    "vfsreadpages",
    "vfswritepage",
    "vfswritepages",
    "vfsgetdents",
    "vfssetattr",
    "vfsflush",
    "vfsfsync",
    "vfslock",
    "vfsrelease",
    "congestionwait",
    "setattrtrunc",
    "extendwrite",
    "sillyrename",
    "shortread",
    "shortwrite",
    "delay",
    "pnfs_read",
    "pnfs_write",
)

# enum nfs_stat_bytecounters, kernel order.
BYTES_NAMES: tuple[str, ...] = (
    "normalreadbytes",
    "normalwritebytes",
    "directreadbytes",
    "directwritebytes",
    "serverreadbytes",
    "serverwritebytes",
    "readpages",
    "writepages",
)

# Positions in an ``xprt:`` line that are instantaneous values, not counters
# (source port, idle seconds, max_slots); diff() keeps the newer value for them.
# New kernels only append fields, so the positions hold across versions.
XPRT_GAUGES: dict[str, frozenset[int]] = {
    "tcp": frozenset({0, 4, 10}),
    "udp": frozenset({0, 7}),
    "local": frozenset({3, 9}),
    "rdma": frozenset({0, 4}),
}

_DEVICE_LINE = re.compile(
    # The device may be empty ("device  mounted on"); "no device" when it is NULL.
    r"(?:device (?P<device>\S*)|no device) mounted on (?P<mnt>\S+) with fstype (?P<fstype>\S+)"
    r"(?: (?P<rest>.*))?"
)
_STATVERS = re.compile(r"(?:^|\s)statvers=(\S+)")
_RPC_IOSTATS = re.compile(
    r"RPC iostats version:\s*(?P<ver>\S+)\s+p/v:\s*(?P<prog>[0-9]+)/(?P<vers>[0-9]+)"
    r"(?:\s*\((?P<name>[^)]*)\))?"
)
# Procedures without a name are printed by number ("%12u").
_OP_NAME = re.compile(r"[A-Za-z0-9_]+")
_UINT = re.compile(r"[0-9]+")
_INT = re.compile(r"-?[0-9]+")
_MAX_SHOWN = 120


class MountstatsError(ValueError):
    """A malformed line in mountstats; ``args`` is ``(lineno, mount, line, reason)``."""

    def __init__(self, lineno: int, mount: str | None, line: str, reason: str) -> None:
        super().__init__(lineno, mount, line, reason)
        self.lineno = lineno
        self.mount = mount
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        shown = self.line if len(self.line) <= _MAX_SHOWN else self.line[: _MAX_SHOWN - 3] + "..."
        where = f" (mount {self.mount})" if self.mount is not None else ""
        return f"mountstats line {self.lineno}{where} is malformed ({self.reason}): {shown!r}"


@dataclass(frozen=True, slots=True)
class OpStats:
    """Cumulative per-RPC-procedure counters; times are milliseconds summed over all calls.

    ``errors`` is None with RPC iostats 1.0, which has no such column.
    """

    ops: int
    ntrans: int
    timeouts: int
    bytes_sent: int
    bytes_recv: int
    queue_ms: int
    rtt_ms: int
    execute_ms: int
    errors: int | None = None

    def __sub__(self, other: OpStats) -> OpStats:
        if not isinstance(other, OpStats):
            return NotImplemented
        return OpStats(
            ops=self.ops - other.ops,
            ntrans=self.ntrans - other.ntrans,
            timeouts=self.timeouts - other.timeouts,
            bytes_sent=self.bytes_sent - other.bytes_sent,
            bytes_recv=self.bytes_recv - other.bytes_recv,
            queue_ms=self.queue_ms - other.queue_ms,
            rtt_ms=self.rtt_ms - other.rtt_ms,
            execute_ms=self.execute_ms - other.execute_ms,
            errors=None if self.errors is None else self.errors - (other.errors or 0),
        )


_ZERO_OP = OpStats(0, 0, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class NfsMountStats:
    """The statistics block of one NFS mount (or, from diff(), the change between two).

    Frozen but not hashable (it holds dicts and lists); do not mutate the containers.
    ``rpc_version``/``prog``/``vers`` are None when the RPC section is absent.
    ``events``/``bytes`` are keyed by EVENT_NAMES/BYTES_NAMES; values beyond the known
    names (a newer kernel) are kept as ``"events[<i>]"``/``"bytes[<i>]"``.
    """

    device: str
    mount_point: str
    fstype: str
    statvers: str
    age: int
    bytes: dict[str, int]
    events: dict[str, int]
    rpc_version: str | None
    prog: int | None
    vers: int | None
    xprt: list[tuple[str, list[int]]]
    ops: dict[str, OpStats]
    opts: dict[str, str] = field(default_factory=dict)
    prog_name: str | None = None


class _Block:
    """Mutable accumulator for one NFS block while its lines are read."""

    def __init__(self, device: str, mount_point: str, fstype: str, statvers: str) -> None:
        self.device = device
        self.mount_point = mount_point
        self.fstype = fstype
        self.statvers = statvers
        self.age = 0
        self.bytes: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.rpc_version: str | None = None
        self.prog: int | None = None
        self.vers: int | None = None
        self.prog_name: str | None = None
        self.xprt: list[tuple[str, list[int]]] = []
        self.ops: dict[str, OpStats] = {}
        self.opts: dict[str, str] = {}
        self.in_ops = False

    def freeze(self) -> NfsMountStats:
        return NfsMountStats(
            device=self.device,
            mount_point=self.mount_point,
            fstype=self.fstype,
            statvers=self.statvers,
            age=self.age,
            bytes=self.bytes,
            events=self.events,
            rpc_version=self.rpc_version,
            prog=self.prog,
            vers=self.vers,
            xprt=self.xprt,
            ops=self.ops,
            opts=self.opts,
            prog_name=self.prog_name,
        )


class _Err:
    """Builds MountstatsError for the line being parsed."""

    __slots__ = ("line", "lineno", "mount")

    def __init__(self, lineno: int, mount: str | None, line: str) -> None:
        self.lineno = lineno
        self.mount = mount
        self.line = line

    def __call__(self, reason: str) -> MountstatsError:
        return MountstatsError(self.lineno, self.mount, self.line, reason)


def _ints(values: list[str], pattern: re.Pattern[str], err: _Err) -> list[int]:
    for v in values:
        if not pattern.fullmatch(v):
            raise err(f"{v!r} is not an integer")
    return [int(v) for v in values]


def _named(names: tuple[str, ...], values: list[int], what: str) -> dict[str, int]:
    out = dict(zip(names, values, strict=False))
    for i in range(len(names), len(values)):
        out[f"{what}[{i}]"] = values[i]
    return out


def _parse_op(block: _Block, body: str, err: _Err) -> None:
    name, sep, rest = body.partition(":")
    name = name.strip()
    if not sep or not _OP_NAME.fullmatch(name):
        raise err("expected a per-op line '<NAME>: <counters>'")
    values = _ints(rest.split(), _UINT, err)
    # 8 columns with RPC iostats 1.0, 9 (adds errors) with 1.1; extra columns from a
    # future version are ignored rather than rejected.
    if len(values) < 8:
        raise err(f"per-op line for {name} has {len(values)} counters, expected 8 or 9")
    ops, ntrans, timeouts, sent, recv, queue, rtt, execute = values[:8]
    block.ops[name] = OpStats(
        ops, ntrans, timeouts, sent, recv, queue, rtt, execute, values[8] if len(values) > 8 else None
    )


def _parse_block_line(block: _Block, body: str, err: _Err) -> None:
    if block.in_ops:
        _parse_op(block, body, err)
        return
    if body.startswith("RPC iostats version:"):
        m = _RPC_IOSTATS.match(body)
        if m is None:
            raise err("cannot parse the 'RPC iostats version' line")
        block.rpc_version = m["ver"]
        block.prog = int(m["prog"])
        block.vers = int(m["vers"])
        block.prog_name = m["name"]
        return
    if body == "per-op statistics":
        block.in_ops = True
        return
    key, sep, value = body.partition(":")
    if not sep:
        # Not "key:"; a newer kernel's free-form line, skipped like unknown keys.
        return
    value = value.strip()
    if key == "age":
        if not _UINT.fullmatch(value):
            raise err(f"age {value!r} is not an integer")
        block.age = int(value)
    elif key == "events":
        block.events = _named(EVENT_NAMES, _ints(value.split(), _UINT, err), "events")
    elif key == "bytes":
        block.bytes = _named(BYTES_NAMES, _ints(value.split(), _UINT, err), "bytes")
    elif key == "xprt":
        parts = value.split()
        if not parts or _INT.fullmatch(parts[0]):
            raise err("xprt line has no transport name")
        # %ld fields (idle time) may legitimately be negative, hence _INT.
        block.xprt.append((parts[0], _ints(parts[1:], _INT, err)))
    elif key == "opts":
        block.opts = parse_super_options(value)
    # Anything else (caps, sec, nfsv4, impl_id, fsc, future keys) is not needed here.


def parse_mountstats(text: str) -> dict[str, NfsMountStats]:
    """Parse mountstats text into ``{mount point: NfsMountStats}`` for NFS mounts only.

    Mount points and devices are unescaped.  If a mount point appears twice (over-mounting),
    the later entry, which is the visible one, wins.
    """
    result: dict[str, NfsMountStats] = {}
    block: _Block | None = None

    def finish() -> None:
        if block is not None:
            result[block.mount_point] = block.freeze()

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line[0] in " \t":
            if block is not None:
                _parse_block_line(block, line.strip(), _Err(lineno, block.mount_point, line))
            # Indented lines under a non-NFS mount: no known kernel writes them; skip.
            continue
        m = _DEVICE_LINE.fullmatch(line)
        if m is None:
            raise MountstatsError(
                lineno, None, line, "expected 'device <dev> mounted on <dir> with fstype <type>'"
            )
        finish()
        block = None
        statvers = _STATVERS.search(m["rest"] or "")
        if statvers is not None:
            block = _Block(
                device=unescape_octal(m["device"] or ""),
                mount_point=unescape_octal(m["mnt"]),
                fstype=unescape_octal(m["fstype"]),
                statvers=statvers.group(1),
            )
    finish()
    return result


def read_mountstats(pid: int | str = "self", proc: str = "/proc") -> dict[str, NfsMountStats]:
    """Read and parse ``<proc>/<pid>/mountstats``; OSError propagates."""
    path = Path(proc) / str(pid) / "mountstats"
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return parse_mountstats(text)


def _diff_counters(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _diff_xprt(
    after: list[tuple[str, list[int]]], before: list[tuple[str, list[int]]]
) -> list[tuple[str, list[int]]]:
    out: list[tuple[str, list[int]]] = []
    for i, (transport, values) in enumerate(after):
        base: list[int] = []
        # Transports are matched by position (nconnect keeps them in order); a different
        # transport in that slot means a new connection, which diffs against zero.
        if i < len(before) and before[i][0] == transport:
            base = before[i][1]
        gauges = XPRT_GAUGES.get(transport, frozenset())
        out.append(
            (
                transport,
                [v if j in gauges or j >= len(base) else v - base[j] for j, v in enumerate(values)],
            )
        )
    return out


def _diff_one(after: NfsMountStats, before: NfsMountStats | None) -> NfsMountStats:
    # A changed device/fstype or a younger age means the mount point was remounted:
    # its counters restarted, so the old sample is no baseline.
    if before is not None and (
        before.device != after.device or before.fstype != after.fstype or after.age < before.age
    ):
        before = None
    if before is None:
        return replace(
            after,
            bytes=dict(after.bytes),
            events=dict(after.events),
            xprt=_diff_xprt(after.xprt, []),
            ops={name: op - _ZERO_OP for name, op in after.ops.items()},
            opts=dict(after.opts),
        )
    return replace(
        after,
        age=after.age - before.age,
        bytes=_diff_counters(after.bytes, before.bytes),
        events=_diff_counters(after.events, before.events),
        xprt=_diff_xprt(after.xprt, before.xprt),
        ops={name: op - before.ops.get(name, _ZERO_OP) for name, op in after.ops.items()},
        opts=dict(after.opts),
    )


def diff(before: Mapping[str, NfsMountStats], after: Mapping[str, NfsMountStats]) -> dict[str, NfsMountStats]:
    """Per-mount change from ``before`` to ``after``, as NfsMountStats holding deltas.

    Every counter (events, bytes, per-op, xprt counters) is subtracted; ``age`` becomes
    the elapsed seconds; descriptive fields come from ``after``.  A mount or op present
    only in ``after`` (or a remounted one, see _diff_one) diffs against zero; mounts
    present only in ``before`` are dropped.  xprt gauges (XPRT_GAUGES) keep the
    ``after`` value.  The inputs are not modified.
    """
    return {mnt: _diff_one(stats, before.get(mnt)) for mnt, stats in after.items()}
