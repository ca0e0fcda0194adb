# Stable entry points (other tooling calls these names):
#   make setup   install apt + pip dependencies, build the BPF object, install bpfnfs into .venv
#                and, as root, link it as /usr/local/bin/bpfnfs (sudo bpfnfs from any directory)
#   make demo    boot the bookworm lab VM with real NFS and a workload, show bpfnfs's live table
#   make test    unit tests + lab tests on bullseye (5.10), bookworm (6.1), trixie (6.12),
#                trixie-backports (Debian's newest, 7.x, preemptible) and trixie-preempt (6.12, preempt=full)
#   make lab SUITES="bookworm"   lab tests only
#   make bench   overhead, agent cost, scale and transport in the lab VM (BENCH_SUITES, default bookworm);
#                prints the table, writes build/bench/results.json and docs/benchmarks.md
#   make bench-smoke   the bench end to end at small sizes (one VM, about 19 min)
#   make churn   1,000 pods come and go under a running agent (one bullseye VM): maps, memory, series flat
#   make image   the DaemonSet's image from deploy/Dockerfile (docker, else buildah); its root in build/image-rootfs
#   make image-check   that image run as the DaemonSet runs it, in the trixie lab VM
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
BINDIR ?= /usr/local/bin
SUITES ?= bullseye bookworm trixie trixie-backports trixie-preempt
BENCH_SUITES ?= bookworm
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool python3 python3-venv python3-pip \
	qemu-system-x86 busybox-static kmod cpio nfs-kernel-server nfs-common rpcbind fio \
	iproute2 procps ca-certificates make \
	prometheus tmux runc
# BCC's nfsslower and nfsdist: the incumbents the bench compares against (make bench, make bench-smoke).
BENCH_PACKAGES := bpfcc-tools python3-bpfcc

.PHONY: setup deps bpf venv link demo test unit lab lint bench bench-smoke churn image image-check clean

setup: deps bpf venv
	@$(MAKE) --no-print-directory link

# Idempotent: apt runs only when a package is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES) $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get -o DPkg::Lock::Timeout=600 update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $$missing; \
	fi

bpf:
	$(MAKE) -C src/bpfnfs/bpf
	$(MAKE) -C src/bpfnfs/ringbuf

$(PY):
	$(PYTHON) -m venv $(VENV)

# The install reruns only when the project's metadata changes (the stamp lives in the venv).
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# bpfnfs on root's PATH from any directory: a symlink to the venv's script (whose shebang is the venv's python).
# Idempotent; a non-root run only says what to do; a file there that is not a symlink is left alone.
link:
	@target="$(abspath $(VENV))/bin/bpfnfs"; link="$(BINDIR)/bpfnfs"; \
	if [ "$$(readlink "$$link")" = "$$target" ]; then :; \
	elif [ ! -x "$$target" ]; then echo "bpfnfs: $$target is missing: run make setup" >&2; exit 1; \
	elif [ "$$(id -u)" != 0 ] || [ ! -d "$(BINDIR)" ]; then \
		echo "bpfnfs: installed as $$target; to run it as sudo bpfnfs: sudo ln -sfn $$target $$link"; \
	elif [ -e "$$link" ] && [ ! -L "$$link" ]; then \
		echo "bpfnfs: $$link exists and is not a symlink, left alone; run $$target"; \
	else ln -sfn "$$target" "$$link" && echo "bpfnfs: linked $$link -> $$target"; fi

demo: setup
	$(PY) -m lab.demo

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check src lab bench tests

test: setup
	$(VENV)/bin/ruff check src lab bench tests
	LAB_SUITES="$(SUITES)" $(PY) -m pytest -v -rs tests

lab: setup
	LAB_SUITES="$(SUITES)" $(PY) -m pytest -v -rs -m lab tests/lab

bench: setup
	$(PY) -m bench --suites "$(BENCH_SUITES)"

# The bench end to end at small sizes in one bookworm VM (about 19 min under TCG): a long run,
# kept out of make test's 60-minute budget; its figures are checked for sanity, not judged.
bench-smoke: setup
	LAB_BENCH_SMOKE=1 LAB_SUITES="" $(PY) -m pytest -v -rs -m lab tests/lab -k bench_smoke

# 1,000 pods come and go under a running agent, in one bullseye VM (5.10: no lookup-and-delete
# for hash maps): a long run; make test runs 100 of them.
churn: setup
	LAB_CHURN=1 LAB_SUITES="" $(PY) -m pytest -v -rs -m lab tests/lab -k churn_long

# deploy/image.sh: docker when a daemon answers, else buildah (installed here when neither is).
# IMAGE_FLAGS=--local-base where package registries are reachable but no container registry is.
image:
	@docker info >/dev/null 2>&1 || command -v buildah >/dev/null || { \
		apt-get -o DPkg::Lock::Timeout=600 update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
			buildah debootstrap uidmap; }
	deploy/image.sh $(IMAGE_FLAGS) --rootfs build/image-rootfs

# The built image's bpfnfs as the DaemonSet runs it (lab.check_pods --image-rootfs, trixie VM).
image-check: setup image
	LAB_IMAGE=1 LAB_SUITES="" $(PY) -m pytest -v -rs -m lab tests/lab -k image_daemonset

clean:
	$(MAKE) -C src/bpfnfs/bpf clean
	$(MAKE) -C src/bpfnfs/ringbuf clean
	rm -rf build $(VENV)
