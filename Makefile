# pyunion — `make demo` shows it working, `make test` runs every test.
# Every target installs what it needs first (`make setup`), so each works on a fresh machine.

VENV      := .venv
PY        := $(VENV)/bin/python
# Debian's Python, not one under /root: ordinary users must be able to run mount.pyunion and
# pyunion from the venv (rootless use); fall back to whatever python3 is first on PATH.
BASE_PYTHON := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
STAMP     := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Debian packages: FUSE itself and what pyfuse3 builds against; the reference
# implementations the differential tests and the benchmark compare against.
BUILD_PACKAGES := fuse3 libfuse3-dev pkg-config python3-venv python3-dev
TEST_PACKAGES  := fuse-overlayfs attr umoci skopeo busybox-static zstd runc docker-registry apache2-utils
# The stress suite (tests/stress): fio's verify workloads, strace (kills at chosen syscalls),
# stress-ng (long mode only).
STRESS_PACKAGES := fio strace stress-ng
BENCH_PACKAGES := fuse-overlayfs unionfs-fuse podman runc docker-registry skopeo umoci busybox-static

.PHONY: setup test stress demo bench bench-quick install lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(BUILD_PACKAGES) $(TEST_PACKAGES)"
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Installs the named Debian packages that are missing (as root only), nothing else.
system-packages:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run make as root)" >&2; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(STRESS_PACKAGES)"
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The stress suite at length (under 15 minutes on 2 CPUs); `make test` runs its short version.
# Ends with a table of what each test ran and found (pytest's terminal summary).
stress: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(STRESS_PACKAGES)"
	PYUNION_STRESS=long $(VENV)/bin/pytest tests/stress -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check unionfs mount_helper tests bench

demo: setup
	$(PY) -m unionfs.demo
	$(PY) -m unionfs.image.demo

bench: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(BENCH_PACKAGES)"
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench $(BENCH_ARGS)

bench-quick:
	@$(MAKE) --no-print-directory bench BENCH_ARGS=--quick

# Puts the mount helper where mount(8) looks for it: `mount -t pyunion` and `mount -t fuse.pyunion`.
install: setup
	install -m 0755 $(VENV)/bin/mount.pyunion /sbin/mount.pyunion
	ln -sf /sbin/mount.pyunion /sbin/mount.fuse.pyunion

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
