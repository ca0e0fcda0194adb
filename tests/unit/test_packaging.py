"""Packaging: a wheel built from sources alone carries the BPF object, the ring buffer sink and the entry
point, and is tagged for its platform; `make link` (run by `make setup`) puts bpfnfs on root's PATH."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
ARTEFACTS = ("*.bpf.o", "*.bpf.o.tmp", "_sink.so", "_sink.so.tmp", "__pycache__", "*.egg-info")


def _copy_sources(dst: Path) -> None:
    """The project's sources without built artefacts, as a fresh clone or an sdist has them."""
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns(*ARTEFACTS))


def _build_wheel(src: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _need_build_tools() -> None:
    missing = [t for t in ("clang", "make") if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: building the wheel compiles the BPF object (make setup)"
        )
    for mod in ("build", "setuptools", "wheel"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"python module {mod} missing: pip install -e '.[dev]'")


def test_wheel_from_sources_carries_bpf_object_sink_and_entry_point(tmp_path: Path) -> None:
    _need_build_tools()
    src, out = tmp_path / "src-tree", tmp_path / "dist"
    src.mkdir()
    _copy_sources(src)
    r = _build_wheel(src, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "bpfnfs/bpf/bpfnfs.bpf.o" in names
        assert "bpfnfs/ringbuf/_sink.so" in names
        assert z.read("bpfnfs/bpf/bpfnfs.bpf.o")[:4] == b"\x7fELF"
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "bpfnfs = bpfnfs.cli.main:main" in z.read(entry_points).decode()
        (wheel_meta,) = (n for n in names if n.endswith(".dist-info/WHEEL"))
        meta = z.read(wheel_meta).decode()
    # Not py3-none-any: the wheel holds a host shared library and an object built for this architecture.
    python_tag, abi_tag, platform_tag = wheel.name[: -len(".whl")].split("-")[-3:]
    assert (python_tag, abi_tag) == ("py3", "none")
    assert platform_tag != "any" and platform_tag.startswith("linux_")
    assert f"Tag: py3-none-{platform_tag}" in meta
    assert "Root-Is-Purelib: false" in meta


def test_wheel_without_clang_fails_with_the_reason(tmp_path: Path) -> None:
    _need_build_tools()
    src, out, bindir = tmp_path / "src-tree", tmp_path / "dist", tmp_path / "bin"
    src.mkdir()
    bindir.mkdir()
    _copy_sources(src)
    (bindir / "make").symlink_to(shutil.which("make"))  # make but no clang on PATH
    r = _build_wheel(src, out, env={**os.environ, "PATH": str(bindir)})
    assert r.returncode != 0
    assert "clang not found" in r.stdout + r.stderr
    assert not list(out.glob("*.whl"))


def _make_link(tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    if shutil.which("make") is None:
        pytest.skip("make missing")
    venv, bindir = tmp_path / "venv", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bindir.mkdir()
    script = venv / "bin" / "bpfnfs"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    r = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "link", f"VENV={venv}", f"BINDIR={bindir}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r, script, bindir / "bpfnfs"


def test_make_link_puts_bpfnfs_on_roots_path(tmp_path: Path) -> None:
    r, script, link = _make_link(tmp_path)
    assert r.returncode == 0, r.stderr
    if os.geteuid() == 0:
        assert link.is_symlink() and os.readlink(link) == str(script)
        assert f"linked {link}" in r.stdout
        again = subprocess.run(  # idempotent and quiet the second time
            ["make", "-s", "-C", str(ROOT), "link", f"VENV={script.parent.parent}", f"BINDIR={link.parent}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 0 and again.stdout == ""
        assert os.readlink(link) == str(script)
    else:
        assert not link.exists()
        assert f"sudo ln -sfn {script} {link}" in r.stdout


def test_make_setup_runs_link_after_the_install() -> None:
    if shutil.which("make") is None:
        pytest.skip("make missing")
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "setup"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # dry run: the link recipe is printed after the BPF build (and the venv install, when it is due)
    assert "ln -sfn" in r.stdout
    assert r.stdout.index("make -C src/bpfnfs/ringbuf") < r.stdout.index("ln -sfn")
