#!/bin/sh
# Guest side of `make demo`: a mixed NFS workload in the background, bpfnfs's
# live table in front. Runs from the repository root inside the lab VM.
PY=${BPFNFS_PY:-.venv/bin/python}
(
	i=0
	while [ "$i" -lt 200 ]; do
		for m in /mnt/nfs3 /mnt/nfs4; do
			dd if=/dev/zero of="$m/demo-$i" bs=1M count=4 conv=fsync status=none
		done
		echo 3 >/proc/sys/vm/drop_caches
		cat /mnt/nfs3/demo-$i /mnt/nfs4/demo-$i >/dev/null
		ls -l /mnt/nfs3 /mnt/nfs4 >/dev/null
		rm -f /mnt/nfs3/demo-$i /mnt/nfs4/demo-$i
		i=$((i + 1))
	done
) &
exec "$PY" -m bpfnfs --interval "${DEMO_INTERVAL:-2}" --count "${DEMO_COUNT:-15}"
