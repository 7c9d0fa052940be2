"""Lower hard links stay one file after a copy-up, as kernel overlayfs shows them with index=on;
index=off is accepted (for overlayfs option strings) and changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import treesnap


def _lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "h1").write_bytes(b"shared\n")
    os.link(lower / "h1", lower / "d/h2")
    return lower


def _change(mnt: Path) -> None:
    with open(mnt / "h1", "ab") as f:
        f.write(b"more\n")


@pytest.mark.parametrize("options", [(), ("index=off",)])
def test_copy_up_keeps_one_file(tmp_path, upper_and_work, pyunion, overlay, options):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    kupper, kwork = upper_and_work("k")
    mine = pyunion([lower], upper, options=options)
    ref = overlay([lower], kupper, kwork)
    _change(mine)
    _change(ref)
    treesnap.assert_same_tree(treesnap.snapshot(mine), treesnap.snapshot(ref), "index=on")
    assert (mine / "d/h2").read_bytes() == b"shared\nmore\n"
    assert os.stat(upper / "h1").st_ino == os.stat(upper / "d/h2").st_ino
