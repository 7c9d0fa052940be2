"""``pyunion info`` says where the store is and which mode is in use."""

from __future__ import annotations

import json

from tests.image.conftest import run_pyunion


def test_info_as_root(store):
    info = json.loads(run_pyunion(store, "info", "--format", "json").stdout)
    assert info["store"] == str(store)
    assert info["mode"] == "root"
    assert "kernel overlay form" in info["whiteouts"]
    assert info["images"] == 0 and info["containers"] == 0
    assert info["runtimes"]["runc"].endswith("runc")
