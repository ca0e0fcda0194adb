"""Command-line flags: each one is a key of the configuration model (config/model.py).

Flags carry no defaults and no validation of their own: a flag that is given lands on
its key path, above the environment and the file (config/sources.py), and the model
validates it. Help texts and defaults are read from the model's declarations."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bpfnfs import __version__
from bpfnfs.config import DEFAULT_PORT, Config, Layers
from bpfnfs.config.sources import KeyPath, format_errors

COMMANDS = {
    "run": "the agent: a report per interval (table or --json), and /metrics with --listen",
    "stat": "nfsiostat-style report per mount and op every interval (no exporter)",
    "top": "live full-screen view: mounts, ops, processes, cgroups, files",
    "trace": "one line per slow operation (like nfsslower), or --json lines",
    "config": "config check [PATH|-]: validate a configuration file; config dump [flags]: the effective "
    "configuration as YAML",
}


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    path: KeyPath
    const: Any = None  # store_const value (a switch), else the flag takes an argument
    metavar: str | None = None
    nargs: str | None = None
    help: str | None = None  # default: the model field's description


def _field(path: KeyPath) -> Any:
    model: type[BaseModel] = Config
    for p in path[:-1]:
        model = model.model_fields[p].annotation  # type: ignore[assignment]
    return model.model_fields[path[-1]]


def _help(f: Flag) -> str:
    field = _field(f.path)
    text = f.help or field.description or ""
    key = ".".join(f.path)
    if f.const is None and field.default not in (None, "", [], {}):
        return f"{text} [{key}, default {field.default}]"
    return f"{text} [{key}]"


COMMON = (
    Flag(("-i", "--interval"), ("collection", "interval"), metavar="SECONDS"),
    Flag(("--tier",), ("collection", "tier"), metavar="{auto,btf,tracefs}"),
    Flag(("--counting",), ("collection", "counting"), metavar="{auto,fentry,kprobe}"),
    Flag(("--proc",), ("collection", "proc"), metavar="DIR"),
    Flag(("--max-files",), ("collection", "max_files"), metavar="N"),
    Flag(("--cgroup-hierarchy",), ("collection", "cgroup_hierarchy"), metavar="{auto,v2,v1[:CONTROLLER]}"),
    Flag(("--per-pid",), ("collection", "per_pid"), const=True),
    Flag(("--debug",), ("features", "debug"), const=True),
    Flag(("--dns",), ("features", "dns"), const=True),
    Flag(("--kubeconfig",), ("kubernetes", "kubeconfig"), metavar="FILE"),
    Flag(("--node-name",), ("kubernetes", "node_name"), metavar="NAME"),
)
FILTERS = (
    Flag(("--pid",), ("filter", "pid"), metavar="PID"),
    Flag(("--comm",), ("filter", "comm"), metavar="NAME"),
    Flag(("--cgroup",), ("filter", "cgroup"), metavar="PATH"),
    Flag(("--mount",), ("filter", "mount"), metavar="PATH"),
    Flag(("--server",), ("filter", "server"), metavar="HOST"),
)
VIEWS = (
    Flag(("--by",), ("view", "by"), metavar="{mount,op,process,cgroup,pod,file}"),
    Flag(("--top",), ("view", "top"), metavar="N"),
    Flag(("--sort",), ("view", "sort"), metavar="{ops,bytes,latency}"),
)
REPORTS = (
    Flag(("-c", "--count"), ("view", "count"), metavar="N"),
    Flag(("--json",), ("view", "format"), const="json", help="One JSON document per interval on stdout."),
    Flag(("-a", "--all-ops"), ("view", "all_ops"), const=True),
)
EXPORTER = (
    Flag(("--listen",), ("metrics", "listen"), metavar="[HOST]:PORT", nargs="?"),
    Flag(("-q", "--quiet"), ("view", "quiet"), const=True),
    Flag(("--compat-bpfnfs-metrics",), ("metrics", "compat"), const=True),
    Flag(("--no-nfs-metrics",), ("features", "nfs_metrics"), const=False, help="Only bpfnfs's own metrics."),
    Flag(("--metrics-top-files",), ("metrics", "top_files"), metavar="N"),
    Flag(("--metrics-max-identities",), ("metrics", "max_identities"), metavar="N"),
    Flag(("--metrics-pid",), ("metrics", "pid_labels"), const=True),
    Flag(
        ("--no-pod-labels",),
        ("metrics", "pod_labels"),
        const=False,
        help="No namespace/pod/container labels.",
    ),
)
TRACE = (
    Flag(("-m", "--min-latency"), ("trace", "min_latency"), metavar="DURATION"),
    Flag(("--json",), ("view", "format"), const="json", help="One JSON object per line."),
    Flag(("--rpc",), ("trace", "rpc"), const=True),
    Flag(("--spans",), ("trace", "spans"), const=True),
    Flag(("--sample-ratio",), ("trace", "sample_ratio"), metavar="RATIO"),
    Flag(("-c", "--count"), ("view", "count"), metavar="N", help="Stop after N lines."),
    Flag(("-d", "--duration"), ("trace", "duration"), metavar="SECONDS"),
)


def _dest(path: KeyPath) -> str:
    return "cfg__" + "__".join(path)


def _add(group: argparse._ActionsContainer, flags: tuple[Flag, ...]) -> None:
    for f in flags:
        kw: dict[str, Any] = {"dest": _dest(f.path), "help": _help(f), "default": argparse.SUPPRESS}
        if f.const is not None and f.nargs is None:
            kw.update(action="store_const", const=f.const)
        else:
            kw["metavar"] = f.metavar
            if f.nargs:
                kw.update(nargs=f.nargs, const=f":{DEFAULT_PORT}")
        group.add_argument(*f.names, **kw)


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "--config-path",
        dest="config_file",
        default=None,
        metavar="PATH",
        help="YAML configuration file (also BPFNFS_CONFIG); flags override it (docs/config.md)",
    )


def build_parser(command: str = "run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfnfs" if command == "run" else f"bpfnfs {command}",
        description="Per mount and NFS operation: what every NFS client on this host does and how long it "
        "takes, exact to the kernel's own counters (run as root). Commands: "
        + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items())
        + ". Without a command: run. Every setting is also a key of the configuration file "
        "(--config, docs/config.md) and an environment variable BPFNFS_SECTION__KEY.",
    )
    p.add_argument("--version", action="version", version=f"bpfnfs {__version__}")
    _config_flags(p)
    _add(p, COMMON)
    _add(
        p.add_argument_group("filters (pid, comm, cgroup in the kernel; mount and server in user space)"),
        FILTERS,
    )
    if command == "trace":
        _add(p.add_argument_group("trace"), TRACE)
        return p
    v = p.add_argument_group("views")
    _add(v, VIEWS)
    if command != "top":
        _add(v, REPORTS)
    if command in ("run", "config"):
        _add(p.add_argument_group("Prometheus exporter (docs/metrics.md)"), EXPORTER)
    if command == "stat":  # nfsiostat's own form: bpfnfs stat [interval [count]]
        p.add_argument("pos_interval", nargs="?", metavar="interval")
        p.add_argument("pos_count", nargs="?", metavar="count")
    return p


FLAG_NAMES: dict[KeyPath, str] = {
    f.path: "/".join(n for n in f.names if n.startswith("--"))
    for f in (*COMMON, *FILTERS, *VIEWS, *REPORTS, *EXPORTER, *TRACE)
}


def flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as a nested mapping of key paths."""
    out: dict[str, Any] = {}
    for dest, value in vars(ns).items():
        if not dest.startswith("cfg__"):
            continue
        path = dest[5:].split("__")
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = value
    if getattr(ns, "pos_interval", None) is not None:
        out.setdefault("collection", {})["interval"] = ns.pos_interval
    if getattr(ns, "pos_count", None) is not None:
        out.setdefault("view", {})["count"] = ns.pos_count
    return out


def parse_args(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, Config, Layers]:
    """argv -> (command, configuration, its sources). Exits 2 with one message per problem."""
    command = "run"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    parser = build_parser(command)
    ns = parser.parse_args(argv)
    flags = flag_values(ns)
    if command == "top":
        flags.get("view", {}).pop("count", None)
    names = dict(FLAG_NAMES)
    names[("collection", "interval")] = (
        "--interval" if ns.__dict__.get("pos_interval") is None else "interval"
    )
    # A wrong flag gets argparse's usage line; a wrong file or environment value does not.
    try:
        Config.model_validate(flags)
    except ValidationError as e:
        # Cross-key checks (loc empty) may be satisfied by the file: checked after the merge.
        located = format_errors(e, names, located_only=True)
        if located:
            parser.error("\n  ".join(located))
    layers = Layers(flags, names, file=ns.config_file, env=env)
    cfg = layers.build()  # ConfigError: the caller prints it and exits 2
    return command, cfg, layers


__all__ = ["COMMANDS", "FLAG_NAMES", "build_parser", "flag_values", "parse_args"]
