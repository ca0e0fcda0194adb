"""`bpfnfs top`: a live full-screen view of NFS client activity.

Keys switch between the views of `bpfnfs --by ...` (mounts, syscall-side ops,
processes, cgroups, files) and cycle the sort order; rendering is a pure
function of one interval's reports so it can be tested without a terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import FrameType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bpfnfs.agent import Agent
from bpfnfs.collect.losses import loss_notes
from bpfnfs.collect.snapshot import RpcOpStats
from bpfnfs.collect.views import MountReport, Report, diff_report, file_rows, identity_rows
from bpfnfs.config import SORT, Config
from bpfnfs.enrich.identity import Identity

EXIT_NO_TERMINAL = 2
NO_TERMINAL = "bpfnfs top needs a terminal; use `bpfnfs stat` or `bpfnfs --json`"
VIEW_KEYS = {"m": "mount", "o": "op", "p": "process", "c": "cgroup", "k": "pod", "f": "file"}
VIEW_NAMES = {
    "mount": "mounts",
    "op": "ops",
    "process": "processes",
    "cgroup": "cgroups",
    "pod": "pods",
    "file": "files",
}
WAITING = "waiting for NFS modules (sunrpc, nfs): bpfnfs attaches when an NFS client loads"
MESSAGE_SECONDS = 10.0  # how long an agent message stays in the footer
RESIZE_POLL = 0.5  # seconds: a resized terminal is redrawn at least this often
PATH_WIDTH = 60


# ---- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopState:
    view: str  # one of config.BY
    sort: str  # one of config.SORT
    quit: bool = False


def handle_key(state: TopState, key: str) -> TopState:
    """The state after one key press; unknown keys change nothing."""
    k = key.lower()  # caps lock on still works
    if k == "q":
        return replace(state, quit=True)
    if k in VIEW_KEYS:
        return replace(state, view=VIEW_KEYS[k])
    if k == "s":
        return replace(state, sort=SORT[(SORT.index(state.sort) + 1) % len(SORT)])
    return state


def split_keys(data: bytes) -> str:
    """Key presses from one read of the terminal. Escape sequences (arrows, function
    keys) end in letters that are also keys, so everything from an ESC on is dropped."""
    return data.decode(errors="ignore").split("\x1b", 1)[0]


# ---- filters -------------------------------------------------------------------------------------


def select_mounts(cfg: Config, pairs: Iterable[MountReport]) -> list[MountReport]:
    """--mount / --server, as in `bpfnfs` itself."""
    out = list(pairs)
    if cfg.filter.mount:
        out = [m for m in out if m.mount_point == cfg.filter.mount]
    if cfg.filter.server:
        out = [m for m in out if m.server in (cfg.filter.server, f"[{cfg.filter.server}]")]
    return out


@dataclass(frozen=True)
class RowFilter:
    """--comm/--pid/--cgroup on identity rows: the kernel filters only the syscall side,
    while billed wire I/O (READ/WRITE completions run in other tasks) needs it here."""

    comm: str | None = None
    pid: int | None = None
    cgroup_ids: frozenset[int] = field(default_factory=frozenset)

    def keep(self, by: str, row: dict[str, Any]) -> bool:
        if self.comm is not None and row.get("comm", self.comm) != self.comm:
            return False
        if self.pid is not None and by == "process" and row.get("pid") != self.pid:
            return False
        return not (self.cgroup_ids and by == "cgroup" and row.get("cgroup_id") not in self.cgroup_ids)


# ---- formatting ----------------------------------------------------------------------------------


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds:.1f}"


def _kbs(nbytes: float, seconds: float) -> str:
    return f"{nbytes / 1024.0 / seconds:.1f}"


def _avg_ms(ns: int, n: int) -> str:
    return f"{ns / n / 1e6:.3f}" if n else "-"


def _q_ms(q: float | None) -> str:
    return f"{q * 1e3:.3f}" if q is not None else "-"


def _avg(ns: int, n: int) -> float:
    return ns / n if n else 0.0


def _table(first: str, *cols: str) -> Table:
    """Numbers never wrap nor shrink: on a narrow terminal only the name column folds."""
    t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", show_edge=False)
    t.add_column(Text(first), overflow="fold")  # Text: "[pid]" is not markup
    for c in cols:
        t.add_column(c, justify="right", no_wrap=True)
    return t


def _mount_title(m: MountReport) -> Text:
    t = Text(m.mount_point, style="bold cyan")
    t.append(f"  {m.server or '?'}:{m.export or '?'}  nfs v{m.nfs_version or '?'}  dev {m.dev}")
    return t


def _more(t: Table, hidden: int) -> None:
    if hidden > 0:
        t.add_row(Text(f"… {hidden} more", style="dim"))


def _error_names(errs: dict[str, int]) -> str:
    return " ".join(f"{k}:{n}" for k, n in sorted(errs.items()))


def _rpc_view(m: MountReport, sort: str, seconds: float) -> list[RenderableType]:
    io = m.io
    out: list[RenderableType] = [
        Text(
            f"  app read {_kbs(io.read_bytes + io.direct_read_bytes, seconds)}"
            f" write {_kbs(io.write_bytes + io.direct_write_bytes, seconds)} kB/s"
            f"   wire read {_kbs(io.server_read_bytes, seconds)}"
            f" write {_kbs(io.server_write_bytes, seconds)} kB/s",
            style="dim",
            no_wrap=True,
            overflow="ellipsis",
        )
    ]
    if not m.clients:
        why = "" if m.client_state in ("mapped", "probing") else f": {m.client_state}"
        return [*out, Text(f"  (RPC client not identified yet{why})", style="dim")]
    ops = m.moving_ops()
    if not ops:
        return [*out, Text("  no activity", style="dim")]
    keyf: Callable[[tuple[str, RpcOpStats]], Any] = {
        "ops": lambda kv: (-kv[1].ops, kv[0]),
        "bytes": lambda kv: (-(kv[1].bytes_sent + kv[1].bytes_recv), -kv[1].ops, kv[0]),
        "latency": lambda kv: (-_avg(kv[1].execute_ns, kv[1].ops), -kv[1].ops, kv[0]),
    }[sort]
    # Two-line headers: nfsiostat's columns fit 80 terminal columns.
    t = _table(
        "op",
        "ops/s",
        "kB/s",
        "avg queue\nms",
        "avg RTT\nms",
        "avg exe\nms",
        "p99 exe\nms",
        "retrans",
        "errors",
    )
    for name, s in sorted(ops.items(), key=keyf):
        nbytes = s.bytes_sent + s.bytes_recv
        t.add_row(
            Text(name),
            _rate(s.ops, seconds),
            _kbs(nbytes, seconds),
            _avg_ms(s.queue_ns, s.ops),
            _avg_ms(s.rtt_ns, s.ops),
            _avg_ms(s.execute_ns, s.ops),
            _q_ms(s.execute.quantile(0.99)),
            str(s.ntrans - s.ops),
            str(s.errors),
        )
    out.append(t)
    errs = m.errors_by_op()
    if errs:
        text = "; ".join(f"{layer}/{op} {_error_names(e)}" for (layer, op), e in sorted(errs.items()))
        out.append(Text(f"  errors: {text}", style="red"))
    return out


def _vfs_view(m: MountReport, sort: str, seconds: float) -> list[RenderableType]:
    ops = {k: v for k, v in m.vfs_by_op().items() if v.calls}
    if not ops:
        return [Text("  no activity", style="dim")]
    keyf: Callable[[str], Any] = {
        "ops": lambda op: (-ops[op].calls, op),
        "bytes": lambda op: (-ops[op].bytes, -ops[op].calls, op),
        "latency": lambda op: (-_avg(ops[op].latency_ns, ops[op].calls), -ops[op].calls, op),
    }[sort]
    errs = m.errors_by_op()
    t = _table("vfs op", "calls/s", "kB/s", "avg ms", "p99 ms", "errors")
    t.columns[-1].justify = "left"
    for op in sorted(ops, key=keyf):
        v = ops[op]
        names = _error_names(errs.get(("vfs", op), {}))
        t.add_row(
            Text(op),
            _rate(v.calls, seconds),
            _kbs(v.bytes, seconds),
            _avg_ms(v.latency_ns, v.calls),
            _q_ms(v.latency.quantile(0.99)),
            Text(f"{v.errors} {names}" if names else str(v.errors)),
        )
    return [t]


_IO_COLUMNS = ("ops/s", "read\nkB/s", "write\nkB/s", "wire rd\nkB/s", "wire wr\nkB/s", "avg ms", "errors")


def _identity_key(sort: str) -> Callable[[dict[str, Any]], Any]:
    return {
        "ops": lambda r: (-r["calls"], -r["wire_write_bytes"], str(r["name"])),
        "bytes": lambda r: (
            -(r["read_bytes"] + r["write_bytes"] + r["wire_read_bytes"] + r["wire_write_bytes"]),
            -r["calls"],
            str(r["name"]),
        ),
        "latency": lambda r: (-_avg(r["latency_ns"], r["calls"]), -r["calls"], str(r["name"])),
    }[sort]


def _identity_view(
    m: MountReport,
    by: str,
    sort: str,
    seconds: float,
    top: int,
    identity: Callable[[int], Identity],
    rows_filter: RowFilter,
) -> list[RenderableType]:
    rows = [r for r in identity_rows(m, by, identity) if rows_filter.keep(by, r)]
    if not rows:
        return [Text("  no activity", style="dim")]
    rows.sort(key=_identity_key(sort))
    t = _table({"process": "process [pid]", "cgroup": "cgroup", "pod": "namespace/pod"}[by], *_IO_COLUMNS)
    for r in rows[:top]:
        t.add_row(
            Text(str(r["name"])),  # not markup: a comm or path may hold "[...]"
            _rate(r["calls"], seconds),
            _kbs(r["read_bytes"], seconds),
            _kbs(r["write_bytes"], seconds),
            _kbs(r["wire_read_bytes"], seconds),
            _kbs(r["wire_write_bytes"], seconds),
            _avg_ms(r["latency_ns"], r["calls"]),
            str(r["errors"]),
        )
    _more(t, len(rows) - top)
    return [t]


def _file_name(r: dict[str, Any]) -> str:
    name = str(r["path"] or f"fileid {r['fileid']}")
    if r.get("path_truncated"):
        name = "…" + name  # the kernel stopped walking up before the mount's root
    # Keep the end: the file name tells files apart, the mount is in the title.
    return name if len(name) <= PATH_WIDTH else "…" + name[-(PATH_WIDTH - 1) :]


def _file_view(
    m: MountReport, paths: dict[tuple[int, int], tuple[str, bool]], sort: str, seconds: float, top: int
) -> list[RenderableType]:
    rows = file_rows(m, paths, max(1, len(m.files)), sort)
    if not rows:
        return [Text("  no activity", style="dim")]
    keyf: Callable[[dict[str, Any]], Any] = {
        "ops": lambda r: (-r["ops"], -(r["read_bytes"] + r["write_bytes"]), r["fileid"]),
        "bytes": lambda r: (
            -(r["read_bytes"] + r["write_bytes"] + r["wire_read_bytes"] + r["wire_write_bytes"]),
            -r["ops"],
            r["fileid"],
        ),
        "latency": lambda r: (-_avg(r["latency_ns"], r["ops"]), -r["ops"], r["fileid"]),
    }[sort]
    rows.sort(key=keyf)
    t = _table("file", *_IO_COLUMNS)
    for r in rows[:top]:
        t.add_row(
            Text(_file_name(r)),
            _rate(r["ops"], seconds),
            _kbs(r["read_bytes"], seconds),
            _kbs(r["write_bytes"], seconds),
            _kbs(r["wire_read_bytes"], seconds),
            _kbs(r["wire_write_bytes"], seconds),
            _avg_ms(r["latency_ns"], r["ops"]),
            str(r["errors"]),
        )
    _more(t, len(rows) - top)
    return [t]


# ---- the screen ----------------------------------------------------------------------------------


def header(view: str, sort: str, tier: str | None, interval: float, stamp: str | None = None) -> list[Text]:
    line = Text("bpfnfs top", style="bold")
    if stamp:
        line.append(f"  {stamp}")
    line.append(f"  tier {tier or '-'}  interval {interval:g} s  ")
    line.append(f"view {VIEW_NAMES[view]}", style="bold")
    line.append("  ")
    line.append(f"sort {sort}", style="bold")
    keys = Text("keys:", style="dim")
    for k, v in VIEW_KEYS.items():
        keys.append("  " if k != "m" else " ")
        keys.append(f"{k} {VIEW_NAMES[v]}", style="reverse" if v == view else "")
    keys.append("  s sort  q quit")
    for t in (line, keys):
        t.no_wrap, t.overflow = True, "ellipsis"
    return [line, keys]


def footer(rep: Report | None, message: str | None = None) -> list[Text]:
    """Loss counters and probes not attached (as `bpfnfs` prints under its table)."""
    lines: list[Text] = []
    if rep is not None:
        notes = loss_notes(rep.snapshot)
        if notes:
            lines.append(Text("lost: " + ", ".join(notes), style="bold red"))
        if rep.probe_failures:
            names = ", ".join(sorted(rep.probe_failures))
            lines.append(Text(f"{len(rep.probe_failures)} probes not attached: {names}", style="yellow"))
    if message:
        lines.append(Text(message, style="dim"))
    for t in lines:
        t.no_wrap, t.overflow = True, "ellipsis"
    return lines


def render(
    view: str,
    sort: str,
    rep: Report | None,
    deltas: list[MountReport],
    seconds: float,
    *,
    tier: str | None = None,
    interval: float = 1.0,
    top: int = 20,
    identity: Callable[[int], Identity] = lambda cg: Identity(cg, None),
    rows_filter: RowFilter | None = None,
    filtered: bool = False,
    idle: str = WAITING,
    message: str | None = None,
    stamp: str | None = None,
    screen: bool = False,
) -> RenderableType:
    """One frame. deltas: the interval's reports of the mounts to show (already filtered);
    rep None: nothing collected yet, `idle` says why. screen: fit the terminal's height,
    cropping the body so that header and footer stay visible."""
    seconds = max(seconds, 1e-6)
    body: list[RenderableType] = []
    if rep is None:
        body.append(Text(idle, style="yellow"))
    elif not deltas:
        body.append(Text("no NFS mounts" + (" match the filters" if filtered else " yet"), style="dim"))
    for m in deltas if rep is not None else []:
        if body:
            body.append(Text(""))
        body.append(_mount_title(m))
        if view == "mount":
            body.extend(_rpc_view(m, sort, seconds))
        elif view == "op":
            body.extend(_vfs_view(m, sort, seconds))
        elif view in ("process", "cgroup", "pod"):
            body.extend(_identity_view(m, view, sort, seconds, top, identity, rows_filter or RowFilter()))
        else:
            body.extend(_file_view(m, rep.paths if rep else {}, sort, seconds, top))
    head = header(view, sort, tier, interval, stamp)
    foot = footer(rep, message)
    if not screen:
        return Group(*head, Text(""), *body, *([Text(""), *foot] if foot else []))
    layout = Layout()
    parts = [Layout(Group(*head), size=len(head) + 1), Layout(Group(*body))]
    if foot:
        parts.append(Layout(Group(*foot), size=len(foot)))
    layout.split_column(*parts)
    return layout


# ---- the loop ------------------------------------------------------------------------------------


class _Terminate(Exception):
    """SIGTERM: leave through the same cleanup as q and Ctrl-C."""


class _Messages(io.TextIOBase):
    """Stands in for stderr while the screen is up: the agent's messages would tear it.
    The last one is shown in the footer; all are replayed to stderr on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=200)
        self.last_at = 0.0
        self._partial = ""

    def write(self, s: str) -> int:
        self._partial += s
        *done, self._partial = self._partial.split("\n")
        for line in done:
            if line.strip():
                self.lines.append(line)
                self.last_at = time.monotonic()
        return len(s)

    def recent(self) -> str | None:
        if self.lines and time.monotonic() - self.last_at < MESSAGE_SECONDS:
            return self.lines[-1]
        return None

    def replay(self) -> None:
        for line in self.lines:
            print(line, file=sys.stderr)
        self.lines.clear()


class _Top:
    """One `bpfnfs top` session: the latest interval and what to show of it."""

    def __init__(self, cfg: Config, agent: Agent, messages: _Messages) -> None:
        self.cfg = cfg
        self.agent = agent
        self.messages = messages
        self.state = TopState(cfg.view.by, cfg.view.sort)
        self.prev: Report | None = None
        self.rep: Report | None = None
        self.deltas: list[MountReport] = []
        self.seconds = cfg.collection.interval
        self.idle = "attaching BPF programs…"

    def collect(self) -> None:
        rep = self.agent.collect()
        if rep is None:
            self.idle = WAITING
            return
        start = self.prev.snapshot.taken if self.prev else (self.agent.attached_at or rep.snapshot.taken)
        self.seconds = rep.snapshot.taken - start
        self.deltas = select_mounts(self.cfg, diff_report(rep, self.prev))
        self.prev = self.rep = rep

    def frame(self) -> RenderableType:
        cfg = self.cfg
        return render(
            self.state.view,
            self.state.sort,
            self.rep,
            self.deltas,
            self.seconds,
            tier=self.agent.tier,
            interval=cfg.collection.interval,
            top=cfg.view.top,
            identity=self.agent.identity.of,
            rows_filter=RowFilter(cfg.filter.comm, cfg.filter.pid, frozenset(self.agent.cgroup_filter_ids)),
            filtered=bool(cfg.filter.mount or cfg.filter.server),
            idle=self.idle,
            message=self.messages.recent(),
            stamp=datetime.now().strftime("%H:%M:%S"),
            screen=True,
        )


def _read_keys(fd: int, timeout: float) -> str | None:
    """Keys typed within timeout seconds ('' if none); None when the terminal is gone."""
    ready, _w, _x = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return ""
    data = os.read(fd, 64)
    return split_keys(data) if data else None


def _loop(top: _Top, live: Live, fd: int) -> None:
    interval = top.cfg.collection.interval
    live.update(top.frame(), refresh=True)
    next_tick = time.monotonic()
    size = live.console.size
    while True:
        now = time.monotonic()
        if now >= next_tick:
            top.collect()
            # A slow collection (attaching) must not cause a burst of catch-up ticks.
            next_tick = max(next_tick + interval, time.monotonic() + interval / 10)
            live.update(top.frame(), refresh=True)
        keys = _read_keys(fd, min(next_tick - time.monotonic(), RESIZE_POLL))
        if keys is None:
            return
        for k in keys:
            top.state = handle_key(top.state, k)
            if top.state.quit:
                return
        if keys or live.console.size != size:
            size = live.console.size
            live.update(top.frame(), refresh=True)


def run_top(cfg: Config, agent_factory: Callable[[Config], Agent] = Agent) -> int:
    """The live view until q, Ctrl-C or SIGTERM (exit 0); 2 without a terminal. Errors from
    preflight and collection (RequirementError, LoadError, ...) propagate to the caller."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(f"bpfnfs: error: {NO_TERMINAL}", file=sys.stderr)
        return EXIT_NO_TERMINAL
    # Per-process keys in the kernel whatever the start view: `p` may be pressed any time.
    agent = agent_factory(cfg.replace(collection={"per_pid": True}))
    messages = _Messages()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Terminate

    fd = sys.stdin.fileno()
    old_attrs = termios.tcgetattr(fd)
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        agent.preflight()  # before the screen: its errors are printed on a normal terminal
        tty.setcbreak(fd)  # single keys, no echo; Ctrl-C still raises KeyboardInterrupt
        console = Console()
        with (
            contextlib.redirect_stderr(messages),
            Live(
                console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
            ) as live,
        ):
            _loop(_Top(cfg, agent, messages), live, fd)
    except (KeyboardInterrupt, _Terminate):
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old_attrs)
        signal.signal(signal.SIGTERM, old_term)
        agent.close()
        messages.replay()
    return 0
