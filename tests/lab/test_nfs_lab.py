"""bpfnfs against real kernels and a real nfsd, in QEMU (the lab).

One VM per lab target (LAB_SUITES, default bullseye bookworm trixie
trixie-backports trixie-preempt: 5.10, 6.1, 6.12, Debian's newest 7.x with
preemption "full (lazy)", and 6.12 booted with preempt=full), two at a time:
each runs lab.check (agent vs /proc/self/mountstats deltas around an fio, dd
and metadata workload and every path that moves the bytes: counters, on an
NFSv3 and an NFSv4.2 mount; on the preemptible kernels from three workers at
once, next to the old counting method, which must lose events and report
them), lab.check_cli (the command as a person runs it), lab.check_views and
lab.check_client; on 5.10, 6.1 and the newest 7.x lab.check_spans (span trees of
`bpfnfs trace --spans` against mountstats); on 5.10, 6.1 and 6.12 lab.check_config (the
configuration file, SIGHUP, DNS), on 6.1 lab.check_btf (BTF from files), and
on 6.12 lab.check_pods (pods and containers with runc, the stand-in Kubernetes
API, bpfnfs in a DaemonSet-like container), and on 6.12 with preempt=full
lab.check_dead (the node's mounts from another mount namespace, and an NFS
server that dies under a running agent).
Three more VMs (bookworm, and the two preemptible kernels) boot without NFS to
check that bpfnfs waits and attaches when the modules load. lab.check_client
checks the client picture: per-process and per-cgroup syscall counts,
writeback billed to the dirtying cgroup, per-file top-N, errno per layer, soft
mount timeouts, the file LRU (20,000 files), and stale series. The bench smoke
runs apart: `make bench-smoke`.

The oracle is the kernel: counts and bytes must be equal, cumulative times
within 1 ms (mountstats prints floor(ns / 1e6) of its running sums).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SUITES = os.environ.get("LAB_SUITES", "bullseye bookworm trixie trixie-backports trixie-preempt").split()
OUT = ROOT / "build" / "lab"
VENV_PY = str(ROOT / ".venv" / "bin" / "python")
EXPECTED_TIER = {
    "bullseye": "tracefs",
    "bookworm": "btf",
    "trixie": "btf",
    "trixie-backports": "btf",
    "trixie-preempt": "btf",
}
# Preemptible kernels count through kprobes and classic tracepoints; the others (and
# the tracefs tier, which has nothing else) through tp_btf and fentry/fexit.
EXPECTED_COUNTING = {
    "bullseye": "kprobe",
    "bookworm": "fentry",
    "trixie": "fentry",
    "trixie-backports": "kprobe",
    "trixie-preempt": "kprobe",
}
PREEMPTIBLE = {"trixie-backports", "trixie-preempt"}
# Module-load-after-start boots: one voluntary-preemption kernel, and the preemptible ones.
LATE = ("bookworm", "trixie-backports", "trixie-preempt")
# The file LRU at 20,000 files: the map and its reader are those of 100,000, and stat()ing
# 100,000 files takes 300-400 s under TCG, so that size is a long run: `make bench`'s scale
# section (100,000 files in 1,000 cgroups over 50 mounts), or LAB_LRU_FILES=100000 here.
LRU_FILES = int(os.environ.get("LAB_LRU_FILES", "20000"))
# The configuration file (lab.check_config: the original tool's config.yaml, file = flags,
# SIGHUP, DNS) and BTF from files (lab.check_btf) on one kernel per tier and release line.
CONFIG_SUITES = ("bullseye", "bookworm", "trixie")
# Span trees (lab.check_spans: `bpfnfs trace --spans` against mountstats): one kernel per tier and
# counting method, 5.10 (tracefs, kprobes), 6.1 (btf, fentry) and the newest 7.x (btf, kprobes).
SPANS_SUITES = ("bullseye", "bookworm", "trixie-backports")
# `make bench-smoke`: the benchmark end to end at small sizes, in its own VM (19 min under TCG:
# a long run, so not in make test, whose budget is 60 minutes on two cores).
BENCH_SMOKE = os.environ.get("LAB_BENCH_SMOKE") == "1"
BTF_SUITES = ("bookworm",)  # module BTF there, so hiding it changes the tier
# The node's view from a mount namespace of its own, and an NFS server that dies under a running
# agent (lab.check_dead): on the newest code paths (full preemption), the shortest boot.
DEAD_SUITES = ("trixie-preempt",)
# Pods and containers with runc as kubelet + containerd lay them out, the stand-in API server,
# and bpfnfs in a container with the DaemonSet's capabilities (lab.check_pods).
PODS_SUITES = ("trixie",)
# Pod churn (lab.check_churn): 100 pods come and go in make test; `make churn` runs 1,000 in a VM
# of its own (a long run) on 5.10, whose kernel has no lookup-and-delete for hash maps.
CHURN_SUITES = ("trixie-preempt",)
CHURN_LONG = os.environ.get("LAB_CHURN") == "1"
# A cgroup v1-only node (systemd's legacy layout, no cgroup2): its late-attach boot runs the pods
# of lab.check_pods again (--cgroup-v1), attributed through the memory controller's hierarchy.
V1_SUITES = ("bookworm",)
# `make image-check`: the image deploy/Dockerfile builds (make image: build/image-rootfs) run as the
# DaemonSet runs it, in a trixie VM of its own (the image is not built in make test: no registry).
IMAGE_CHECK = os.environ.get("LAB_IMAGE") == "1"
IMAGE_ROOTFS = ROOT / "build" / "image-rootfs"
CHURN_LONG_SUITE, CHURN_LONG_PODS = "bullseye", 1000


def _guest_cmd(suite: str, out: Path, late: bool) -> str:
    if late:
        cmd = f"{VENV_PY} -m lab.check_cli --late --out {out}"
        if suite in V1_SUITES:  # after it: the late check's mounts are the pods' NFS
            v1 = f"{VENV_PY} -m lab.check_pods --cgroup-v1 --out {out}"
            cmd = f'rc=""; {cmd} || rc=$?; {v1} || rc=${{rc:-$?}}; exit ${{rc:-0}}'
        return cmd
    files = LRU_FILES
    spans = f"{VENV_PY} -m lab.check_spans --out {out} || rc=${{rc:-$?}}; " if suite in SPANS_SUITES else ""
    # Each check writes its own JSON; run them all even if one fails, report the first failure's rc.
    config = ""
    if suite in CONFIG_SUITES:
        config += f"{VENV_PY} -m lab.check_config --out {out} || rc=${{rc:-$?}}; "
    if suite in BTF_SUITES:  # last: it hides /sys/kernel/btf under a tmpfs
        config += f"{VENV_PY} -m lab.check_btf --skip-btf-tier --out {out} || rc=${{rc:-$?}}; "
    if suite in PODS_SUITES:
        config += f"{VENV_PY} -m lab.check_pods --out {out} || rc=${{rc:-$?}}; "
    if suite in CHURN_SUITES:
        config += f"{VENV_PY} -m lab.check_churn --out {out} --pods 100 || rc=${{rc:-$?}}; "
    if suite in DEAD_SUITES:  # last: it stops and restarts nfsd
        config += f"{VENV_PY} -m lab.check_dead --out {out} || rc=${{rc:-$?}}; "
    return (
        f'rc=""; {VENV_PY} -m lab.check --out {out} || rc=$?; '
        f"{VENV_PY} -m lab.check_client --out {out} --files {files} || rc=${{rc:-$?}}; "
        f"{VENV_PY} -m lab.check_cli --out {out} || rc=${{rc:-$?}}; "
        f"{VENV_PY} -m lab.check_views --out {out} || rc=${{rc:-$?}}; "
        f"{spans}{config}exit ${{rc:-0}}"
    )


def _bench_smoke() -> subprocess.CompletedProcess[str]:
    """`python3 -m bench --smoke`: the benchmark end to end at small sizes (its own VM)."""
    out = OUT / "bench-smoke"
    shutil.rmtree(out, ignore_errors=True)
    return subprocess.run(
        [VENV_PY, "-m", "bench", "--smoke", "--suites", "bookworm", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def _boot(job: tuple[str, bool]) -> tuple[str, bool, Any]:
    from lab import vm

    suite, late = job
    if suite == "bench":
        return suite, late, _bench_smoke()
    if suite == "image":
        out = OUT / "image"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cmd = f"{VENV_PY} -m lab.check_pods --image-rootfs {IMAGE_ROOTFS} --out {out}"
        return suite, late, vm.run("trixie", ["sh", "-c", cmd], out, nfs="full", mem="1536M", timeout=1800)
    if suite == "churn":
        out = OUT / "churn-long"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cmd = f"{VENV_PY} -m lab.check_churn --out {out} --pods {CHURN_LONG_PODS}"
        return (
            suite,
            late,
            vm.run(CHURN_LONG_SUITE, ["sh", "-c", cmd], out, nfs="full", mem="1536M", timeout=3600),
        )
    out = OUT / (f"{suite}-late" if late else suite)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for attempt in (1, 2):
        # 1.5 GiB: the 100,000-file LRU scenario keeps server and client inodes of every file in memory.
        res = vm.run(
            suite,
            ["sh", "-c", _guest_cmd(suite, out, late)],
            out,
            nfs="none" if late else "full",
            mem=("768M" if suite in V1_SUITES else "512M") if late else "1536M",
            timeout=2400,
            cgroup="v1" if late and suite in V1_SUITES else "v2",
        )
        console = res.console_log.read_text(errors="replace") if res.console_log.exists() else ""
        if attempt == 2 or not _emulator_panic(console):
            break
        # Kept and reported (the warnings summary), then one more boot.
        kept = out.with_name(out.name + "-panic")
        shutil.rmtree(kept, ignore_errors=True)
        out.rename(kept)
        out.mkdir(parents=True)
        PANICS.append(f"{suite}{' (late)' if late else ''}: {res.error}; see {kept / 'console.log'}")
    return suite, late, res


PANICS: list[str] = []


def _emulator_panic(console: str) -> bool:
    """A guest kernel panic with no BPF, kprobe or trampoline frame in its trace. Seen once
    in about twenty TCG boots (a double fault in kmalloc, EFLAGS garbage, under create_worker
    or a plain openat): the emulator's, not bpfnfs's, so that boot runs again. A panic that
    shows any of bpfnfs's machinery in a reliable frame is never retried. Frames the unwinder
    marks unreliable ("? name") are stale words left on the stack, such as the kretprobe
    trampoline's return address from an earlier system call: they do not count."""
    if "Kernel panic" not in console:
        return False
    # The kernel's lines (the guest's clock after the host's) from the first oops line on.
    kernel = [ln for ln in console.splitlines() if re.match(r"\[\s*[\d.]+\] \[\s*[\d.]+\] ", ln)]
    start = next((i for i, ln in enumerate(kernel) if re.search(r"Oops|BUG:|PANIC|Call Trace", ln)), 0)
    reliable = [ln for ln in kernel[start:] if not re.match(r"\[\s*[\d.]+\] \[\s*[\d.]+\]\s+\? ", ln)]
    trace = "\n".join(reliable).lower()
    return not any(k in trace for k in ("bpf", "kprobe", "trampoline", "ftrace"))


@pytest.fixture(scope="session")
def lab_runs() -> dict[tuple[str, bool], Any]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: run `make setup`")
    jobs = [("bench", False)] if BENCH_SMOKE else []
    jobs += [("churn", False)] if CHURN_LONG else []
    jobs += [("image", False)] if IMAGE_CHECK else []
    jobs += [(s, False) for s in SUITES]
    jobs += [(s, True) for s in LATE if s in SUITES]
    lanes = _lanes(jobs)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda lane: [_boot(j) for j in lane], lanes)
        runs = {(s, late): res for lane in done for s, late, res in lane}
    for p in PANICS:
        warnings.warn(f"guest kernel panic outside bpfnfs, booted again: {p}", stacklevel=1)
    return runs


# Seconds each boot took in a full run on two cores (2026-12): what the two lanes are balanced by.
BOOT_SECONDS = {
    ("bullseye", False): 1330,
    ("bookworm", False): 1065,
    ("trixie", False): 1030,
    ("trixie-backports", False): 1000,
    ("trixie-preempt", False): 920,
    ("bookworm", True): 150,
    ("trixie-backports", True): 50,
    ("trixie-preempt", True): 40,
    ("bench", False): 1150,
    ("churn", False): 1500,
    ("image", False): 200,
}


def _lanes(jobs: list[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
    """The jobs split into two lanes that end as close together as the estimates allow (every
    split is tried: a handful of jobs), each lane longest first."""
    cost = [BOOT_SECONDS.get(j, 900) for j in jobs]
    best, best_mask = sum(cost) + 1, 0
    for mask in range(1 << len(jobs)):
        a = sum(c for i, c in enumerate(cost) if mask >> i & 1)
        worst = max(a, sum(cost) - a)
        if worst < best:
            best, best_mask = worst, mask
    lanes = [[j for i, j in enumerate(jobs) if (best_mask >> i & 1) == side] for side in (1, 0)]
    return [sorted(lane, key=lambda j: -BOOT_SECONDS.get(j, 900)) for lane in lanes if lane]


def _load(path: Path) -> dict[str, Any]:
    assert path.exists(), f"{path} was not written; see {path.parent / 'console.log'}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("suite", SUITES)
def test_counts_equal_mountstats(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    res = lab_runs[(suite, False)]
    r = _load(OUT / suite / "result.json")
    bad = [c for c in r["checks"] if not c["ok"]]
    assert not bad, f"{suite} ({r['kernel']}, tier {r['tier']}): {len(bad)} mismatches: {bad[:10]}"
    assert r["tier"] == EXPECTED_TIER.get(suite, r["tier"])
    assert r["counting"] == EXPECTED_COUNTING.get(suite, r["counting"]), r["counting_reason"]
    # Every kernel-counted loss of the counting method itself would show here; before 5.12
    # the kernel keeps no such counter, and it says "not available" (None), never 0.
    assert not any(r["hooks_lost"].values()), r["hooks_lost"]
    if suite == "bullseye":
        assert r["hooks_lost"] and all(v is None for v in r["hooks_lost"].values()), r["hooks_lost"]
    # The six bytes: counters moved on every path of lab/bytes_paths.py.
    moved = {c["quantity"] for c in r["checks"] if c["op"] == "bytes" and c["mountstats"]}
    assert len(moved) == 6, moved
    ops = {(c["mount"], c["op"]) for c in r["checks"]}
    # The workload must have exercised both mounts' data and metadata paths.
    for mp in ("/mnt/nfs3", "/mnt/nfs4"):
        assert (mp, "WRITE") in ops and (mp, "COMMIT") in ops and (mp, "LOOKUP") in ops, sorted(ops)
        assert (mp, "READ") in ops or (mp, "READ_PLUS") in ops, sorted(ops)
    assert r["self_counters"]["rpc_map_full"] == 0
    assert res.rc in (0, 3), f"guest command failed (rc {res.rc}): {res.error}; see {res.console_log}"


@pytest.mark.parametrize("suite", sorted(PREEMPTIBLE & set(SUITES)))
def test_old_method_loses_events_and_says_so(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """On a preemptible kernel the old method (tp_btf, fentry/fexit) counted the same
    three-worker window next to the kprobe method: it lost events (the kernel's miss
    counters say so), its RPC shortfall equals what it reported lost, and it never
    over-counted."""
    r = _load(OUT / suite / "result.json")
    assert r["preemptible"] and r["workers"] > 1
    old = r["old_method"]
    bad = [c for c in old["checks"] if not c["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("suite", SUITES)
def test_command_line(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    res = lab_runs[(suite, False)]
    c = _load(OUT / suite / "cli.json")
    bad = [x for x in c["checks"] if not x["ok"]]
    assert not bad, bad
    # 3: some check failed (reported by its own test); anything else is a crash.
    assert res.rc in (0, 3), f"rc {res.rc}: {res.error}; see {res.console_log}"


@pytest.mark.parametrize("suite", SUITES)
def test_client_picture(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """Processes, cgroups, files, errors, timeouts, LRU and stale series (lab.check_client)."""
    r = _load(OUT / suite / "client.json")
    bad = [x for x in r["checks"] if not x["ok"]]
    assert not bad, f"{suite} ({r['kernel']}, tier {r['tier']}): {len(bad)} failed: {bad[:10]}"
    names = " ".join(x["check"] for x in r["checks"])
    for what in ("WRITE bytes billed", "ESTALE", "timeouts equal", "lru(big)", "lru(small)", "top-5 files"):
        assert what in names, f"scenario missing: {what}"


@pytest.mark.parametrize("suite", SUITES)
def test_operator_views(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """Prometheus scraping bpfnfs vs mountstats, the dashboard's queries, promtool, compat
    series, `bpfnfs trace` on slow ops (netem), `bpfnfs top` in tmux (lab.check_views)."""
    r = _load(OUT / suite / "views.json")
    bad = [x for x in r["checks"] if not x["ok"]]
    assert not bad, f"{suite}: {len(bad)} failed: {bad[:10]}"
    names = " ".join(x["check"] for x in r["checks"])
    for what in (
        "mountstats deltas",
        "dashboard query",
        "promtool",
        "exactly the ops",
        "compat series",
        "top",
    ):
        assert what in names, f"scenario missing: {what}"


def _guest_checks(
    suite: str, lab_runs: dict[tuple[str, bool], Any], name: str, *scenarios: str, late: bool = False
) -> None:
    """A guest check module's result file (OUT/suite/name): every check passed, and each
    scenario named ran (a check module that stopped early must not pass by having fewer checks)."""
    if (suite, late) not in lab_runs:
        pytest.skip(f"{suite} not in LAB_SUITES")
    r = _load(OUT / (f"{suite}-late" if late else suite) / name)
    bad = [x for x in r["checks"] if not x["ok"]]
    figures = f"; figures {r['figures']}" if "figures" in r else ""
    assert not bad, f"{suite}: {len(bad)} failed: {bad[:10]}{figures}"
    names = " ".join(x["check"] for x in r["checks"])
    for what in scenarios:
        assert what in names, f"scenario missing: {what}"


@pytest.mark.parametrize("suite", SPANS_SUITES)
def test_span_trees(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """`bpfnfs trace --spans`: a 1 MiB O_DIRECT read is one read span with exactly 8 READ children
    (rsize 128 KiB), readahead READs and an fsync's WRITEs and COMMIT hang under the operation
    that started them, and the RPC spans equal the mountstats deltas; `bpfnfs run` with output.type
    otlp sends the same trees to the stand-in OTLP receiver (lab.check_spans)."""
    _guest_checks(
        suite,
        lab_runs,
        "spans.json",
        "exactly 8 READ children",
        "readahead",
        "COMMIT is its child",
        "equal the mountstats deltas",
        "every parent id is a span",
        "OTLP: the O_DIRECT read arrived",
        "/metrics counts the spans exported",
    )


@pytest.mark.parametrize("suite", CONFIG_SUITES)
def test_configuration_file(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """The original's config.yaml runs; a file behaves as the same flags; SIGHUP changes the
    filter with the same program ids; DNS labels, and a resolver that never answers delays no
    interval (lab.check_config)."""
    _guest_checks(
        suite,
        lab_runs,
        "config.json",
        "original config",
        "same configuration",
        "SIGHUP: same BPF program ids",
        "silent resolver",
    )


@pytest.mark.parametrize("suite", BTF_SUITES)
def test_custom_btf(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """The kernel's BTF hidden: without btf.kernel bpfnfs exits 2 naming it and how to get one;
    with btf.kernel and btf.model_dir it runs, says which tier and why, and counts exactly
    (lab.check_btf)."""
    _guest_checks(suite, lab_runs, "btf.json")


@pytest.mark.parametrize("suite", DEAD_SUITES)
def test_dead_server_and_container_view(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """In a mount namespace without the NFS mounts, bpfnfs reads and probes the node's through
    /proc/1. With nfsd stopped under hard v3 and v4.2 mounts: reports keep their 2 s spacing,
    /metrics answers, the mounts are listed as not responding, SIGINT and SIGTERM end bpfnfs as
    on a live server; when nfsd returns the mounts are mapped while it runs (lab.check_dead)."""
    _guest_checks(
        suite,
        lab_runs,
        "dead.json",
        "own mount namespace",
        "dead server: SIGINT",
        "server back: SIGTERM",
        "reports keep",
    )


@pytest.mark.parametrize("suite", PODS_SUITES)
def test_pods_and_containers(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """Two pods in runc containers (cgroupfs and systemd cgroup naming, kubelet-style NFS volumes
    on one shared superblock), named by the stand-in API server: each pod's and container's write
    bytes exact in the JSON and on /metrics, summing to mountstats' delta; bpfnfs in a container
    with the DaemonSet's capabilities sees and maps the node's mounts (lab.check_pods)."""
    _guest_checks(
        suite,
        lab_runs,
        "pods.json",
        "shop/cart",
        "jobs/queue",
        "mountstats",
        "daemonset container",
        "without CAP_SYS_ADMIN",
    )


@pytest.mark.parametrize("suite", V1_SUITES)
def test_pods_on_cgroup_v1(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """A cgroup v1-only node (no cgroup2 mounted: the kernel's v2 id is the root for every task):
    the same two pods through runc's v1 cgroupfs driver, attributed by the memory controller's
    hierarchy that bpfnfs chose by itself; bytes exact per pod and summing to mountstats' delta."""
    _guest_checks(
        suite,
        lab_runs,
        "pods-v1.json",
        "guest: cgroup v1 only",
        "memory controller's v1 hierarchy",
        "shop/cart",
        "jobs/queue",
        "mountstats",
        late=True,
    )


@pytest.mark.parametrize("suite", CHURN_SUITES)
def test_pod_churn(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    """100 pods (cgroups + processes) write and go: kernel entries, the agent's RSS and its
    series return to their baseline, and every byte stays in the totals (lab.check_churn)."""
    _guest_checks(suite, lab_runs, "churn.json")


def test_pod_churn_long(lab_runs: dict[tuple[str, bool], Any]) -> None:
    """`make churn`: the same with 1,000 pods on 5.10 (its own VM, a long run)."""
    if ("churn", False) not in lab_runs:
        pytest.skip("the 1,000-pod churn runs in `make churn` (LAB_CHURN=1), not in make test")
    res = lab_runs[("churn", False)]
    r = _load(OUT / "churn-long" / "churn.json")
    bad = [x for x in r["checks"] if not x["ok"]]
    assert not bad, f"{len(bad)} failed: {bad[:10]}; figures {r.get('figures')}"
    assert res.rc == 0, f"rc {res.rc}: {res.error}; see {res.console_log}"


def test_image_daemonset(lab_runs: dict[tuple[str, bool], Any]) -> None:
    """`make image-check`: the built image's bpfnfs (not this checkout's) in a runc container with
    the DaemonSet's capabilities and host mounts attaches and maps every NFS mount of the node."""
    if ("image", False) not in lab_runs:
        pytest.skip("the image runs in `make image-check` (LAB_IMAGE=1), not in make test")
    r = _load(OUT / "image" / "pods-image.json")
    bad = [x for x in r["checks"] if not x["ok"]]
    assert not bad, f"{len(bad)} failed: {bad[:10]}"
    names = " ".join(x["check"] for x in r["checks"])
    assert "daemonset container: all mapped" in names, names


@pytest.mark.parametrize("suite", LATE)
def test_attaches_when_modules_load_late(suite: str, lab_runs: dict[tuple[str, bool], Any]) -> None:
    if (suite, True) not in lab_runs:
        pytest.skip(f"{suite} not in LAB_SUITES")
    res = lab_runs[(suite, True)]
    c = _load(OUT / f"{suite}-late" / "cli-late.json")
    bad = [x for x in c["checks"] if not x["ok"]]
    assert not bad, bad
    assert res.rc == 0, f"rc {res.rc}: {res.error}; see {res.console_log}"


def test_bench_smoke(lab_runs: dict[tuple[str, bool], Any]) -> None:
    """`make bench` still works: every section ran and produced sane figures (not judged: TCG is noisy)."""
    if ("bench", False) not in lab_runs:
        pytest.skip("the bench smoke runs in `make bench-smoke` (LAB_BENCH_SMOKE=1), not in make test")
    proc = lab_runs[("bench", False)]
    out = OUT / "bench-smoke"
    assert proc.returncode == 0, f"bench exit {proc.returncode}: {proc.stderr[-3000:]}{proc.stdout[-3000:]}"
    results = _load(out / "results.json")
    doc = results["suites"]["bookworm"]
    assert doc["vm"]["rc"] == 0
    # Overhead: every configuration ran every workload, and each ratio is a positive number.
    ov = doc["overhead"]
    assert not ov["errors"], ov["errors"]
    configs = set(ov["configs"])
    assert {"none", "bpfnfs-metrics", "bpfnfs-trace-all", "bpfnfs-trace-default"} <= configs
    if doc["meta"]["bcc"] == "included":
        assert {"bcc-nfsslower", "bcc-nfsdist"} <= configs
    ratios = doc["overhead_summary"]["ratios"]
    for c in configs:
        for w in ov["workloads"]:
            assert ratios[c][w]["median"] and ratios[c][w]["median"] > 0, (c, w, ratios[c][w])
    # Agent cost: figures from the kernel's books for every agent.
    for c, k in doc["overhead_summary"]["cost"].items():
        assert k["peak_rss_mib"] > 0 and k["exec_to_attached_s"] > 0, (c, k)
        if c.startswith("bpfnfs"):
            assert k["bpf_map_mib"] > 0 and k["self_reported_attach_ms"] > 0, (c, k)
    assert doc["overhead_summary"]["cost"]["bpfnfs-metrics"]["scrape_kib"] > 0
    # Counting methods: both ran every workload, and bpf_stats saw their programs run.
    ct = doc["counting"]
    assert "error" not in ct, ct
    for method in ("fentry", "kprobe"):
        for w in ct["workloads"]:
            cell = ct["methods"][method][w]
            assert cell["ops"] > 0 and cell["bpf_runs"] > 0 and cell["bpf_ns_per_op"] > 0, (method, w, cell)
    # Scale: nothing lost below the limits, every mount's counts exact.
    sc = doc["scale"]
    assert "error" not in sc, sc
    assert sc["ok"], sc
    # Transport: exact at the fixed rates; above capacity every read is printed or counted lost.
    tr = doc["transport"]
    assert "error" not in tr, tr
    assert all(s["exact"] for s in tr["steps"]), tr["steps"]
    assert tr["overload"]["lost"] > 0 and tr["overload"]["accounted"], tr["overload"]
    # The printed table covers every section.
    for title in ("overhead", "agent cost", "counting methods", "scale", "transport"):
        assert f"bookworm: {title}" in proc.stdout, proc.stdout[-2000:]
