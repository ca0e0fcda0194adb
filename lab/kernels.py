"""Fetch Debian kernels by suite name into the lab cache.

A suite is resolved through its ``linux-image-amd64`` metapackage, because exact ABI packages
disappear from the mirror at each point release. apt runs against a private state/cache/sources
under the lab cache, so the machine's own apt state is never touched.

Debian's 7.x kernels (trixie-backports, sid) ship split packages: ``linux-image-K`` is empty and
depends on ``linux-binary-K`` (``/usr/lib/modules/K/vmlinuz``), ``linux-modules-K`` and
``linux-base-K`` (config, System.map). They are fetched together and laid out like a classic
package (``boot/vmlinuz-K``, ``boot/config-K``, ``lib/modules/K``).

A lab *target* is a suite plus kernel command-line options: ``trixie-preempt`` boots trixie's
kernel with ``preempt=full`` (Debian builds PREEMPT_DYNAMIC kernels with voluntary preemption
as the default).
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.common import LabError, cache_root, file_lock, log, run_tool


@dataclass(frozen=True)
class Target:
    apt_suite: str  # the Debian suite whose linux-image-amd64 is booted
    series: str  # kernel series, for messages
    cmdline: str = ""  # extra kernel command-line options


SUITES: dict[str, Target] = {
    "bullseye": Target("bullseye", "5.10"),
    "bookworm": Target("bookworm", "6.1"),
    "trixie": Target("trixie", "6.12"),
    # Debian's newest kernel: preemption "full (lazy)" by default, split packages.
    "trixie-backports": Target("trixie-backports", "7.x"),
    # The same 6.12 as trixie, fully preemptible: BPF programs can be preempted on their CPU.
    "trixie-preempt": Target("trixie", "6.12", "preempt=full"),
}
# Packages a split kernel (7.x) spreads its files over, besides the empty linux-image-K.
_SPLIT_PARTS = ("linux-binary-", "linux-modules-", "linux-base-")
MIRROR = os.environ.get("BPFNFS_LAB_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_COMPLETE = ".complete"


@dataclass(frozen=True)
class Kernel:
    suite: str
    release: str  # uname -r inside the guest
    vmlinuz: Path
    modules: Path  # <root>/lib/modules/<release>

    @property
    def root(self) -> Path:
        """Base directory for ``depmod -b`` / ``modprobe -d``."""
        return self.modules.parents[2]

    @property
    def config(self) -> Path:
        return self.vmlinuz.with_name(f"config-{self.release}")


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise LabError(f"unknown suite {suite!r} (choose from: {', '.join(SUITES)})")


def cmdline(suite: str) -> str:
    """Extra kernel command-line options of a lab target ("" for a plain suite)."""
    check_suite(suite)
    return SUITES[suite].cmdline


def fetch(suite: str, *, refresh: bool = False) -> Kernel:
    """Return the cached kernel for ``suite``, downloading it first if needed (or if ``refresh``)."""
    check_suite(suite)
    apt_suite = SUITES[suite].apt_suite
    cache = cache_root()
    with file_lock(cache / "locks" / f"kernel-{apt_suite}.lock"):
        if not refresh and (kernel := _cached(cache, apt_suite)):
            return kernel
        return _download(cache, apt_suite)


def _cached(cache: Path, suite: str) -> Kernel | None:
    pointer = cache / "suites" / suite
    if not pointer.is_file():
        return None
    release = pointer.read_text().strip()
    return _kernel_at(cache / "kernels" / release, suite, release)


def _kernel_at(tree: Path, suite: str, release: str) -> Kernel | None:
    if not (tree / _COMPLETE).exists():
        return None
    kernel = Kernel(suite, release, tree / "boot" / f"vmlinuz-{release}", tree / "lib" / "modules" / release)
    if not kernel.vmlinuz.is_file() or not (kernel.modules / "modules.dep").is_file():
        return None
    return kernel


def _apt_options(apt: Path) -> list[str]:
    return [
        "-o", f"Dir::State={apt / 'state'}",
        "-o", f"Dir::State::status={apt / 'status'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        # Host pinning must not influence which kernel a suite resolves to.
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", "Dir::Etc::PreferencesParts=/dev/null",
        "-o", "Acquire::Languages=none",
        "-o", "DPkg::Lock::Timeout=600",
    ]  # fmt: skip


def _prepare_apt(cache: Path, suite: str) -> list[str]:
    apt = cache / "apt" / suite
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
    (apt / "sources.list").write_text(f"deb {signed}{MIRROR} {suite} main\n")
    return _apt_options(apt)


def _resolve(opts: list[str], suite: str) -> str:
    """Name of the concrete image package the suite's linux-image-amd64 depends on."""
    out = run_tool(["apt-cache", *opts, "depends", "linux-image-amd64"], f"resolving {suite} kernel").stdout
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise LabError(f"resolving {suite} kernel failed: linux-image-amd64 has no linux-image-* dependency")


def _download(cache: Path, suite: str) -> Kernel:
    opts = _prepare_apt(cache, suite)
    log(f"{suite}: updating private package lists")
    update = run_tool(["apt-get", *opts, "-q", "update"], f"apt-get update for {suite}")
    # apt-get update exits 0 when an index cannot be fetched; it only warns.
    failed = [ln for ln in update.stderr.splitlines() if ln.startswith(("W: Failed to fetch", "E:"))]
    if failed:
        raise LabError(f"apt-get update for {suite} failed: {' '.join(failed[0].split())}")
    package = _resolve(opts, suite)
    packages = [package, *_split_parts(opts, package)]
    kernels = cache / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{suite}-", dir=kernels) as tmp:
        work = Path(tmp)
        log(f"{suite}: downloading {' '.join(packages)}")
        run_tool(["apt-get", *opts, "-q", "download", *packages], f"downloading {package}", cwd=work)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != len(packages):
            raise LabError(f"downloading {package} failed: {len(debs)} of {len(packages)} .deb files written")
        tree = work / "tree"
        for deb in debs:
            run_tool(["dpkg-deb", "-x", deb, tree], f"unpacking {deb.name}")
        release = _normalize_tree(tree, package)
        run_tool(["depmod", "-b", tree, release], f"depmod for {release}")
        (tree / _COMPLETE).touch()
        final = kernels / release
        if _kernel_at(final, suite, release) is None:
            shutil.rmtree(final, ignore_errors=True)
            tree.rename(final)  # same filesystem, so the finished tree appears atomically
    pointer = cache / "suites" / suite
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp_pointer = pointer.with_suffix(".tmp")
    tmp_pointer.write_text(release + "\n")
    tmp_pointer.replace(pointer)
    kernel = _kernel_at(final, suite, release)
    if kernel is None:
        raise LabError(f"{package}: unpacked tree at {final} is incomplete")
    log(f"{suite}: kernel {release} ready")
    return kernel


def _split_parts(opts: list[str], package: str) -> list[str]:
    """The linux-binary/-modules/-base packages a split (7.x) linux-image-K depends on; [] otherwise."""
    out = run_tool(["apt-cache", *opts, "depends", package], f"looking up {package}").stdout
    release = package.removeprefix("linux-image-")
    parts = []
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(\S+)", line)
        if m and m.group(1) in {f"{p}{release}" for p in _SPLIT_PARTS}:
            parts.append(m.group(1))
    return sorted(set(parts))


def _normalize_tree(tree: Path, package: str) -> str:
    """Lay the unpacked packages out as kmod and the lab expect; return KVER.

    usr/lib/modules (merged /usr, trixie on) moves to lib/modules, where kmod's -b/-d look; a
    split kernel's lib/modules/K/{vmlinuz,config} move to boot/{vmlinuz,config}-K."""
    usr_mods = tree / "usr" / "lib" / "modules"
    mods = tree / "lib" / "modules"
    if usr_mods.is_dir() and not mods.exists():
        mods.parent.mkdir(parents=True, exist_ok=True)
        usr_mods.rename(mods)
    releases = [p.name for p in mods.iterdir()] if mods.is_dir() else []
    if len(releases) != 1:
        raise LabError(f"{package}: expected one modules directory, found {releases or 'none'}")
    release = releases[0]
    boot = tree / "boot"
    for name in ("vmlinuz", "config", "System.map"):
        inside = mods / release / name
        if inside.is_file() and not (boot / f"{name}-{release}").exists():
            boot.mkdir(exist_ok=True)
            inside.rename(boot / f"{name}-{release}")
    if not (boot / f"vmlinuz-{release}").is_file():
        raise LabError(f"{package}: no boot/vmlinuz-{release} in the package")
    return release


def pvh_image(kernel: Kernel) -> Path | None:
    """The uncompressed vmlinux ELF, which QEMU starts through its PVH entry; None if unusable.

    Under TCG the in-guest decompression of a bzImage takes about 4 s, so booting the ELF
    directly shortens every boot. The result is cached next to the vmlinuz.
    """
    target = kernel.vmlinuz.with_name(f"vmlinux-{kernel.release}")
    if target.is_file():
        return target
    try:
        pvh = "CONFIG_PVH=y" in kernel.config.read_text().splitlines()
    except OSError:
        pvh = False
    if not pvh:
        return None
    with file_lock(cache_root() / "locks" / f"kernel-{kernel.suite}.lock"):
        if target.is_file():
            return target
        elf = _decompress_bzimage(kernel.vmlinuz.read_bytes())
        if elf is None:
            log(f"{kernel.release}: cannot unpack the bzImage payload; booting the compressed image")
            return None
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(elf)
        tmp.replace(target)
    return target


def _decompress_bzimage(image: bytes) -> bytes | None:
    # x86 boot protocol: setup_sects at 0x1f1, payload_offset/payload_length at 0x248/0x24c.
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    # The build appends the uncompressed size (4 bytes) to the compressed stream.
    payload = image[start : start + length - 4]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = gzip.decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd") and (zstd := shutil.which("zstd")):
            elf = subprocess.run([zstd, "-dcq"], input=payload, capture_output=True, check=True).stdout
        else:
            return None
    except (lzma.LZMAError, OSError, EOFError, subprocess.CalledProcessError):
        return None
    return elf if elf.startswith(b"\x7fELF") else None


def fetch_headers(suite: str) -> Path:
    """Kernel headers for ``suite``'s cached kernel, downloaded once; returns BCC's kernel source dir.

    Debian splits the headers between ``linux-headers-<release>`` (generated files, config) and
    ``linux-headers-<abi>-common`` (the source headers). BCC only merges the two through
    /lib/modules/<release>/{build,source}, which in the guest is the read-only module share; with
    ``BCC_KERNEL_SOURCE`` it wants one tree. So the generated dirs are linked into the common tree
    and that tree is returned (for ``BCC_KERNEL_SOURCE``). linux-kbuild is not needed: BCC parses
    no Makefile.
    """
    kernel = fetch(suite)
    cache = cache_root()
    final = cache / "headers" / kernel.release
    with file_lock(cache / "locks" / f"kernel-{kernel.suite}.lock"):
        if not (final / _COMPLETE).exists():
            _download_headers(cache, kernel.suite, kernel.release, final)
    return _headers_source(final, kernel.release)


def _download_headers(cache: Path, suite: str, release: str, final: Path) -> None:
    opts = _prepare_apt(cache, suite)
    package = f"linux-headers-{release}"
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{release}-", dir=final.parent) as tmp:
        work = Path(tmp)
        try:
            common = _headers_common(opts, package)
        except LabError:
            # The lists may predate this cache (or be gone): refresh them once.
            run_tool(["apt-get", *opts, "-q", "update"], f"apt-get update for {suite}")
            common = _headers_common(opts, package)
        log(f"{suite}: downloading {package} and {common}")
        what = f"downloading {package} (if {suite} moved on: python3 -m lab kernel --refresh {suite})"
        run_tool(["apt-get", *opts, "-q", "download", package, common], what, cwd=work)
        tree = work / "tree"
        for deb in sorted(work.glob("*.deb")):
            run_tool(["dpkg-deb", "-x", deb, tree], f"unpacking {deb.name}")
        _merge_generated(tree, release)
        (tree / _COMPLETE).touch()
        shutil.rmtree(final, ignore_errors=True)
        tree.rename(final)  # same filesystem, so the finished tree appears atomically
    log(f"{suite}: headers for {release} ready")


def _headers_common(opts: list[str], package: str) -> str:
    """Name of the -common package that ``package`` depends on (the arch-independent headers)."""
    out = run_tool(["apt-cache", *opts, "depends", package], f"looking up {package}").stdout
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-headers-\S+-common\S*)", line)
        if m:
            return m.group(1)
    raise LabError(f"looking up {package} failed: no linux-headers-*-common dependency")


def _headers_dirs(tree: Path, release: str) -> tuple[Path, Path]:
    """(build, source) inside ``tree``, found through the package's lib/modules symlinks."""
    dirs = []
    for name in ("build", "source"):
        # Absolute targets up to bookworm; trixie (merged /usr) has relative ones under usr/lib.
        links = [tree / lib / "modules" / release / name for lib in ("lib", "usr/lib")]
        found = []
        for link in filter(Path.is_symlink, links):
            target = os.readlink(link)
            base = tree if target.startswith("/") else link.parent
            found.append(Path(os.path.normpath(base / target.lstrip("/"))))
        if not found or not found[0].is_dir():
            raise LabError(f"linux-headers-{release}: no usable lib/modules/{release}/{name} link")
        dirs.append(found[0])
    return dirs[0], dirs[1]


def _merge_generated(tree: Path, release: str) -> None:
    # Relative links keep the tree valid after the rename and at the same path in the guest.
    build, source = _headers_dirs(tree, release)
    for sub in (Path("include"), *(p.relative_to(build) for p in build.glob("arch/*/include"))):
        for child in (build / sub).iterdir():
            link = source / sub / child.name
            if child.is_dir() and link.parent.is_dir() and not link.exists():
                link.symlink_to(os.path.relpath(child, link.parent))


def _headers_source(final: Path, release: str) -> Path:
    source = _headers_dirs(final, release)[1]
    if not (source / "include" / "generated" / "autoconf.h").is_file():
        raise LabError(f"headers for {release} at {final} are incomplete (remove the directory to refetch)")
    return source
