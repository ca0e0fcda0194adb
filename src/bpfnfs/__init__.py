"""bpfnfs: eBPF agent for Linux NFS clients."""

__version__ = "0.1.0"
