# pyunion — `make demo` shows it working, `make test` runs every test.
# Every target installs what it needs first (`make setup`), so each works on a fresh machine.

VENV      := .venv
PY        := $(VENV)/bin/python
# Debian's Python, not one under /root: ordinary users must be able to run mount.pyunion and
# pyunion from the venv (rootless use); fall back to whatever python3 is first on PATH.
BASE_PYTHON := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
# pyfuse3 is built from its pinned sdist with our extension applied (patches/README.md).
PYFUSE3_VERSION := 3.5.0
PYFUSE3_SHA256  := 88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PYFUSE3_PATCHES := patches/pyfuse3-cache-readdir-symlinks.patch patches/pyfuse3-no-open.patch \
                   patches/pyfuse3-dont-mask.patch patches/pyfuse3-passthrough.patch \
                   patches/pyfuse3-inline-requests.patch patches/pyfuse3-lazy-version.patch
PYFUSE3_BUILD   := build/pyfuse3
# libfuse 3.17 (FUSE passthrough), from Debian's next release's source package, built into a
# private prefix that pyfuse3 links to with an rpath (patches/build-libfuse.sh). Where it cannot
# be had, pyfuse3 is built against the system's libfuse, without passthrough.
LIBFUSE_VERSION := 3.17.2
LIBFUSE_SHA256  := 3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
LIBFUSE_BUILD   := build/libfuse
LIBFUSE_PREFIX  := $(CURDIR)/$(LIBFUSE_BUILD)/prefix
# setuptools' default editable install puts an import hook in front of every interpreter start
# (importlib.metadata and all: 12-15 ms of each `pyunion` command and mount daemon); the compat
# mode is a plain path entry. setuptools calls that mode transitional: where it is gone, the
# install falls back to the default.
EDITABLE  := --config-settings editable_mode=compat
STAMP     := $(VENV)/.installed-$(shell cat pyproject.toml $(PYFUSE3_PATCHES) patches/build-libfuse.sh | cksum | cut -d' ' -f1)
PLAIN_VENV := .venv-plain
# Debian packages: FUSE itself and what pyfuse3 builds against; the reference
# implementations the differential tests and the benchmark compare against.
BUILD_PACKAGES := fuse3 libfuse3-dev pkg-config python3-venv python3-dev patch gcc meson ninja-build
TEST_PACKAGES  := fuse-overlayfs attr umoci skopeo busybox-static zstd runc docker-registry apache2-utils uidmap catatonit podman containerd rootlesskit \
                  netavark aardvark-dns iproute2 iptables slirp4netns
# The Debian builds of tests/build (apt-get install, gcc multi-stage): debootstrap makes the image.
BUILD_TEST_PACKAGES := debootstrap
# The stress suite (tests/stress): fio's verify workloads, strace (kills at chosen syscalls),
# stress-ng (long mode only).
STRESS_PACKAGES := fio strace stress-ng
BENCH_PACKAGES := fuse-overlayfs unionfs-fuse podman runc docker-registry skopeo umoci busybox-static uidmap debootstrap containerd

.PHONY: setup pyfuse3-extended system-packages protos test test-plain-pyfuse3 test-no-passthrough stress demo \
        bench bench-quick install lint clean test-build-debian

setup: $(STAMP)

$(STAMP): pyproject.toml $(PYFUSE3_PATCHES) patches/build-libfuse.sh
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(BUILD_PACKAGES) $(TEST_PACKAGES)"
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory pyfuse3-extended
	$(PY) -m pip install --quiet -e '.[test]' $(EDITABLE) 2>/dev/null || $(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c 'import pyfuse3; assert hasattr(pyfuse3.FileInfo(), "cache_readdir") and hasattr(pyfuse3.Operations, "enable_no_open") and hasattr(pyfuse3.Operations, "enable_dont_mask") and hasattr(pyfuse3, "passthrough_open") and hasattr(pyfuse3, "PLAIN_METHODS"), pyfuse3.__file__'
	rm -f $(VENV)/.installed-*
	touch $@

# pyfuse3's sdist (checked against its sha256) with the patches applied, built into the venv,
# against libfuse 3.17 where it could be built. The sdist ships the C file Cython generated from
# the unpatched .pyx: it is removed, so the build must regenerate it (Cython is a build
# requirement here, not a dependency of pyunion).
pyfuse3-extended:
	@if patches/build-libfuse.sh $(LIBFUSE_VERSION) $(LIBFUSE_SHA256) $(LIBFUSE_BUILD) $(LIBFUSE_PREFIX); then \
	  echo "libfuse $(LIBFUSE_VERSION) in $(LIBFUSE_PREFIX): pyfuse3 is built with passthrough"; \
	else \
	  echo "falling back to the system's libfuse $$(pkg-config --modversion fuse3): no FUSE passthrough"; \
	  rm -rf $(LIBFUSE_PREFIX); \
	fi
	rm -rf $(PYFUSE3_BUILD) && mkdir -p $(PYFUSE3_BUILD)
	$(PY) -m pip download --quiet --no-deps --no-binary pyfuse3 -d build \
	  'pyfuse3==$(PYFUSE3_VERSION)'
	echo '$(PYFUSE3_SHA256)  build/pyfuse3-$(PYFUSE3_VERSION).tar.gz' | sha256sum -c --quiet
	tar -xzf build/pyfuse3-$(PYFUSE3_VERSION).tar.gz -C $(PYFUSE3_BUILD) --strip-components=1
	for p in $(PYFUSE3_PATCHES); do patch -d $(PYFUSE3_BUILD) -p1 --quiet < $$p || exit 1; done
	rm $(PYFUSE3_BUILD)/src/pyfuse3/__init__.c
	$(PY) -m pip install --quiet 'Cython>=3.1' 'setuptools>=78.1.1' 'setuptools_scm>=8' wheel
	if [ -e $(LIBFUSE_PREFIX)/.complete ]; then \
	  export PKG_CONFIG_PATH=$(LIBFUSE_PREFIX)/lib/pkgconfig \
	         LDFLAGS="-L$(LIBFUSE_PREFIX)/lib -Wl,-rpath,$(LIBFUSE_PREFIX)/lib"; \
	fi; \
	SETUPTOOLS_SCM_PRETEND_VERSION='$(PYFUSE3_VERSION)+pyunion.6' \
	  $(PY) -m pip install --quiet --no-build-isolation --force-reinstall --no-deps ./$(PYFUSE3_BUILD)

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

# The differential tests on the plain pyfuse3 from PyPI (no readdir or symlink caching): what
# `pip install pyunion` gives. Its own venv, so the extended pyfuse3 in .venv stays as it is.
test-plain-pyfuse3: setup
	test -x $(PLAIN_VENV)/bin/python || $(BASE_PYTHON) -m venv $(PLAIN_VENV)
	$(PLAIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PLAIN_VENV)/bin/python -m pip install --quiet 'pyfuse3==$(PYFUSE3_VERSION)' -e '.[test]'
	$(PLAIN_VENV)/bin/python -c 'import pyfuse3, sys; sys.exit(hasattr(pyfuse3.FileInfo(), "cache_readdir"))'
	$(PLAIN_VENV)/bin/pytest tests/test_read_differential.py tests/test_write_differential.py tests/test_no_open.py $(PYTEST_ARGS)

# The differential tests with FUSE passthrough off (as root, `make test` runs them with it on):
# what pyunion guarantees where passthrough is refused or turned off.
DIFFERENTIAL_TESTS := tests/test_read_differential.py tests/test_write_differential.py \
                      tests/test_posix_details.py tests/test_permissions.py tests/test_deep_paths.py \
                      tests/test_write_failures.py tests/test_cache_coherence.py tests/test_metacopy.py
test-no-passthrough: setup
	PYUNION_PASSTHROUGH=off $(VENV)/bin/pytest $(DIFFERENTIAL_TESTS) -p no:cacheprovider $(PYTEST_ARGS)

# The stress suite at length (under 15 minutes on 2 CPUs); `make test` runs its short version.
# Ends with a table of what each test ran and found (pytest's terminal summary).
stress: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(STRESS_PACKAGES)"
	PYUNION_STRESS=long $(VENV)/bin/pytest tests/stress -p no:cacheprovider $(PYTEST_ARGS)

# The snapshotter's gRPC modules from its .proto files (checked in; run after editing those).
protos: setup
	$(PY) -m pip install --quiet 'grpcio-tools==1.85.4'
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	  unionfs/image/snapshotter/api/mount.proto unionfs/image/snapshotter/api/snapshots.proto
	rm -f unionfs/image/snapshotter/api/mount_pb2_grpc.py

# tests/build's Debian builds (a few minutes: they download packages from deb.debian.org),
# with the bookworm minbase image the bench caches (made once by debootstrap).
test-build-debian: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(BUILD_TEST_PACKAGES)"
	PYUNION_BUILD_DEBIAN=1 $(VENV)/bin/pytest tests/build/test_build_debian.py -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check unionfs mount_helper tests bench

demo: setup
	$(PY) -m unionfs.demo
	$(PY) -m unionfs.image.demo

bench: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(BENCH_PACKAGES)"
	$(PY) -m pip install --quiet -e '.[test,bench]' $(EDITABLE) 2>/dev/null || $(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench $(BENCH_ARGS)

bench-quick:
	@$(MAKE) --no-print-directory bench BENCH_ARGS=--quick

# Puts the mount helper where mount(8) looks for it: `mount -t pyunion` and `mount -t fuse.pyunion`;
# pyunion-overlayfs where containerd (mount.fuse3, for the snapshotter's fuse3.pyunion-overlayfs
# mounts) and containers/storage's mount_program find it.
install: setup
	install -m 0755 $(VENV)/bin/mount.pyunion /sbin/mount.pyunion
	ln -sf /sbin/mount.pyunion /sbin/mount.fuse.pyunion
	install -m 0755 $(VENV)/bin/pyunion-overlayfs /usr/local/bin/pyunion-overlayfs

clean:
	rm -rf $(VENV) $(PLAIN_VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
