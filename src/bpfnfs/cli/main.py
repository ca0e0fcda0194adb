"""`bpfnfs` command line: `bpfnfs [run] [--interval S] [--count N] [--json] ...`."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from bpfnfs.agent import Agent, stderr_log
from bpfnfs.cli.flags import parse_args
from bpfnfs.cli.runtime import StackServer, set_debug, warn_unbuilt
from bpfnfs.cli.table import format_errors, format_files, format_identities, format_mount, format_vfs_ops
from bpfnfs.cli.trace import Tracer
from bpfnfs.collect.losses import loss_notes, losses_dict
from bpfnfs.collect.snapshot import LayoutError
from bpfnfs.collect.views import (
    IDENTITY_VIEWS,
    MountReport,
    Report,
    diff_report,
    file_rows,
    identity_rows,
    mount_dict,
    vfs_dict,
)
from bpfnfs.config import RESTART_KEYS, Config, ConfigError, Layers, changed, with_restart_keys_kept
from bpfnfs.export.exporter import Exporter
from bpfnfs.export.http import ExportError
from bpfnfs.export.otlp import OtlpSettingsError, SpanSink
from bpfnfs.export.otlp import resolve as resolve_otlp
from bpfnfs.loader.libbpf import LibbpfError
from bpfnfs.loader.object import LoadError
from bpfnfs.probes.system import RequirementError
from bpfnfs.probes.tiers import TierError

EXIT_USAGE = 2
# Failures that get one line on stderr and exit status 2.
FATAL = (RequirementError, LibbpfError, LoadError, TierError, LayoutError, ConfigError, ExportError)


class _Terminate(Exception):
    """SIGTERM: leave the main loop through the same cleanup as Ctrl-C."""


def _selected(cfg: Config, mounts: list[MountReport]) -> list[MountReport]:
    """--mount / --server."""
    out = mounts
    if cfg.filter.mount:
        out = [m for m in out if m.mount_point == cfg.filter.mount]
    if cfg.filter.server:
        out = [m for m in out if m.server in (cfg.filter.server, f"[{cfg.filter.server}]")]
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
    if agent.dns is not None:
        c["dns"] = agent.dns.stats()
    return c


def _rows(cfg: Config, agent: Agent, d: MountReport) -> list[dict[str, object]]:
    """Identity rows, with the filters applied to the billed wire I/O too (the kernel
    filters only the syscall side: READ/WRITE completions run in other tasks)."""
    rows = identity_rows(d, cfg.view.by, agent.identity.of)
    if cfg.filter.comm is not None:
        rows = [r for r in rows if r.get("comm", cfg.filter.comm) == cfg.filter.comm]
    if cfg.filter.pid is not None and cfg.view.by == "process":
        rows = [r for r in rows if r.get("pid") == cfg.filter.pid]
    if agent.cgroup_filter_ids and cfg.view.by == "cgroup":
        rows = [r for r in rows if r.get("cgroup_id") in agent.cgroup_filter_ids]
    return rows


def _grouped(cfg: Config, agent: Agent, rep: Report, d: MountReport) -> dict[str, object]:
    """The --by view of one mount's interval, for JSON."""
    if cfg.view.by == "op":
        return {"vfs_ops": vfs_dict(d)}
    if cfg.view.by in IDENTITY_VIEWS:
        return {"rows": _rows(cfg, agent, d)}
    if cfg.view.by == "file":
        return {"files": file_rows(d, rep.paths, cfg.view.top, cfg.view.sort)}
    return {}


def _emit(
    cfg: Config, agent: Agent, rep: Report, prev: Report | None, out_file: TextIO | None = None
) -> None:
    seconds = (
        rep.snapshot.taken - prev.snapshot.taken if prev else rep.snapshot.taken - (agent.attached_at or 0)
    )
    seconds = max(seconds, 1e-6)
    pairs = list(zip(diff_report(rep, prev), rep.mounts, strict=True))
    keep = {id(m) for m in _selected(cfg, [t for _d, t in pairs])}
    pairs = [(d, t) for d, t in pairs if id(t) in keep]
    now = datetime.now(UTC)
    if cfg.view.format == "json":
        doc = {
            "timestamp": now.isoformat(timespec="milliseconds"),
            "interval_seconds": round(seconds, 6),
            "tier": agent.tier,
            "by": cfg.view.by,
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
        print(json.dumps(doc, separators=(",", ":")), file=out_file or sys.stdout, flush=True)
        return
    stamp = now.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    out = [f"bpfnfs {stamp}  interval {seconds:.2f} s  tier {agent.tier}  by {cfg.view.by}"]
    if not pairs:
        filtered = cfg.filter.mount or cfg.filter.server
        out.append("   no NFS mounts" + (" match the filters" if filtered else ""))
    for d, _t in pairs:
        out.append("")
        if cfg.view.by == "mount":
            out.extend(format_mount(d, seconds, agent.tier, cfg.view.all_ops))
            out.extend(format_errors(d))
            continue
        out.append(
            f"{d.server or '?'}:{d.export or '?'} mounted on {d.mount_point} (nfs v{d.nfs_version or '?'}):"
        )
        if cfg.view.by == "op":
            out.extend(format_vfs_ops(d, seconds))
        elif cfg.view.by in IDENTITY_VIEWS:
            title = {"process": "process [pid]", "cgroup": "cgroup", "pod": "namespace/pod"}[cfg.view.by]
            out.extend(format_identities(_rows(cfg, agent, d), seconds, title))
        else:
            out.extend(format_files(file_rows(d, rep.paths, cfg.view.top, cfg.view.sort), seconds))
    notes = loss_notes(rep.snapshot)
    if rep.probe_failures:
        notes.append(f"{len(rep.probe_failures)} probes not attached")
    if notes:
        out.append("\nself: " + ", ".join(notes))
    print("\n".join(out) + "\n", file=out_file or sys.stdout, flush=True)


class _Output:
    """Where reports go: stdout, or output.file.path (appended, line-buffered)."""

    def __init__(self, cfg: Config) -> None:
        self.file: TextIO | None = None
        path = cfg.output.file.path
        if cfg.output.type == "file" and path:
            target = Path(path)
            if target.is_dir() or path.endswith("/"):
                target = target / "bpfnfs.log"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise ConfigError(f"output.file.path {path}: {e.strerror}") from None
            stderr_log(f"reports go to {target}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Reloader:
    """SIGHUP: re-read flags, environment and file. Filters, budgets, DNS and the log
    level apply at once; keys that need a restart keep their old value (and are named);
    an invalid file keeps the whole old configuration and is counted."""

    def __init__(self, layers: Layers, log: Callable[[str], None] = stderr_log) -> None:
        self.layers = layers
        self.log = log
        self.requested = False
        self.reloads = 0
        self.failures = 0

    def request(self, _sig: int, _frame: FrameType | None) -> None:
        self.requested = True  # applied by the main loop, between collections

    def reload(self, old: Config) -> Config | None:
        """The new configuration, or None when nothing changes or the new one is invalid."""
        self.requested = False
        try:
            new = self.layers.build()
        except ConfigError as e:
            self.failures += 1
            self.log(f"config reload failed; keeping the running configuration: {e}".replace("\n", "; "))
            return None
        new, kept = with_restart_keys_kept(old, new, RESTART_KEYS)
        for key in kept:
            self.log(f"config reload: {key} needs a restart; keeping the running value")
        moved = changed(old, new)
        self.reloads += 1
        if not moved:
            self.log("config reloaded: no change")
            return None
        self.log("config reloaded: " + ", ".join(moved))
        return new


def apply_settings(cfg: Config) -> None:
    """Process-wide settings that follow the configuration (start and SIGHUP)."""
    set_debug(cfg.features.debug)


def run(cfg: Config, layers: Layers | None = None) -> int:
    """`bpfnfs run` and `bpfnfs stat`: a report per interval, and the exporter with --listen."""
    apply_settings(cfg)
    warn_unbuilt(cfg)
    spans: SpanSink | None = None
    try:
        otlp_settings = resolve_otlp(cfg) if cfg.otlp_spans else None
    except OtlpSettingsError as e:
        stderr_log(f"error: {e}")
        return EXIT_USAGE
    # Spans over OTLP: the kernel's span trees on the ring, for the sink only (no reader's queue).
    agent = Agent(cfg, events=otlp_settings is not None, trees=True, queue=False)
    tracer: Tracer | None = None
    exporter: Exporter | None = None
    reloader = Reloader(layers if layers is not None else Layers(env={}))
    output: _Output | None = None
    stacks: StackServer | None = None

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, reloader.request)
    try:
        output = _Output(cfg)
        if cfg.metrics.listen is not None:
            exporter = Exporter(cfg, agent, reloader)  # first: a taken port fails before anything loads
        if cfg.pprof.enable:
            stacks = StackServer(cfg.pprof.listen)
        agent.preflight()
        if otlp_settings is not None:
            tracer = Tracer(agent, cfg, rpcs=True)
            spans = SpanSink(
                otlp_settings,
                describe=tracer.describe,
                identity=agent.identity.of,
                server=tracer.server_of,
                node_name=cfg.kubernetes.node_name,
                log=stderr_log,
                debug=cfg.features.debug,
            )
            agent.span_sink = spans
            agent.events.subscribe(spans)
            stderr_log(
                f"sending spans over OTLP ({otlp_settings.protocol}) to {otlp_settings.target}: trees whose "
                f"root took {cfg.trace.min_latency:g} ms or failed, and {cfg.trace.sample_ratio:g} of the "
                "others (metrics: /metrics with --listen; over OTLP not yet)"
            )
        if exporter is not None:
            exporter.start()
            stderr_log(f"serving /metrics, /healthz and /readyz on {cfg.metrics.listen}")
        if stacks is not None:
            stacks.start()
            stderr_log(f"serving thread stacks on http://{cfg.pprof.listen}/debug/stacks")

        def collect() -> Report | None:
            t0 = time.monotonic()
            rep = agent.collect()
            if tracer is not None and agent.obj is not None:
                tracer.refresh_clients()  # RPC spans' mounts
            if exporter is not None:
                seconds = (
                    rep.snapshot.taken - prev.snapshot.taken if rep and prev else cfg.collection.interval
                )
                exporter.update(rep, seconds, time.monotonic() - t0)
            return rep

        prev: Report | None = None
        prev = collect()
        reports = 0
        next_tick = time.monotonic() + cfg.collection.interval
        while cfg.view.count is None or reports < cfg.view.count:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            if reloader.requested:
                new = reloader.reload(cfg)
                if new is not None:
                    try:
                        agent.reconfigure(new)
                    except ConfigError as e:
                        reloader.failures += 1
                        stderr_log(f"config reload failed; keeping the running configuration: {e}")
                    else:
                        cfg = new
                        apply_settings(cfg)
                        if exporter is not None:
                            exporter.reconfigure(cfg)
            next_tick += cfg.collection.interval
            rep = collect()
            if rep is None:
                continue
            if not cfg.view.quiet:
                _emit(cfg, agent, rep, prev, output.file)
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
        if stacks is not None:
            stacks.close()
        if output is not None:
            output.close()
        agent.close()
        if spans is not None:
            spans.close()  # what is queued, within the exporter timeout
    return 0


def _guarded(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except FATAL as e:
        stderr_log(f"error: {e}")
        return EXIT_USAGE
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def parse_config(argv: list[str]) -> Config:
    return parse_args(argv, env={})[1]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["config"]:
        from bpfnfs.cli.configcmd import run_config

        return run_config(args[1:])
    try:
        command, cfg, layers = parse_args(args)
    except ConfigError as e:
        for line in str(e).splitlines():
            stderr_log(f"error: {line}")
        return EXIT_USAGE
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for a stuck agent in the field.
    with contextlib.suppress(io.UnsupportedOperation, ValueError, RuntimeError):  # stderr without a fd
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if command == "top":
        from bpfnfs.cli.top import run_top

        apply_settings(cfg)
        return _guarded(lambda: run_top(cfg))
    if command == "trace":
        from bpfnfs.cli.trace import run_trace

        apply_settings(cfg)
        return _guarded(lambda: run_trace(cfg))
    return run(cfg, layers)


if __name__ == "__main__":
    sys.exit(main())
