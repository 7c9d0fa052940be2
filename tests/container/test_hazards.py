"""Hazards a newcomer meets: a non-empty mountpoint (refused by ``mount-image`` and
``mount.pyunion`` unless ``-o nonempty``), a repository name in capitals, and ``rmi`` of one of
an image's two names (lock files left behind: test_pull_on_demand_and_exit_codes.py)."""

from __future__ import annotations

import os

import pytest

from tests import mounts
from tests.cli_helpers import kill_leftovers, pids_with_arg, run_helper, wait_gone
from tests.container.conftest import IMAGE

pytestmark = pytest.mark.timeout(120)


def test_mount_image_refuses_a_non_empty_directory(px, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("mine\n")
    refused = px("mount-image", IMAGE, target, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
    assert "not empty" in refused.stderr and "nonempty" in refused.stderr
    assert not mounts.is_mounted(target)
    assert px("mount-image", "-o", "bogus", IMAGE, target, check=False).returncode == 1
    px("mount-image", "-o", "nonempty", IMAGE, target)
    try:
        assert (target / "bin" / "busybox").exists() and not (target / "precious").exists()
    finally:
        px("umount-image", target)
    assert (target / "precious").read_text() == "mine\n"


def test_mount_helper_refuses_a_non_empty_mountpoint(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    (lower / "from-lower").write_text("l\n")
    (upper / "in-upper").write_text("u\n")
    # the mountpoint forgotten: LOWER UPPER is the read-only form over a non-empty UPPER
    forgotten = run_helper([str(lower), str(upper)])
    assert forgotten.returncode != 0 and "not empty" in forgotten.stderr, forgotten
    assert not mounts.is_mounted(upper)
    pids: set[int] = set()
    try:
        result = run_helper([str(lower), str(upper), "-o", "nonempty"])
        assert result.returncode == 0, result.stderr
        pids = pids_with_arg(upper)
        assert sorted(os.listdir(upper)) == ["from-lower"]
    finally:
        if mounts.is_mounted(upper):
            mounts.unmount(upper)
        kill_leftovers(wait_gone(pids | pids_with_arg(upper), 10))
    assert sorted(os.listdir(upper)) == ["in-upper"]


def test_names_in_capitals_are_refused(px):
    for command in (["tag", IMAGE, "UPPER/x:1"], ["tag", IMAGE, "Busybox:1"]):
        result = px(*command, check=False)
        assert result.returncode == 1 and "must be lowercase" in result.stderr, result
    px("tag", IMAGE, "registry.Example.com:5000/x:1")  # a host may have capitals
    assert "UPPER" not in px("images").stdout


def test_rmi_of_one_of_two_names(px):
    px("tag", IMAGE, "second:1")
    px("rmi", "second:1")
    assert "<none>" not in px("images").stdout
    assert px("images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "busybox:test\n"

