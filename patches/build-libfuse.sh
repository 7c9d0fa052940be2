#!/usr/bin/env bash
# Builds libfuse 3.17 (FUSE passthrough: fuse_passthrough_open, FUSE_CAP_PASSTHROUGH, backing_id)
# into a private prefix, from Debian's next release's source package, checked against its
# sha256. The system's apt configuration is not touched: apt-get reads a private sources list
# and keeps its package lists under the build directory.
#
#   patches/build-libfuse.sh VERSION SHA256 BUILD_DIR PREFIX
#
# Exits 0 with the library in PREFIX/lib, or non-zero with one line on stderr saying why
# (the Makefile then builds pyfuse3 against the system's libfuse, without passthrough).
set -euo pipefail
version=$1 sha256=$2
mkdir -p "$3" && build=$(cd "$3" && pwd)
prefix=$(realpath -m "$4")
tarball="fuse3_${version}.orig.tar.gz"

if [ -e "$prefix/lib/libfuse3.so" ] && [ -e "$prefix/.complete" ]; then
  exit 0
fi
mkdir -p "$build/apt/lists/partial" "$build/src"
for tool in meson ninja; do
  command -v $tool >/dev/null || { echo "libfuse $version: $tool is missing" >&2; exit 1; }
done

if ! echo "$sha256  $build/src/$tarball" | sha256sum -c --quiet >/dev/null 2>&1; then
  echo "deb-src http://deb.debian.org/debian trixie main" > "$build/apt/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$build/apt/sources.list" -o "Dir::Etc::sourceparts=-"
            -o "Dir::State::Lists=$build/apt/lists" -o "APT::Sandbox::User=root" -qq)
  if ! apt-get "${apt_opts[@]}" update >"$build/apt/log" 2>&1 ||
     ! (cd "$build/src" && apt-get "${apt_opts[@]}" source --download-only fuse3 \
          >>"$build/apt/log" 2>&1); then
    echo "libfuse $version: its Debian source package could not be fetched (see $build/apt/log)" >&2
    exit 1
  fi
  if ! echo "$sha256  $build/src/$tarball" | sha256sum -c --quiet; then
    echo "libfuse $version: $tarball does not match its pinned sha256" >&2
    exit 1
  fi
fi

rm -rf "$build/fuse-$version" "$prefix"
tar -xzf "$build/src/$tarball" -C "$build"
cd "$build/fuse-$version"
# The library only: no fusermount3 (the system's setuid one serves ordinary users), no
# examples, no tests, nothing installed outside the prefix.
if ! { meson setup _build --prefix="$prefix" --libdir=lib -Dutils=false -Dexamples=false \
         -Dtests=false -Dudevrulesdir="$prefix/udev" -Dinitscriptdir= &&
       ninja -C _build install; } >"$build/build.log" 2>&1; then
  echo "libfuse $version: the build failed (see $build/build.log)" >&2
  exit 1
fi
touch "$prefix/.complete"
