"""`bpfnfs` command line: `bpfnfs [run] [--interval S] [--count N] [--json] ...`."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from bpfnfs import __version__
from bpfnfs.agent import Agent, stderr_log
from bpfnfs.cli.table import format_errors, format_files, format_identities, format_mount, format_vfs_ops
from bpfnfs.collect.losses import loss_notes, losses_dict
from bpfnfs.collect.snapshot import LayoutError
from bpfnfs.collect.views import (
    MountReport,
    Report,
    diff_report,
    file_rows,
    identity_rows,
    mount_dict,
    vfs_dict,
)
from bpfnfs.config import BY, COUNTING, DEFAULT_PORT, SORT, Config, ConfigError
from bpfnfs.export.exporter import Exporter
from bpfnfs.export.http import ExportError
from bpfnfs.loader.libbpf import LibbpfError
from bpfnfs.loader.object import LoadError
from bpfnfs.probes.system import RequirementError
from bpfnfs.probes.tiers import TierError

EXIT_USAGE = 2
# Failures that get one line on stderr and exit status 2.
FATAL = (RequirementError, LibbpfError, LoadError, TierError, LayoutError, ConfigError, ExportError)


class _Terminate(Exception):
    """SIGTERM: leave the main loop through the same cleanup as Ctrl-C."""


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return v


COMMANDS = {
    "run": "the agent: a report per interval (table or --json), and /metrics with --listen",
    "stat": "nfsiostat-style report per mount and op every interval (no exporter)",
    "top": "live full-screen view: mounts, ops, processes, cgroups, files",
    "trace": "one line per slow operation (like nfsslower), or --json lines",
}


def _duration_ms(text: str) -> float:
    """ "10ms", "1.5s", "500us", "250000ns" or a bare number of milliseconds."""
    t = text.strip().lower()
    for suffix, scale in (("ns", 1e-6), ("us", 1e-3), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], scale
            break
    else:
        mult = 1.0
    try:
        v = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 10ms, 1.5s, 500us): {text!r}") from None
    if not v >= 0 or v > 3_600_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1h: {text!r}")
    return v


def _common(p: argparse.ArgumentParser, interval_help: str = "seconds between reports (default 1)") -> None:
    p.add_argument(
        "-i",
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help=interval_help,
    )
    p.add_argument(
        "--tier",
        choices=("auto", "btf", "tracefs"),
        default="auto",
        help="hook tier: btf (module BTF: tp_btf+fexit) or tracefs (tracepoint offsets+kprobes); "
        "default: auto",
    )
    p.add_argument(
        "--counting",
        choices=COUNTING,
        default="auto",
        help="programs that count: fentry (tp_btf and fentry/fexit, the cheapest) or kprobe (classic "
        "tracepoints and kprobes, whose handlers run with preemption disabled); default: auto, kprobe "
        "on preemptible kernels (docs/design.md)",
    )
    p.add_argument(
        "--proc",
        default="/proc",
        metavar="DIR",
        help="procfs to read mountinfo from (a host /proc mounted in a container)",
    )
    p.add_argument(
        "--max-files",
        type=_positive_int,
        default=131072,
        metavar="N",
        help="files the kernel tracks at once (LRU; evictions are counted; default 131072)",
    )
    f = p.add_argument_group("filters (syscall side and attribution in the kernel; mounts in user space)")
    f.add_argument("--pid", type=_positive_int, default=None, help="only this process")
    f.add_argument("--comm", default=None, help="only processes with this command name (up to 15 bytes)")
    f.add_argument("--cgroup", default=None, metavar="PATH", help="only this cgroup v2 and below it (path)")
    f.add_argument("--mount", default=None, metavar="PATH", help="only this mount point")
    f.add_argument("--server", default=None, metavar="HOST", help="only mounts of this NFS server")


def _views(p: argparse.ArgumentParser, report: bool) -> None:
    v = p.add_argument_group("views")
    v.add_argument(
        "--by",
        choices=BY,
        default="mount",
        help="group by mount (RPC ops, default), op (syscall-side ops), process, cgroup or file",
    )
    v.add_argument("--top", type=_positive_int, default=20, metavar="N", help="files per mount in --by file")
    v.add_argument("--sort", choices=SORT, default="ops", help="order of rows (default: ops)")
    if report:
        v.add_argument(
            "-c",
            "--count",
            type=_positive_int,
            default=None,
            metavar="N",
            help="stop after N reports (default: until Ctrl-C)",
        )
        v.add_argument("--json", action="store_true", help="one JSON document per interval on stdout")
        v.add_argument(
            "-a", "--all-ops", action="store_true", help="table: list every op, not only active ones"
        )


def _exporter(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("Prometheus exporter (docs/metrics.md)")
    e.add_argument(
        "--listen",
        nargs="?",
        const=f":{DEFAULT_PORT}",
        default=None,
        metavar="[HOST]:PORT",
        help=f"serve /metrics, /healthz and /readyz (default address :{DEFAULT_PORT} when given bare)",
    )
    e.add_argument("-q", "--quiet", action="store_true", help="no per-interval output (with --listen)")
    e.add_argument(
        "--compat-bpfnfs-metrics",
        action="store_true",
        help="also export the original bpfnfs's six per-file series (nfs_read_count, ...)",
    )
    e.add_argument(
        "--metrics-top-files",
        type=int,
        default=10,
        metavar="N",
        help="file series per mount, the busiest recently (default 10, 0: none)",
    )
    e.add_argument(
        "--metrics-max-identities",
        type=_positive_int,
        default=500,
        metavar="N",
        help="(comm, cgroup) series per mount; more are folded into comm=cgroup=_other (default 500)",
    )
    e.add_argument("--metrics-pid", action="store_true", help="add a pid label to per-process series")


def build_parser(command: str = "run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfnfs" if command == "run" else f"bpfnfs {command}",
        description="Per mount and NFS operation: what every NFS client on this host does and how long it "
        "takes, exact to the kernel's own counters (run as root). Commands: "
        + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items())
        + ". Without a command: run.",
    )
    p.add_argument("--version", action="version", version=f"bpfnfs {__version__}")
    if command == "trace":
        _common(p, "seconds between mount refreshes (default 1)")
        t = p.add_argument_group("trace")
        t.add_argument(
            "-m",
            "--min-latency",
            type=_duration_ms,
            default=10.0,
            metavar="DURATION",
            help="print operations at least this slow: 10ms (default), 1.5s, 500us, 0 for all",
        )
        t.add_argument("--json", action="store_true", help="one JSON object per line")
        t.add_argument("--rpc", action="store_true", help="also slow RPCs (queue, RTT and execute times)")
        t.add_argument(
            "-c", "--count", type=_positive_int, default=None, metavar="N", help="stop after N lines"
        )
        t.add_argument(
            "-d", "--duration", type=_positive_float, default=None, metavar="SECONDS", help="stop after"
        )
        return p
    _common(p)
    _views(p, report=command != "top")
    if command == "run":
        _exporter(p)
    if command == "stat":  # nfsiostat's own form: bpfnfs stat [interval [count]]
        p.add_argument("pos_interval", nargs="?", type=_positive_float, metavar="interval")
        p.add_argument("pos_count", nargs="?", type=_positive_int, metavar="count")
    return p


def parse_args(argv: list[str]) -> tuple[str, Config, argparse.Namespace]:
    command = "run"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    parser = build_parser(command)
    ns = parser.parse_args(argv)
    if getattr(ns, "pos_interval", None) is not None:
        ns.interval = ns.pos_interval
    if getattr(ns, "pos_count", None) is not None:
        ns.count = ns.pos_count
    try:
        cfg = Config(
            interval=ns.interval,
            count=ns.count if command != "top" else None,
            json=getattr(ns, "json", False),
            tier=ns.tier,
            counting=ns.counting,
            all_ops=getattr(ns, "all_ops", False),
            proc=ns.proc,
            by=getattr(ns, "by", "mount"),
            top=getattr(ns, "top", 20),
            sort=getattr(ns, "sort", "ops"),
            max_files=ns.max_files,
            filter_pid=ns.pid,
            filter_comm=ns.comm,
            filter_cgroup=ns.cgroup,
            filter_mount=ns.mount.rstrip("/") or "/" if ns.mount else None,
            filter_server=ns.server,
            listen=getattr(ns, "listen", None),
            quiet=getattr(ns, "quiet", False),
            compat_metrics=getattr(ns, "compat_bpfnfs_metrics", False),
            metrics_top_files=getattr(ns, "metrics_top_files", 10),
            metrics_max_identities=getattr(ns, "metrics_max_identities", 500),
            metrics_pid=getattr(ns, "metrics_pid", False),
            slow_ms=ns.min_latency if command == "trace" else None,
            trace_rpc=getattr(ns, "rpc", False),
        )
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: error() exits
    if cfg.quiet and cfg.listen is None:
        parser.error("--quiet needs --listen (otherwise bpfnfs would show nothing)")
    return command, cfg, ns


def parse_config(argv: list[str]) -> Config:
    return parse_args(argv)[1]


def _selected(cfg: Config, mounts: list[MountReport]) -> list[MountReport]:
    """--mount / --server."""
    out = mounts
    if cfg.filter_mount:
        out = [m for m in out if m.mount_point == cfg.filter_mount]
    if cfg.filter_server:
        out = [m for m in out if m.server in (cfg.filter_server, f"[{cfg.filter_server}]")]
    return out


def _self_counters(agent: Agent, rep: Report) -> dict[str, object]:
    c: dict[str, object] = dict(rep.snapshot.counters)
    c["mountinfo_parse_errors"] = agent.mounts.parse_errors
    c["files_tracked"] = len(rep.snapshot.files)
    c["files_capacity"] = rep.snapshot.files_capacity
    c["probes_not_attached"] = rep.probe_failures
    counting = agent.counting
    if counting is not None:
        c["counting"] = {
            "method": counting.method,
            "preemption": counting.preemption.model,
            "preemption_source": counting.preemption.source,
        }
    c.update(losses_dict(rep.snapshot))
    return c


def _rows(cfg: Config, agent: Agent, d: MountReport) -> list[dict[str, object]]:
    """Identity rows, with the filters applied to the billed wire I/O too (the kernel
    filters only the syscall side: READ/WRITE completions run in other tasks)."""
    rows = identity_rows(d, cfg.by, agent.cgroups.path)
    if cfg.filter_comm is not None:
        rows = [r for r in rows if r.get("comm", cfg.filter_comm) == cfg.filter_comm]
    if cfg.filter_pid is not None and cfg.by == "process":
        rows = [r for r in rows if r.get("pid") == cfg.filter_pid]
    if agent.cgroup_filter_ids and cfg.by == "cgroup":
        rows = [r for r in rows if r.get("cgroup_id") in agent.cgroup_filter_ids]
    return rows


def _grouped(cfg: Config, agent: Agent, rep: Report, d: MountReport) -> dict[str, object]:
    """The --by view of one mount's interval, for JSON."""
    if cfg.by == "op":
        return {"vfs_ops": vfs_dict(d)}
    if cfg.by in ("process", "cgroup"):
        return {"rows": _rows(cfg, agent, d)}
    if cfg.by == "file":
        return {"files": file_rows(d, rep.paths, cfg.top, cfg.sort)}
    return {}


def _emit(cfg: Config, agent: Agent, rep: Report, prev: Report | None) -> None:
    seconds = (
        rep.snapshot.taken - prev.snapshot.taken if prev else rep.snapshot.taken - (agent.attached_at or 0)
    )
    seconds = max(seconds, 1e-6)
    pairs = list(zip(diff_report(rep, prev), rep.mounts, strict=True))
    keep = {id(m) for m in _selected(cfg, [t for _d, t in pairs])}
    pairs = [(d, t) for d, t in pairs if id(t) in keep]
    now = datetime.now(UTC)
    if cfg.json:
        doc = {
            "timestamp": now.isoformat(timespec="milliseconds"),
            "interval_seconds": round(seconds, 6),
            "tier": agent.tier,
            "by": cfg.by,
            "mounts": [
                {
                    **mount_dict(d),
                    "interval": mount_dict(d, seconds)["ops"],
                    **_grouped(cfg, agent, rep, d),
                    "totals": mount_dict(t),
                }
                for d, t in pairs
            ],
            "unattributed_clients": rep.unattributed_clients,
            "self": _self_counters(agent, rep),
        }
        print(json.dumps(doc, separators=(",", ":")), flush=True)
        return
    stamp = now.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    out = [f"bpfnfs {stamp}  interval {seconds:.2f} s  tier {agent.tier}  by {cfg.by}"]
    if not pairs:
        filtered = cfg.filter_mount or cfg.filter_server
        out.append("   no NFS mounts" + (" match the filters" if filtered else ""))
    for d, _t in pairs:
        out.append("")
        if cfg.by == "mount":
            out.extend(format_mount(d, seconds, agent.tier, cfg.all_ops))
            out.extend(format_errors(d))
            continue
        out.append(
            f"{d.server or '?'}:{d.export or '?'} mounted on {d.mount_point} (nfs v{d.nfs_version or '?'}):"
        )
        if cfg.by == "op":
            out.extend(format_vfs_ops(d, seconds))
        elif cfg.by in ("process", "cgroup"):
            title = "process [pid]" if cfg.by == "process" else "cgroup"
            out.extend(format_identities(_rows(cfg, agent, d), seconds, title))
        else:
            out.extend(format_files(file_rows(d, rep.paths, cfg.top, cfg.sort), seconds))
    notes = loss_notes(rep.snapshot)
    if rep.probe_failures:
        notes.append(f"{len(rep.probe_failures)} probes not attached")
    if notes:
        out.append("\nself: " + ", ".join(notes))
    print("\n".join(out) + "\n", flush=True)


def run(cfg: Config) -> int:
    """`bpfnfs run` and `bpfnfs stat`: a report per interval, and the exporter with --listen."""
    agent = Agent(cfg)
    exporter: Exporter | None = None

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, on_term)
    try:
        if cfg.listen is not None:
            exporter = Exporter(cfg, agent)  # first: a taken port fails before anything loads
        agent.preflight()
        if exporter is not None:
            exporter.start()
            stderr_log(f"serving /metrics, /healthz and /readyz on {cfg.listen}")

        def collect() -> Report | None:
            t0 = time.monotonic()
            rep = agent.collect()
            if exporter is not None:
                seconds = rep.snapshot.taken - prev.snapshot.taken if rep and prev else cfg.interval
                exporter.update(rep, seconds, time.monotonic() - t0)
            return rep

        prev: Report | None = None
        prev = collect()
        reports = 0
        next_tick = time.monotonic() + cfg.interval
        while cfg.count is None or reports < cfg.count:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += cfg.interval
            rep = collect()
            if rep is None:
                continue
            if not cfg.quiet:
                _emit(cfg, agent, rep, prev)
            prev = rep
            reports += 1
    except (KeyboardInterrupt, _Terminate):
        pass
    except FATAL as e:
        stderr_log(f"error: {e}")
        return EXIT_USAGE
    except BrokenPipeError:
        pass
    finally:
        if exporter is not None:
            exporter.close()
        agent.close()
    return 0


def _guarded(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except FATAL as e:
        stderr_log(f"error: {e}")
        return EXIT_USAGE
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def main(argv: list[str] | None = None) -> int:
    command, cfg, ns = parse_args(sys.argv[1:] if argv is None else argv)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for a stuck agent in the field.
    with contextlib.suppress(io.UnsupportedOperation, ValueError, RuntimeError):  # stderr without a fd
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if command == "top":
        from bpfnfs.cli.top import run_top

        return _guarded(lambda: run_top(cfg))
    if command == "trace":
        from bpfnfs.cli.trace import run_trace

        return _guarded(lambda: run_trace(cfg, duration=ns.duration))
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
