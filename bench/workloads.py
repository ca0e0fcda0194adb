"""The workloads the overhead table is made of: fio jobs on an NFS mount.

Every workload reports operations per second as fio itself counts them (its
JSON `total_ios` over `job_runtime`), so the agent under test never measures
itself. The metadata storm is three fio phases on one set of files (filecreate,
filestat, filedelete) and reports their combined rate.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class WorkloadError(RuntimeError):
    """fio failed or printed no usable report; the message names the job."""


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    phases: tuple[dict[str, str], ...]  # fio options per phase, run in order on the same files
    timed: bool = True  # time_based runs (runtime applies); False: a fixed amount of work

    def argv(self, phase: dict[str, str], directory: Path, runtime: float, size_mib: int) -> list[str]:
        opts = {
            "name": self.name,
            "directory": str(directory),
            "ioengine": "psync",
            "output-format": "json",
            **phase,
        }
        if self.timed:
            opts.update(time_based="1", runtime=f"{runtime:g}s", size=f"{size_mib}M")
        return ["fio", *(f"--{k}={v}" for k, v in opts.items())]


def _rw(rw: str, bs: str, direct: bool, **extra: str) -> tuple[dict[str, str], ...]:
    # filename fixed per workload so the file is laid out once (prepare) and reused by every run.
    return ({"rw": rw, "bs": bs, "direct": "1" if direct else "0", "norandommap": "1", **extra},)


WORKLOADS: tuple[Workload, ...] = (
    Workload("randread-4k-direct", "4 KiB random read, O_DIRECT", _rw("randread", "4k", True)),
    Workload("randwrite-4k-direct", "4 KiB random write, O_DIRECT", _rw("randwrite", "4k", True)),
    Workload("randread-4k-buffered", "4 KiB random read, buffered", _rw("randread", "4k", False)),
    Workload(
        "randwrite-4k-buffered",
        "4 KiB random write, buffered (fsync at the end)",
        _rw("randwrite", "4k", False, end_fsync="1"),
    ),
    Workload("seqread-1m", "1 MiB sequential read, buffered", _rw("read", "1M", False)),
    Workload(
        "seqwrite-1m",
        "1 MiB sequential write, buffered (fsync at the end)",
        _rw("write", "1M", False, end_fsync="1"),
    ),
    Workload(
        "metadata",
        "metadata storm: create, stat, unlink",
        (
            {
                "ioengine": "filecreate",
                "filesize": "4k",
                "fallocate": "none",
                "openfiles": "1",
                "create_on_open": "1",
            },
            {"ioengine": "filestat", "filesize": "4k", "openfiles": "1"},
            {"ioengine": "filedelete", "filesize": "4k", "openfiles": "1"},
        ),
        timed=False,
    ),
)


@dataclass
class FioResult:
    ops: int = 0
    seconds: float = 0.0
    bytes: int = 0
    phases: list[dict[str, float]] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def _job_totals(report: dict, what: str) -> tuple[int, float, int]:
    jobs = report.get("jobs") or []
    if not jobs:
        raise WorkloadError(f"{what}: fio printed no jobs")
    ops = sum(int(j[d]["total_ios"]) for j in jobs for d in ("read", "write", "trim"))
    nbytes = sum(int(j[d]["io_bytes"]) for j in jobs for d in ("read", "write", "trim"))
    seconds = max(float(j["job_runtime"]) for j in jobs) / 1000.0
    return ops, seconds, nbytes


def run_fio(argv: list[str], what: str) -> tuple[int, float, int]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise WorkloadError(f"{what}: fio exit {proc.returncode}: {lines[-1] if lines else ''}")
    # fio may print warnings before the JSON document.
    text = proc.stdout[proc.stdout.find("{") :]
    try:
        return _job_totals(json.loads(text), what)
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkloadError(f"{what}: unreadable fio report ({exc})") from exc


def prepare(w: Workload, directory: Path, size_mib: int) -> None:
    """Lay out the data file once, outside any timed run."""
    if not w.timed:
        return
    directory.mkdir(parents=True, exist_ok=True)
    argv = w.argv(w.phases[0], directory, 1, size_mib)
    argv = [a for a in argv if not a.startswith(("--time_based", "--runtime"))] + ["--create_only=1"]
    run_fio(argv, f"{w.name} (prepare)")


def run(w: Workload, directory: Path, *, runtime: float, size_mib: int, meta_files: int) -> FioResult:
    directory.mkdir(parents=True, exist_ok=True)
    res = FioResult()
    for phase in w.phases:
        opts = dict(phase)
        if not w.timed:
            opts["nrfiles"] = str(meta_files)
        ops, seconds, nbytes = run_fio(w.argv(opts, directory, runtime, size_mib), w.name)
        res.ops += ops
        res.seconds += seconds
        res.bytes += nbytes
        res.phases.append({"engine": opts.get("ioengine", "psync"), "ops": ops, "seconds": seconds})
    return res


def by_name(names: list[str] | None) -> tuple[Workload, ...]:
    if not names:
        return WORKLOADS
    known = {w.name: w for w in WORKLOADS}
    bad = [n for n in names if n not in known]
    if bad:
        raise WorkloadError(f"unknown workload {bad[0]!r}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)
