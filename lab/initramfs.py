"""Build (and cache per kernel) the busybox initramfs that mounts the host root over 9p.

The archive is written directly in cpio "newc" format, so /dev/console can be a real device node
without running mknod, and the output is byte-for-byte reproducible (mtime 0, sorted entries).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from lab.common import LabError, cache_root, file_lock, log, run_tool
from lab.kernels import Kernel

GUEST_DIR = Path(__file__).resolve().parent / "guest"
STAGE1 = GUEST_DIR / "stage1.sh"
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


@dataclass(frozen=True)
class _Entry:
    name: str  # path inside the archive, no leading slash
    mode: int  # including the file-type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def boot_modules(kernel: Kernel) -> list[Path]:
    """Dependency-ordered module files for BOOT_MODULES; built-ins are skipped."""
    ordered: list[Path] = []
    for name in BOOT_MODULES:
        out = run_tool(
            ["modprobe", "-d", kernel.root, "-S", kernel.release, "--show-depends", name],
            f"resolving module {name} for {kernel.release}",
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in ordered:
                    ordered.append(path)
    return ordered


def _busybox() -> Path:
    found = shutil.which("busybox", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not found:
        raise LabError("busybox not found (install busybox-static on the host)")
    path = Path(found).resolve()
    # A dynamically linked busybox would need its libraries in the initramfs too; its ELF
    # interpreter path (.interp) sits in the first page.
    with path.open("rb") as fh:
        head = fh.read(4096)
    if b"ld-linux" in head:
        raise LabError(f"{path} is dynamically linked (install busybox-static)")
    return path


def _module_data(path: Path) -> bytes:
    raw = path.read_bytes()
    # busybox insmod cannot read compressed modules (trixie ships .ko.xz).
    return lzma.decompress(raw) if path.suffix == ".xz" else raw


def _entries(kernel: Kernel) -> list[_Entry]:
    dirs = ["bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot"]
    entries = [_Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, _busybox().read_bytes()))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, STAGE1.read_bytes()))
    names = []
    for i, path in enumerate(boot_modules(kernel)):
        name = f"{i:02d}-{path.name.removesuffix('.xz')}"
        names.append(name)
        entries.append(_Entry(f"modules/{name}", stat.S_IFREG | 0o644, _module_data(path)))
    order = "".join(f"{n}\n" for n in names).encode()
    entries.append(_Entry("modules/order", stat.S_IFREG | 0o644, order))
    return entries


def _cpio(entries: list[_Entry]) -> bytes:
    buf = io.BytesIO()

    def pad() -> None:
        buf.write(b"\0" * (-buf.tell() % 4))

    def member(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        buf.write(b"070701" + "".join(f"{f:08x}" for f in fields).encode())
        buf.write(encoded)
        pad()
        buf.write(data)
        pad()

    for ino, e in enumerate(entries, start=1):
        member(ino, e.name, e.mode, e.data, e.rdev)
    member(0, "TRAILER!!!", 0, b"", (0, 0))
    return buf.getvalue()


def build(kernel: Kernel) -> Path:
    """Return the initramfs for ``kernel``, building it unless an identical one is cached."""
    entries = _entries(kernel)
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.name}\0{e.mode}\0{e.rdev}\0{len(e.data)}\0".encode())
        digest.update(e.data)
    out_dir = cache_root() / "initramfs"
    target = out_dir / f"{kernel.release}-{digest.hexdigest()[:12]}.cpio.gz"
    with file_lock(cache_root() / "locks" / f"initramfs-{kernel.release}.lock"):
        if target.is_file():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob(f"{kernel.release}-*.cpio.gz"):
            old.unlink()  # stale builds from older stage-1 scripts
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(_cpio(entries), compresslevel=6, mtime=0))
        tmp.replace(target)
    log(f"built initramfs {target.name} ({target.stat().st_size // 1024} KiB)")
    return target
