"""The incumbent tools: BCC's nfsslower and nfsdist (Debian bookworm ``bpfcc-tools``), run in the guest.

BCC compiles its C programs at start-up against the running kernel's headers. The lab kernels have
no CONFIG_IKHEADERS and the guest's /lib/modules/<release> is the read-only module share, so the
host fetches the headers before booting and hands their path to the guest command::

    host:   argv += host_args(suite)             # ["--bcc-headers", "<cache>/headers/.../...-common"]
    guest:  env = {**os.environ, **bcc_env(args.bcc_headers)}
            Popen(TOOLS[name], stdout=file, env=env)  # attached once ready_marker(name) is in the file

Stop them with SIGINT, as a user's Ctrl-C: nfsslower exits at once, nfsdist prints its last
histogram first. Both exit 0.
"""

from __future__ import annotations

from pathlib import Path

HEADERS_OPTION = "--bcc-headers"

# nfsslower: what its man page leads with, the default 10 ms threshold, one line per slow op.
# nfsdist: 1 s summaries (its "nfsdist 1" example), like bpfnfs's default 1 s report interval;
# without an interval it would read its map only once, at Ctrl-C, and cost less than a user pays.
TOOLS: dict[str, list[str]] = {
    "bcc-nfsslower": ["/usr/sbin/nfsslower-bpfcc"],
    "bcc-nfsdist": ["/usr/sbin/nfsdist-bpfcc", "1"],
}
TITLES: dict[str, str] = {
    "bcc-nfsslower": "BCC nfsslower (ops slower than 10 ms)",
    "bcc-nfsdist": "BCC nfsdist (latency histograms every 1 s)",
}
# The banner each prints right after its last attach (to stdout): the end of start-up.
_READY: dict[str, str] = {
    "bcc-nfsslower": "Tracing NFS operations",  # "... that are slower than 10 ms... Ctrl-C to quit"
    "bcc-nfsdist": "Tracing NFS operation latency",  # "... Hit Ctrl-C to end."
}


def ready_marker(name: str) -> str:
    """A substring of the line ``name`` prints on stdout once all its probes are attached."""
    return _READY[name]


def host_args(suite: str) -> list[str]:
    """On the host, before booting: fetch ``suite``'s kernel headers; the guest command's arguments."""
    from lab import kernels  # host side only

    return [HEADERS_OPTION, str(kernels.fetch_headers(suite))]


def bcc_env(headers: Path) -> dict[str, str]:
    """Environment additions for a BCC tool in the guest, given the path from ``host_args``."""
    # BCC falls back to /lib/modules/$(uname -r)/build, absent in the guest, and then fails late
    # with a compile error; a wrong path should fail here instead.
    if not (headers / "include" / "linux" / "kconfig.h").is_file():
        raise FileNotFoundError(f"{headers} is not a kernel headers tree (no include/linux/kconfig.h)")
    return {
        # BCC 0.26 honours this ahead of /lib/modules (src/cc/frontends/clang/loader.cc).
        "BCC_KERNEL_SOURCE": str(headers),
        # Python block-buffers a redirected stdout: the banner would reach the file only at exit.
        "PYTHONUNBUFFERED": "1",
    }


def missing() -> list[str]:
    """The tools' executables that are not installed (apt: bpfcc-tools python3-bpfcc)."""
    return [argv[0] for argv in TOOLS.values() if not Path(argv[0]).is_file()]
