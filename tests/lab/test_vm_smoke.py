"""Smoke tests of the NFS lab VM harness: boots a real bookworm kernel under QEMU (TCG).

Each boot costs 10-25 s, so the checks are batched into one guest script per boot.
Run with: python3 -m pytest -m lab tests/lab
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab import kernels, vm

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which(vm.QEMU) is None, reason=f"{vm.QEMU} not installed"),
]

SUITE = "bookworm"

# Each check prints its name, so a failure names the step in output.log.
SMOKE_SCRIPT = r"""
set -u
check() { name=$1; shift; if "$@"; then echo "ok $name"; else echo "FAIL $name"; fails=$((fails + 1)); fi; }
fails=0
check release test "$(uname -r)" = "$EXPECT_RELEASE"
check cwd test "$(pwd)" = "$EXPECT_CWD"
check path test "${PATH%%:*}" = /usr/sbin
check nfs3-mounted grep -q ' /mnt/nfs3 .* - nfs 127.0.0.1:/srv/nfs ' /proc/self/mountinfo
check nfs4-mounted grep -q ' /mnt/nfs4 .* - nfs4 127.0.0.1:/ ' /proc/self/mountinfo
check nfs4-is-4.2 grep -q ' /mnt/nfs4 .*vers=4\.2' /proc/self/mountinfo
for m in nfs3 nfs4; do
    check "$m-write" sh -c "echo hello-$m > /mnt/$m/smoke-$m"
    check "$m-read" test "$(cat /mnt/$m/smoke-$m)" = "hello-$m"
done
# Both mounts export the same tmpfs, so each sees the other's file.
check cross-read test "$(cat /mnt/nfs4/smoke-nfs3)" = hello-nfs3
check mountstats-nfs3 grep -q 'mounted on /mnt/nfs3 with fstype nfs statvers=' /proc/self/mountstats
check mountstats-nfs4 grep -q 'mounted on /mnt/nfs4 with fstype nfs4 statvers=' /proc/self/mountstats
check out-dir-writable sh -c 'echo artifact > "$LAB_OUT/artifact.txt"'
exit "$fails"
"""


def test_boot_with_nfs(tmp_path: Path) -> None:
    release = kernels.fetch(SUITE).release
    env = {"EXPECT_RELEASE": release, "EXPECT_CWD": os.getcwd()}
    result = vm.run(SUITE, SMOKE_SCRIPT, tmp_path, nfs=True, timeout=300, env=env)
    output = result.output_log.read_text()
    assert result.rc == 0, f"{result.error or ''}\n{output}\nconsole: {result.console_log}"
    passed = {line.removeprefix("ok ") for line in output.splitlines() if line.startswith("ok ")}
    assert passed >= {"release", "nfs3-mounted", "nfs4-mounted", "nfs3-read", "nfs4-read", "mountstats-nfs4"}
    assert "FAIL" not in output
    assert result.release == release
    assert (tmp_path / "artifact.txt").read_text() == "artifact\n"
    assert {"stage2", "nfs-ready", "command-start", "command-end"} <= result.events.keys()
    assert result.console_log.is_file()
    assert 0 < result.wall_seconds < 300


def test_exit_status_propagates(tmp_path: Path) -> None:
    result = vm.run(SUITE, ["sh", "-c", "exit 3"], tmp_path, nfs=False, timeout=300)
    assert result.rc == 3, f"{result.error}; console: {result.console_log}"
    assert result.error is None
    assert "nfs-ready" not in result.events
