"""Guest side: pods and containers, with Debian's runc, as kubelet + containerd lay them out.

    python3 -m lab.check_pods --out DIR

Two pods on this node, named by the stand-in Kubernetes API server (lab/kubeapi.py; no
kube-apiserver can be installed here):
- shop/cart: cgroupfs driver, besteffort, `/kubepods/besteffort/pod<uid>/<container id>`;
- jobs/queue: the systemd driver's naming, burstable,
  `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
  (the same paths created through runc's cgroupfs driver: no systemd runs in the guest).
Each pod's NFS volume is mounted as kubelet mounts it, at
`/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~nfs/shared` (NFSv4.2, the options of
/mnt/nfs4: one shared superblock for both pods and /mnt/nfs4), and bind-mounted into its
container at /data; each container has its own mount, pid, ipc, uts and network namespaces.

bpfnfs (--by cgroup --json --listen, the API's kubeconfig) starts first; then each container
writes: buffered files left for writeback (flushed later by a `sync` from the node), an fsync'd
one, and one from a child process it forks. Checks: every pod's syscall write bytes and billed
WRITE bytes equal what it wrote, under its pod and container names, in the JSON and on
/metrics; the billed bytes of all rows sum to mountstats' server write bytes delta of the
shared superblock; the pods' volumes carry bpfnfs_mount_volume_info with their pod.

Then bpfnfs itself in a runc container as the DaemonSet runs it: host pid namespace, the
node's /proc at /host/proc (PROC_PATH), tracefs, debugfs, the cgroup2 mount and
/var/lib/kubelet read-only, capabilities BPF, PERFMON, SYS_RESOURCE and SYS_PTRACE only, a
root filesystem without the node's mounts: it attaches, says it reads the node's mounts through
/host/proc/1, and lists and maps every NFS mount of the node.

    python3 -m lab.check_pods --out DIR --cgroup-v1

The same pods and checks on a cgroup v1-only guest (booted with lab.cgroup=v1: systemd's
legacy layout, no cgroup2 mounted, so bpf_get_current_cgroup_id() is the root for every
task): runc's cgroupfs driver makes the pods' cgroups in every v1 hierarchy, and bpfnfs,
on its own, attributes by the memory controller's hierarchy. Writes pods-v1.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.check_cli import BPFNFS, Checks, docs, start, stop, wait_for
from lab.check_client import mountstats_bytes
from lab.kubeapi import ApiServer, kubeconfig, pod

ROOT = Path(__file__).resolve().parents[1]
NODE = "lab-node"
PORT = 9134
KUBELET = Path("/var/lib/kubelet/pods")
RUN = Path("/run/lab-pods")
MOUNTSTATS = Path("/proc/self/mountstats")
SHARED_WITH = "/mnt/nfs4"  # same export and options: the pods' volumes share its superblock


def server_write_bytes_of(mp: str) -> int:
    return mountstats_bytes(mp)["serverwritebytes"]


def daemonset_caps() -> list[str]:
    """The capabilities deploy/kubernetes/bpfnfs.yaml's DaemonSet adds (docs/kubernetes.md says
    why each): the lab's agent container gets exactly these, read from the manifest."""
    import yaml

    for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "bpfnfs.yaml").read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            return ["CAP_" + x for x in c["securityContext"]["capabilities"]["add"]]
    raise RuntimeError("no DaemonSet in deploy/kubernetes/bpfnfs.yaml")


DAEMONSET_CAPS = daemonset_caps()
NO_ADMIN = [c for c in DAEMONSET_CAPS if c != "CAP_SYS_ADMIN"]
KiB = 1024


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    cid: str
    cgroup: str  # below the cgroup2 root
    container: str = "app"

    @property
    def volume(self) -> Path:
        return KUBELET / self.uid / "volumes" / "kubernetes.io~nfs" / "shared"

    @property
    def writes(self) -> int:
        """What its workload writes (see workload())."""
        return 40 * 64 * KiB + 20 * 64 * KiB + 16 * 4 * KiB


CART = Pod(
    "shop",
    "cart",
    "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "c1" * 32,
    "/kubepods/besteffort/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427/" + "c1" * 32,
)
QUEUE = Pod(
    "jobs",
    "queue",
    "6fa459ea-ee8a-3ca4-894e-db77e160355e",
    "d2" * 32,
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6fa459ea_ee8a_3ca4_894e_db77e160355e.slice/"
    "cri-containerd-" + "d2" * 32 + ".scope",
    container="worker",
)
PODS = (CART, QUEUE)


def log(msg: str) -> None:
    print(f"lab.check_pods: {msg}", flush=True)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def rootfs() -> Path:
    """The node's root without its submounts (no /proc, /sys, NFS): a container's image."""
    r = RUN / "rootfs"
    for d in ("/data", "/host/proc", "/etc/bpfnfs"):  # mount points the containers' specs need
        Path(d).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(r):
        r.mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", "/", str(r))
        sh("mount", "-o", "remount,bind,ro", str(r))
    return r


def spec(
    args: list[str],
    cgroup: str,
    mounts: list[dict[str, Any]],
    caps: list[str],
    namespaces: list[str],
    env: dict[str, str] | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """An OCI runtime config as containerd writes one for a pod's container (the parts that matter).
    root: the container's root filesystem (default: the node's root without its submounts)."""
    base_mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["newinstance", "ptmxmode=0666"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"],
        },
    ]
    e = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        **(env or {}),
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [f"{k}={v}" for k, v in e.items()],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(root or rootfs()), "readonly": True},
        "hostname": "pod",
        "mounts": base_mounts + mounts,
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": [{"type": t} for t in namespaces],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def runc(name: str, cfg: dict[str, Any], out: Path) -> subprocess.Popen[bytes]:
    b = RUN / name
    b.mkdir(parents=True, exist_ok=True)
    (b / "config.json").write_text(json.dumps(cfg, indent=1))
    so, se = out / f"{name}.stdout", out / f"{name}.stderr"
    return subprocess.Popen(
        ["runc", "--root", str(RUN / "state"), "run", "--bundle", str(b), name],
        stdout=so.open("wb"),
        stderr=se.open("wb"),
        stdin=subprocess.DEVNULL,
    )


LINGER = 20  # seconds a container stays after its writes: its series are scraped while it lives


def workload(p: Pod) -> list[str]:
    """Buffered writes left for writeback, an fsync'd file, and a forked child's file; then it
    lingers, as a pod does, so /metrics is read while its cgroup exists (the series of a removed
    cgroup end, docs/metrics.md)."""
    f = f"/data/{p.name}"
    return [
        "sh",
        "-c",
        f"dd if=/dev/zero of={f}.buffered bs=64k count=40 2>/dev/null && "
        f"dd if=/dev/zero of={f}.fsync bs=64k count=20 conv=fsync 2>/dev/null && "
        f"sh -c 'dd if=/dev/zero of={f}.child bs=4k count=16 2>/dev/null' && "
        f"sleep {LINGER}",
    ]


def mount_volumes() -> None:
    for p in PODS:
        p.volume.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(p.volume):
            sh("mount", "-t", "nfs", "-o", "vers=4.2", "127.0.0.1:/", str(p.volume))
    devs = {os.stat(p.volume).st_dev for p in PODS} | {os.stat(SHARED_WITH).st_dev}
    if len(devs) != 1:
        raise RuntimeError(f"the pods' volumes do not share one superblock: {devs}")


def scrape() -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as r:
        return r.read().decode()


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    import re

    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[len(name) : line.rindex("}") + 1]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def attribution(c: Checks, out: Path, kcfg: str, v1: bool = False) -> None:
    before = server_write_bytes_of(SHARED_WITH)
    p, so, se = start(
        [
            "--json",
            "--by",
            "cgroup",
            "--interval",
            "2",
            "--listen",
            f"127.0.0.1:{PORT}",
            "--kubeconfig",
            kcfg,
            "--node-name",
            NODE,
        ],
        out,
        "pods-agent",
    )
    try:
        c.add("agent: first report", wait_for(so, '"mounts"', 120), se.read_text()[-800:])
        # The pods run on the node before their containers do I/O: the API has listed them.
        c.add(
            "agent: the API's pods listed", wait_for(se, "pods on node lab-node", 60), se.read_text()[-800:]
        )
        if v1:
            c.add(
                "agent: says it attributes by the memory controller's v1 hierarchy (auto)",
                "attributing processes by cgroup v1, the memory controller's hierarchy at "
                "/sys/fs/cgroup/memory (auto: /sys/fs/cgroup is not cgroup2, no cgroup2 mount)"
                in se.read_text(),
                se.read_text()[-800:],
            )
        procs = []
        for pd in PODS:
            cfg = spec(
                workload(pd),
                pd.cgroup,
                [
                    {
                        "destination": "/data",
                        "type": "bind",
                        "source": str(pd.volume),
                        "options": ["rbind", "rw"],
                    }
                ],
                ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"],
                ["pid", "network", "ipc", "uts", "mount"],
            )
            procs.append((pd, runc(f"pod-{pd.name}", cfg, out)))
        deadline = time.monotonic() + 120
        written = [Path(SHARED_WITH) / f"{pd.name}.child" for pd in PODS]
        while time.monotonic() < deadline and not all(f.exists() for f in written):
            time.sleep(0.5)
        time.sleep(1)
        sh("sync")  # the buffered files' writeback, from the node: billed to their last dirtier
        time.sleep(5)  # two intervals
        after = server_write_bytes_of(SHARED_WITH)
        text = scrape()
        for pd, pr in procs:
            rc = pr.wait(timeout=300)
            c.add(
                f"{pd.namespace}/{pd.name}: container exits 0",
                rc == 0,
                (out / f"pod-{pd.name}.stderr").read_text(),
            )
    finally:
        rc = stop(p)
    c.add("agent: exits 0", rc == 0, se.read_text()[-800:])
    err = se.read_text()
    c.add("agent: no traceback", "Traceback" not in err, err[-1500:])
    rows: dict[str, dict[str, Any]] = {}
    for d in docs(so):
        for m in d["mounts"]:
            if m["mount_point"] != SHARED_WITH:
                continue
            for r in m.get("rows", []):
                key = r.get("cgroup") or r["name"]
                acc = rows.setdefault(
                    key, {k: v for k, v in r.items() if k not in ("write_bytes", "wire_write_bytes")}
                )
                acc["write_bytes"] = acc.get("write_bytes", 0) + r["write_bytes"]
                acc["wire_write_bytes"] = acc.get("wire_write_bytes", 0) + r["wire_write_bytes"]
    seen = {k: (v.get("pod"), v["write_bytes"], v["wire_write_bytes"]) for k, v in rows.items()}
    log(f"rows on {SHARED_WITH}: {seen}")
    for pd in PODS:
        r = rows.get(pd.cgroup, {})
        c.add(
            f"{pd.namespace}/{pd.name}: its cgroup's row names its pod and container",
            (r.get("namespace"), r.get("pod"), r.get("container"), r.get("pod_uid"), r.get("container_id"))
            == (pd.namespace, pd.name, pd.container, pd.uid, pd.cid),
            r,
        )
        c.add(
            f"{pd.namespace}/{pd.name}: syscall write bytes = what it wrote",
            r.get("write_bytes") == pd.writes,
            (r.get("write_bytes"), pd.writes),
        )
        c.add(
            f"{pd.namespace}/{pd.name}: billed WRITE bytes = what it wrote (writeback by sync included)",
            r.get("wire_write_bytes") == pd.writes,
            (r.get("wire_write_bytes"), pd.writes),
        )
        got = [
            v
            for lb, v in series(text, "bpfnfs_process_server_write_bytes_total")
            if lb.get("mount") == SHARED_WITH
            and lb.get("namespace") == pd.namespace
            and lb.get("pod") == pd.name
            and lb.get("container") == pd.container
        ]
        c.add(
            f"{pd.namespace}/{pd.name}: /metrics billed bytes under its pod labels",
            sum(got) == pd.writes,
            got,
        )
        vol = [
            lb
            for lb, _v in series(text, "bpfnfs_mount_volume_info")
            if lb.get("mount") == str(pd.volume)
            and lb.get("pod") == pd.name
            and lb.get("namespace") == pd.namespace
        ]
        c.add(f"{pd.namespace}/{pd.name}: bpfnfs_mount_volume_info for its volume", len(vol) == 1, vol)
    total = sum(r["wire_write_bytes"] for r in rows.values())
    c.add(
        "billed WRITE bytes of every row = mountstats' server write bytes delta",
        total == after - before,
        (total, after - before),
    )


def daemonset(c: Checks, out: Path, kcfg: str, image: Path | None = None) -> None:
    """image: the root filesystem of the image deploy/Dockerfile builds (its bpfnfs, not this
    checkout's), run as the DaemonSet runs it; only the first scenario."""
    mounts = [
        {"destination": "/host/proc", "type": "bind", "source": "/proc", "options": ["rbind", "rw"]},
        {
            "destination": "/sys/kernel/tracing",
            "type": "bind",
            "source": "/sys/kernel/tracing",
            "options": ["rbind"],
        },
        {
            "destination": "/sys/kernel/debug",
            "type": "bind",
            "source": "/sys/kernel/debug",
            "options": ["rbind"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "bind",
            "source": "/sys/fs/cgroup",
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/var/lib/kubelet",
            "type": "bind",
            "source": "/var/lib/kubelet",
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/etc/bpfnfs",
            "type": "bind",
            "source": str(Path(kcfg).parent),
            "options": ["rbind", "ro"],
        },
    ]
    flags = ["--json", "--count", "2", "--interval", "1", "--kubeconfig", "/etc/bpfnfs/kubeconfig"]
    env = {"PROC_PATH": "/host/proc", "NODE_NAME": NODE}
    if image is None:
        # bpfnfs as the image would carry it: this checkout and its venv (under /tmp on some
        # machines, which the container's own /tmp tmpfs would hide).
        mounts.append(
            {"destination": str(ROOT), "type": "bind", "source": str(ROOT), "options": ["rbind", "ro"]}
        )
        args = [*BPFNFS, *flags]
        env["PYTHONPATH"] = str(ROOT / "src")
    else:  # the image's entrypoint, on its PATH
        args = ["bpfnfs", *flags]
        env["PATH"] = "/opt/bpfnfs/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env["PYTHONDONTWRITEBYTECODE"] = "1"

    def agent(name: str, caps: list[str]) -> tuple[int | None, str, list[dict[str, Any]]]:
        cfg = spec(
            args,
            f"/kubepods/burstable/podbpfnfs/{name}",
            mounts,
            caps,
            ["ipc", "uts", "mount"],
            env=env,
            root=image,
        )
        p = runc(name, cfg, out)
        try:
            rc: int | None = p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = None
        err = (out / f"{name}.stderr").read_text(errors="replace")
        return rc, err, docs(out / f"{name}.stdout")

    rc, err, d = agent("bpfnfs-daemonset", DAEMONSET_CAPS)
    c.add("daemonset container: bpfnfs exits 0 with the DaemonSet's capabilities", rc == 0, err[-1500:])
    c.add(
        "daemonset container: reads the node's mounts through /host/proc/1",
        "through /host/proc/1" in err,
        err[-800:],
    )
    mps = {m["mount_point"]: m for m in d[-1]["mounts"]} if d else {}
    want = {"/mnt/nfs3", "/mnt/nfs4", *(str(pd.volume) for pd in PODS)}
    c.add("daemonset container: lists every NFS mount of the node", want <= set(mps), sorted(mps))
    c.add(
        "daemonset container: all mapped to their RPC clients",
        bool(mps) and all(m.get("rpc_clients") for m in mps.values()),
        {k: (m.get("rpc_clients"), m.get("client_state")) for k, m in mps.items()},
    )
    c.add("daemonset container: no traceback", "Traceback" not in err, err[-1500:])
    if image is not None:
        return
    # Without CAP_SYS_ADMIN: no module BTF, so tier tracefs, and it says why; where perf events
    # need CAP_SYS_ADMIN too (Debian's perf_event_paranoid=3) it ends with one message naming both.
    rc, err, d = agent("bpfnfs-no-admin", NO_ADMIN)
    c.add(
        "without CAP_SYS_ADMIN: tier tracefs, saying why",
        "tier tracefs: tier btf is impossible" in err and "CAP_SYS_ADMIN (BPF_BTF_GET_NEXT_ID)" in err,
        err[-800:],
    )
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if paranoid >= 3:
        c.add(
            "without CAP_SYS_ADMIN, perf_event_paranoid 3: exits 2 naming the sysctl and the capability",
            rc == 2 and "perf_event_paranoid is 3" in err and "add that capability" in err,
            (rc, err[-800:]),
        )
    else:
        c.add("without CAP_SYS_ADMIN: runs on tier tracefs", rc == 0 and bool(d), (rc, err[-800:]))
    c.add("without CAP_SYS_ADMIN: no traceback", "Traceback" not in err, err[-1500:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cgroup-v1", action="store_true", help="a v1-only guest: attribution only")
    ap.add_argument("--image-rootfs", type=Path, help="the built image's root: its DaemonSet container only")
    args = ap.parse_args()
    v1 = args.cgroup_v1
    image: Path | None = args.image_rootfs
    name = "pods-v1" if v1 else "pods-image" if image else "pods"
    out: Path = args.out / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    c = Checks("lab.check_pods")
    if v1:
        mi = Path("/proc/self/mountinfo").read_text()
        c.add(
            "guest: cgroup v1 only (no cgroup2 mount, memory hierarchy at /sys/fs/cgroup/memory)",
            " - cgroup2 " not in mi and os.path.ismount("/sys/fs/cgroup/memory"),
            [ln for ln in mi.splitlines() if "cgroup" in ln],
        )
    api = ApiServer()
    api.items = [
        pod(
            pd.uid,
            pd.name,
            pd.cid,
            namespace=pd.namespace,
            node=NODE,
            container=pd.container,
            volumes=[{"name": "shared", "nfs": {"server": "127.0.0.1", "path": "/"}}],
        )
        for pd in PODS
    ]
    kdir = RUN / "kube"
    kdir.mkdir(parents=True, exist_ok=True)
    kcfg = kubeconfig(kdir, api.url)
    try:
        if v1:  # asked for v2 where there is none: one line naming the setting, exit 2
            r = subprocess.run(
                [*BPFNFS, "--json", "--cgroup-hierarchy", "v2"], capture_output=True, text=True, timeout=120
            )
            c.add(
                "--cgroup-hierarchy v2 on a v1-only node: exit 2, one line naming the setting",
                r.returncode == 2
                and r.stderr.strip().splitlines()
                == ["bpfnfs: error: collection.cgroup_hierarchy v2: no cgroup2 filesystem is mounted"],
                (r.returncode, r.stderr[-600:]),
            )
        mount_volumes()
        if image is not None:
            daemonset(c, out, kcfg, image)
        else:
            attribution(c, out, kcfg, v1)
            if not v1:
                daemonset(c, out, kcfg)
    except Exception as e:  # a guest error must still leave a result file
        c.add("check_pods ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        api.close()
    watches = [q for path, q in api.requests if q.get("watch")]
    lists = [q for path, q in api.requests if path == "/api/v1/pods" and not q.get("watch")]
    c.add(
        # The image's agent ends after two reports (--count 2): listed, maybe not yet watching.
        "API: pods listed" + ("" if image else " and watched") + " with this node's fieldSelector",
        bool(lists if image else watches)
        and all(
            q.get("fieldSelector") == [f"spec.nodeName={NODE}"]
            for path, q in api.requests
            if path == "/api/v1/pods"
        ),
        api.requests[:4],
    )
    (args.out / f"{name}.json").write_text(json.dumps({"checks": c.items}, indent=1))
    log(f"{len(c.items) - c.failed}/{len(c.items)} checks passed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
