"""NFS lab: boot Debian kernels under QEMU (TCG) with the host root shared read-only.

Public API:
    lab.kernels.fetch(suite) -> Kernel
    lab.initramfs.build(kernel) -> Path
    lab.vm.run(suite, command, out_dir, ...) -> VMResult
"""

from lab.common import LabError

__all__ = ["LabError"]
