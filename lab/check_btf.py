"""Guest side: BTF from files instead of the kernel (config btf.kernel, btf.model_dir).

    python3 -m lab.check_btf --out DIR [--skip-btf-tier] [--baseline]

Runs in a lab VM with /mnt/nfs3 and /mnt/nfs4 mounted (so sunrpc, nfs, nfsv3 and
nfsv4 have module BTF in /sys/kernel/btf). It copies the kernel's vmlinux BTF and the
NFS modules' BTF to /tmp/btf, then:

1. (unless --skip-btf-tier) with the kernel's own BTF still visible, an agent whose
   CO-RE types come from /tmp/btf (one merged file for libbpf's btf_custom_path):
   tier btf, counts equal to mountstats' deltas around a small workload.
2. hides the kernel's BTF under an empty tmpfs over /sys/kernel/btf, as on a kernel
   without CONFIG_DEBUG_INFO_BTF; preflight without btf.kernel must fail naming
   btf.kernel, pahole and BTFHub, and a missing or non-BTF btf.kernel must be named.
3. an agent with btf.kernel=/tmp/btf/vmlinux and btf.model_dir=/tmp/btf: tp_btf and
   fentry cannot attach without the kernel's own BTF, so tier tracefs, saying why;
   counts equal to mountstats' deltas around a small workload.

Writes DIR/btf.json; exits 0 when every check passed, 3 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bpfnfs.agent import Agent
from bpfnfs.config import Config
from bpfnfs.probes import system, tiers
from bpfnfs.probes.btf import SYSFS_BTF, BtfSource
from bpfnfs.probes.system import RequirementError
from lab.check import MOUNTS, compare, stable_pair, workload
from lab.check_cli import Checks

COPY = Path("/tmp/btf")
MODULES = ("sunrpc", "nfs", "nfsv3", "nfsv4", "lockd", "nfs_acl", "auth_rpcgss", "grace")


def log(msg: str) -> None:
    print(f"lab.check_btf: {msg}", flush=True)


def copy_btf() -> list[str]:
    """The kernel's vmlinux BTF and the NFS modules' split BTF, copied to COPY."""
    shutil.rmtree(COPY, ignore_errors=True)
    COPY.mkdir(parents=True)
    shutil.copyfile(SYSFS_BTF / "vmlinux", COPY / "vmlinux")
    copied = []
    for m in MODULES:
        if (SYSFS_BTF / m).is_file():
            shutil.copyfile(SYSFS_BTF / m, COPY / m)
            copied.append(m)
    return copied


def _config(source: BtfSource) -> Config:
    """The configuration file's btf section, as an operator writes it."""
    return Config(btf={"kernel": source.kernel, "model_dir": source.module_dir})


def start_agent(source: BtfSource, lines: list[str]) -> Agent:
    """An agent configured with btf.kernel and btf.model_dir as `source` says."""

    def say(m: str) -> None:
        lines.append(m)
        log(f"bpfnfs: {m}")

    agent = Agent(_config(source), log=say)
    assert agent.loader.btf_source == source, (agent.loader.btf_source, source)
    agent.preflight()
    return agent


def measure(c: Checks, name: str, agent: Agent, out: Path) -> None:
    """Counts equal to mountstats' deltas around the small workload."""
    for _ in range(20):
        agent.refresh_mounts()
        if all(nm.clid is not None for nm in agent.mounts.nfs_list()):
            break
        time.sleep(0.2)
    ms0, (rep0,) = stable_pair(agent)
    wl = workload(out, small=True, worker=f"-{name}")
    time.sleep(1.0)  # async completions (writeback, COMMIT) settle
    ms1, (rep1,) = stable_pair(agent)
    checks = compare(agent.tier or "?", ms0, ms1, rep0, rep1, wl)
    bad = [x for x in checks if not x["ok"]]
    c.add(f"{name}: {len(checks)} counts equal mountstats' deltas", checks and not bad, bad[:20])
    (out / f"btf-{name}-checks.json").write_text(json.dumps(checks, indent=1))


def scenario(c: Checks, name: str, source: BtfSource, tier: str, out: Path, timing: dict[str, float]) -> None:
    lines: list[str] = []
    t0 = time.monotonic()
    agent = start_agent(source, lines)
    try:
        c.add(f"{name}: attaches", agent.try_attach(), lines[-5:])
        c.add(f"{name}: tier {tier}", agent.tier == tier, agent.plan.describe() if agent.plan else None)
        timing[name] = round(time.monotonic() - t0, 1)
        log(f"{name}: attached in {timing[name]} s")
        merged = next((x for x in lines if x.startswith("CO-RE types from")), "")
        c.add(
            f"{name}: CO-RE types from the merged file, sunrpc and nfs included",
            "modules merged: sunrpc, nfs" in merged,
            lines[:5],
        )
        c.add(f"{name}: every program attached", not agent.probe_failures, agent.probe_failures)
        measure(c, name, agent, out)
    finally:
        agent.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.check_btf")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-btf-tier", action="store_true", help="skip scenario 1 (kernel BTF visible)")
    ap.add_argument("--baseline", action="store_true", help="first time an attach with the kernel's own BTF")
    ns = ap.parse_args(argv)
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    for mp in MOUNTS:
        if not os.path.ismount(mp):
            log(f"{mp} is not mounted")
            return 1
    c = Checks("lab.check_btf")
    copied = copy_btf()
    c.add(
        "module BTF of sunrpc, nfs, nfsv3, nfsv4 copied",
        {"sunrpc", "nfs", "nfsv3", "nfsv4"} <= set(copied),
        copied,
    )
    source = BtfSource(kernel=COPY / "vmlinux", module_dir=COPY)
    timing: dict[str, float] = {}
    if ns.baseline:
        t0 = time.monotonic()
        agent = start_agent(BtfSource(), [])
        c.add("baseline (the kernel's own BTF): attaches", agent.try_attach())
        timing["baseline"] = round(time.monotonic() - t0, 1)
        agent.close()
    if not ns.skip_btf_tier:
        scenario(c, "kernel-btf-visible", source, "btf", out, timing)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(SYSFS_BTF)], check=True)
    try:
        c.add("the kernel's BTF is hidden", not (SYSFS_BTF / "vmlinux").exists())
        # Without btf.kernel: the agent's own preflight refuses, naming the setting and the ways to get one.
        try:
            Agent(Config(), log=lambda m: None).preflight()
            msg = None
        except RequirementError as e:
            msg = str(e)
        want = ("btf.kernel", "pahole --btf_encode_detached", "btfhub-archive")
        c.add("preflight without btf.kernel fails naming it, pahole and BTFHub",
              msg is not None and all(w in msg for w in want), msg)  # fmt: skip
        log(f"preflight says: {msg}")
        for kernel, word in (
            (COPY / "absent.btf", "cannot read it"),
            (Path("/bin/sh"), "it is not a BTF file (no 0xeB9F magic"),  # an ELF, as a vmlinux is
        ):
            try:
                system.check_vmlinux_btf(BtfSource(kernel=kernel, module_dir=COPY))
                msg = None
            except RequirementError as e:
                msg = str(e)
            c.add(
                f"btf.kernel {kernel}: refused naming it",
                msg is not None and f"btf.kernel {kernel}: {word}" in msg,
                msg,
            )
        mods = system.modules(system.check_tracefs(), source)
        try:
            tiers.tier_for("btf", mods.have_module_btf, mods.attach_btf_missing)
            msg = None
        except tiers.TierError as e:
            msg = str(e)
        c.add(
            "tier btf refused without the kernel's own BTF",
            msg is not None and "kernel's own BTF" in msg,
            msg,
        )
        scenario(c, "kernel-btf-hidden", source, "tracefs", out, timing)
    finally:
        subprocess.run(["umount", str(SYSFS_BTF)], check=False)
    doc = {"checks": c.items, "failed": c.failed, "attach_seconds": timing}
    (out / "btf.json").write_text(json.dumps(doc, indent=1))
    log(f"{len(c.items)} checks, {c.failed} failed; attach seconds {timing}")
    return 0 if not c.failed else 3


if __name__ == "__main__":
    sys.exit(main())
