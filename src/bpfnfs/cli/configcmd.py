"""`bpfnfs config check [PATH|-]` and `bpfnfs config dump [flags]`."""

from __future__ import annotations

import os
import sys

from bpfnfs.agent import stderr_log
from bpfnfs.cli.flags import parse_args
from bpfnfs.cli.runtime import unbuilt
from bpfnfs.config import ConfigError, Layers, dump
from bpfnfs.config.sources import ENV_FILE

USAGE = """usage: bpfnfs config check [PATH|-]   validate a configuration file (default: $BPFNFS_CONFIG);
                                     exit 0, or 2 with every error listed
       bpfnfs config dump [FLAGS]      the effective configuration (defaults < file < environment <
                                     flags) as YAML that --config accepts back"""


def run_config(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    sub, rest = args[0], args[1:]
    if sub == "check":
        return _check(rest)
    if sub == "dump":
        try:
            _cmd, cfg, _layers = parse_args(["config", *rest])
        except ConfigError as e:
            for line in str(e).splitlines():
                stderr_log(f"error: {line}")
            return 2
        sys.stdout.write(dump(cfg))
        return 0
    stderr_log(f"error: unknown config command {sub!r}\n{USAGE}")
    return 2


def _check(rest: list[str]) -> int:
    if len(rest) > 1 or (rest and rest[0].startswith("-") and rest[0] != "-"):
        stderr_log(f"error: config check takes one file (or - for stdin)\n{USAGE}")
        return 2
    path = rest[0] if rest else os.environ.get(ENV_FILE)
    if not path:
        stderr_log(f"error: config check: no file given and {ENV_FILE} is not set")
        return 2
    try:
        cfg = Layers(file=path, env={}).build()  # the file alone: what it says, not the environment
    except ConfigError as e:
        for line in str(e).splitlines():
            stderr_log(f"error: {line}")
        return 2
    for line in unbuilt(cfg):
        stderr_log(f"warning: {line}")
    print(f"{'<stdin>' if path == '-' else path}: valid")
    return 0
