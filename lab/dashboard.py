"""Grafana dashboard queries as runnable PromQL.

``dashboard_queries()`` walks every panel of a dashboard JSON (including the panels nested in collapsed
rows) and returns each target's expression with the Grafana variables substituted, ready for
Prometheus' HTTP API (``/api/v1/query``). ``metric_names()`` lists the bpfnfs metrics an expression
reads. ``promtool_check()`` validates the syntax of a batch of expressions with ``promtool check rules``.

    python3 -m lab.dashboard [DASHBOARD.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lab.common import LabError

DEFAULT_DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "bpfnfs.json"

# $name, ${name}, ${name:format} and the legacy [[name]] / [[name:format]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_DURATION_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
# String literals ("…", '…', `…`) and comments: never metric names.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|#[^\n]*')
_METRIC = re.compile(r"(?<![\w:])bpfnfs_[A-Za-z0-9_:]*")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_DEFAULT_RANGE = "1h"


def duration_ms(text: str) -> int:
    """Milliseconds in a Prometheus duration ("90s", "1m30s", "250ms")."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _DURATION_MS[u] for n, u in parts)


def _dashboard_range(dashboard: dict[str, Any]) -> str:
    """The dashboard's default time range ("now-6h" → "6h"), the value of $__range."""
    start = str(dashboard.get("time", {}).get("from", ""))
    if start.startswith("now-"):
        candidate = start.removeprefix("now-")
        try:
            duration_ms(candidate)
        except ValueError:
            return _DEFAULT_RANGE
        return candidate
    return _DEFAULT_RANGE


def iter_panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows right after their row."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables in ``expr``; an unknown variable is an error, not a silent leftover."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(repl, expr)


def variable_values(
    dashboard: dict[str, Any], rate_interval: str, instance: str, mount: str
) -> dict[str, str]:
    """Values for the built-in variables and the dashboard's own (``instance`` and ``mount`` are regexes)."""
    rng = _dashboard_range(dashboard)
    interval_ms = duration_ms(rate_interval)
    range_ms = duration_ms(rng)
    return {
        "__rate_interval": rate_interval,
        # Grafana's $__interval is the query step; the rate window is a sound stand-in outside Grafana.
        "__interval": rate_interval,
        "__interval_ms": str(interval_ms),
        "__range": rng,
        "__range_s": str(range_ms // 1000),
        "__range_ms": str(range_ms),
        "instance": instance,
        "mount": mount,
    }


def dashboard_queries(
    path: Path, rate_interval: str = "1m", instance: str = ".*", mount: str = ".*"
) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted.

    ``instance`` and ``mount`` are regexes, as Grafana passes multi-value variables to ``=~`` matchers.
    """
    dashboard = json.loads(Path(path).read_text())
    values = variable_values(dashboard, rate_interval, instance, mount)
    out: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard.get("panels", [])):
        title = str(panel.get("title", ""))
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                out.append((title, substitute(expr, values)))
    return out


def metric_names(expr: str) -> set[str]:
    """bpfnfs_* metric names an expression reads; histogram series map to the histogram's name."""
    names: set[str] = set()
    for name in _METRIC.findall(_STRINGS.sub(" ", expr)):
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def rule_file(exprs: Sequence[str]) -> str:
    """A Prometheus rule file (YAML) with one recording rule per expression, for ``promtool check rules``.

    Expressions are written as JSON strings, which are valid YAML double-quoted scalars.
    """
    lines = ["groups:", "  - name: bpfnfs_dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        lines.append(f"      - record: bpfnfs_dashboard:query_{i}")
        lines.append(f"        expr: {json.dumps(expr)}")
    return "\n".join(lines) + "\n"


def promtool_check(exprs: Sequence[str], promtool: str = "promtool") -> None:
    """Raise LabError with promtool's message unless every expression parses."""
    binary = shutil.which(promtool)
    if binary is None:
        raise LabError(f"{promtool} not found")
    with tempfile.TemporaryDirectory(prefix="bpfnfs-dashboard-") as tmp:
        rules = Path(tmp) / "dashboard.rules.yml"
        rules.write_text(rule_file(exprs))
        proc = subprocess.run(
            [binary, "check", "rules", str(rules)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise LabError(f"promtool check rules failed:\n{proc.stdout}{proc.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m lab.dashboard", description=__doc__.splitlines()[0])
    p.add_argument("dashboard", nargs="?", type=Path, default=DEFAULT_DASHBOARD)
    p.add_argument("--rate-interval", default="1m")
    p.add_argument("--instance", default=".*", help="regex (default: .*)")
    p.add_argument("--mount", default=".*", help="regex (default: .*)")
    p.add_argument("--check", action="store_true", help="validate the syntax with promtool")
    args = p.parse_args(argv)
    try:
        queries = dashboard_queries(args.dashboard, args.rate_interval, args.instance, args.mount)
        if args.check:
            promtool_check([expr for _, expr in queries])
    except (LabError, OSError, ValueError) as e:
        print(f"lab: {e}", file=sys.stderr)
        return 2
    for title, expr in queries:
        print(f"# {title}\n{expr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
