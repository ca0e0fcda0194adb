"""Shared helpers: the expected-failure exception, logging, cache location, locking, tool runs."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class LabError(Exception):
    """An expected failure (bad input, missing tool, download failure): the CLI prints it in one line."""


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    if env := os.environ.get("BPFNFS_LAB_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "bpfnfs" / "lab"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock; released when the process dies, so a crash never leaves it stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_tool(
    argv: Sequence[str | Path], what: str, *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a host tool; turn a missing binary or a non-zero exit into a one-line LabError."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError as exc:
        raise LabError(f"{what}: {args[0]} not found (install it on the host)") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise LabError(f"{what} failed: {detail}")
    return proc
