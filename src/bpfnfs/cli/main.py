"""`bpfnfs` command line: `bpfnfs [run] [--interval S] [--count N] [--json] ...`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType

from bpfnfs import __version__
from bpfnfs.agent import Agent, stderr_log
from bpfnfs.cli.table import format_mount
from bpfnfs.collect.snapshot import LayoutError
from bpfnfs.collect.views import Report, diff_report, mount_dict
from bpfnfs.config import Config, ConfigError
from bpfnfs.loader.libbpf import LibbpfError
from bpfnfs.loader.object import LoadError
from bpfnfs.probes.system import RequirementError
from bpfnfs.probes.tiers import TierError

EXIT_USAGE = 2


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfnfs",
        description="Per mount and NFS operation: what every NFS client on this host does and how long it "
        "takes, exact to the kernel's own counters (run as root).",
    )
    p.add_argument("--version", action="version", version=f"bpfnfs {__version__}")
    p.add_argument(
        "-i",
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between reports (default 1)",
    )
    p.add_argument(
        "-c",
        "--count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N reports (default: until Ctrl-C)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document per interval on stdout")
    p.add_argument(
        "--tier",
        choices=("auto", "btf", "tracefs"),
        default="auto",
        help="hook tier: btf (module BTF: tp_btf+fexit) or tracefs (tracepoint offsets+kprobes); "
        "default: auto",
    )
    p.add_argument("-a", "--all-ops", action="store_true", help="table: list every op, not only active ones")
    p.add_argument(
        "--proc",
        default="/proc",
        metavar="DIR",
        help="procfs to read mountinfo from (a host /proc mounted in a container)",
    )
    return p


def parse_config(argv: list[str]) -> Config:
    if argv and argv[0] == "run":
        argv = argv[1:]
    ns = build_parser().parse_args(argv)
    try:
        return Config(
            interval=ns.interval, count=ns.count, json=ns.json, tier=ns.tier, all_ops=ns.all_ops, proc=ns.proc
        )
    except ConfigError as e:
        build_parser().error(str(e))
        raise  # unreachable: error() exits


def _emit(cfg: Config, agent: Agent, rep: Report, prev: Report | None) -> None:
    seconds = (
        rep.snapshot.taken - prev.snapshot.taken if prev else rep.snapshot.taken - (agent.attached_at or 0)
    )
    seconds = max(seconds, 1e-6)
    deltas = diff_report(rep, prev)
    now = datetime.now(UTC)
    if cfg.json:
        doc = {
            "timestamp": now.isoformat(timespec="milliseconds"),
            "interval_seconds": round(seconds, 6),
            "tier": agent.tier,
            "mounts": [
                {**mount_dict(d), "interval": mount_dict(d, seconds)["ops"], "totals": mount_dict(t)}
                for d, t in zip(deltas, rep.mounts, strict=True)
            ],
            "unattributed_clients": rep.unattributed_clients,
            "self": rep.snapshot.counters | {"mountinfo_parse_errors": agent.mounts.parse_errors},
        }
        print(json.dumps(doc, separators=(",", ":")), flush=True)
        return
    stamp = now.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    out = [f"bpfnfs {stamp}  interval {seconds:.2f} s  tier {agent.tier}"]
    if not deltas:
        out.append("   no NFS mounts")
    for d in deltas:
        out.append("")
        out.extend(format_mount(d, seconds, agent.tier, cfg.all_ops))
    lost = rep.snapshot.counters.get("rpc_map_full", 0) + rep.snapshot.counters.get("io_map_full", 0)
    if lost:
        out.append(f"\nwarning: {lost} samples lost to full maps")
    print("\n".join(out) + "\n", flush=True)


def run(cfg: Config) -> int:
    agent = Agent(cfg)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, on_term)
    try:
        agent.preflight()
        prev = agent.collect()
        reports = 0
        next_tick = time.monotonic() + cfg.interval
        while cfg.count is None or reports < cfg.count:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += cfg.interval
            rep = agent.collect()
            if rep is None:
                continue
            _emit(cfg, agent, rep, prev)
            prev = rep
            reports += 1
    except (KeyboardInterrupt, _Terminate):
        pass
    except (RequirementError, LibbpfError, LoadError, TierError, LayoutError) as e:
        stderr_log(f"error: {e}")
        return EXIT_USAGE
    except BrokenPipeError:
        pass
    finally:
        agent.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
