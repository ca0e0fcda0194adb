"""Builds the CO-RE BPF object with clang when a wheel or sdist is built, so
the .bpf.o ships as package data (src/bpfnfs/bpf/Makefile is the one recipe)."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self) -> None:
        if not os.environ.get("BPF_SKIP_BUILD"):
            for part in ("bpf", "ringbuf"):
                subprocess.run(["make", "-C", os.path.join("src", "bpfnfs", part)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
