"""128 lowers with long paths: the default fsname must fit in the kernel's page of options."""

from __future__ import annotations

import subprocess
import sys

from tests import mounts


def _layers(tmp_path, count: int) -> list:
    layers = []
    for i in range(count):
        layer = tmp_path / ("layer-with-a-long-name-like-a-store-path-" + "x" * 40 + f"-{i:03d}")
        layer.mkdir()
        (layer / f"f{i}").write_text(str(i))
        layers.append(layer)
    return layers


def test_128_long_lowers_mount_with_the_default_fsname(tmp_path, pyunion):
    layers = _layers(tmp_path, 128)
    assert len(":".join(str(p) for p in layers)) > 4096
    mnt = pyunion(layers, None)
    assert sorted(p.name for p in mnt.iterdir()) == sorted(f"f{i}" for i in range(128))
    assert (mnt / "f127").read_text() == "127"
    with open("/proc/self/mountinfo") as f:
        source = next(line.split(" - ")[1].split()[1] for line in f
                      if line.split()[4] == str(mnt))
    assert source.startswith(str(layers[0])) and "127" in source


def test_too_long_fsname_is_named_in_the_error(tmp_path):
    layer, mnt = tmp_path / "l", tmp_path / "m"
    layer.mkdir()
    mnt.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mount_helper", str(layer), str(mnt), "-f",
         "-o", "fsname=" + "n" * 5000], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "fsname" in result.stderr and "one page" in result.stderr
    assert not mounts.is_mounted(mnt)
