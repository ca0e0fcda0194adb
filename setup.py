"""Builds the CO-RE BPF object and the ring buffer sink with clang when a wheel is built (python -m build,
pip install ., pip install -e .), so both ship as package data. The Makefiles under src/bpfnfs/bpf and
src/bpfnfs/ringbuf are the one recipe; the sdist carries only their sources (MANIFEST.in).

The wheel holds a host shared library (_sink.so, loaded with ctypes, no CPython ABI) and an object built for
this architecture, so it is tagged py3-none-<platform>, not py3-none-any."""

import os
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # no wheel support at all: an sdist can still be built
        bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
# (folder under src/bpfnfs, artefact the Makefile there builds)
ARTEFACTS = (("bpf", "bpfnfs.bpf.o"), ("ringbuf", "_sink.so"))
NEEDS = "clang, make and libbpf-dev (Debian: apt-get install clang llvm libbpf-dev make)"


class BuildWithBpf(build_py):
    def run(self) -> None:
        if not os.environ.get("BPF_SKIP_BUILD"):
            self._build_artefacts()
        # package_data globs are resolved lazily; drop any list taken before the artefacts existed
        self.__dict__.pop("data_files", None)
        super().run()

    def _build_artefacts(self) -> None:
        parts = [(os.path.join(HERE, "src", "bpfnfs", d), f) for d, f in ARTEFACTS]
        missing = [os.path.join(d, f) for d, f in parts if not os.path.exists(os.path.join(d, f))]
        tools = [t for t in ("make", "clang") if shutil.which(t) is None]
        if tools:
            if missing:
                raise SystemExit(
                    f"bpfnfs: cannot build {', '.join(os.path.relpath(m, HERE) for m in missing)}: "
                    f"{' and '.join(tools)} not found. Building bpfnfs needs {NEEDS}."
                )
            print(f"bpfnfs: {' and '.join(tools)} not found; using the BPF object and sink already built")
            return
        for d, _ in parts:  # make is incremental: a no-op when the artefact is up to date
            try:
                subprocess.run(["make", "-C", d], check=True)
            except subprocess.CalledProcessError as e:
                raise SystemExit(
                    f"bpfnfs: `make -C {os.path.relpath(d, HERE)}` failed ({e.returncode}); "
                    f"building bpfnfs needs {NEEDS}."
                ) from e


cmdclass = {"build_py": BuildWithBpf}

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        def get_tag(self) -> tuple[str, str, str]:
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = PlatformWheel


class PlatformDistribution(Distribution):
    """Not pure: the wheel's root is platlib and its tag names the platform (no extension module, though)."""

    def has_ext_modules(self) -> bool:
        return True


setup(distclass=PlatformDistribution, cmdclass=cmdclass)
