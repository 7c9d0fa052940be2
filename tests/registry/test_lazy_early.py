"""``unionfs.image.early``'s reading of ELF programs (the loader and libraries a lazy pull
fetches with the TOCs), checked against binutils' ``readelf`` on the host's own programs.
The fetch itself is tested through a registry in ``test_lazy_pull.py``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unionfs.image.early import elf_needs

BUSYBOX = "/bin/busybox"


def readelf(path: str) -> tuple[str, list[str], list[str]]:
    out = subprocess.run(["readelf", "-W", "-l", "-d", path], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    interpreter = re.search(r"\[Requesting program interpreter: (.*)\]", out)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)
    runpath = [d for found in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): "
                                         r"\[(.*)\]", out) for d in found.split(":")]
    return interpreter.group(1) if interpreter else "", needed, runpath


@pytest.mark.parametrize("program", [sys.executable, shutil.which("ls"),
                                     shutil.which("readelf"), shutil.which("runc")])
def test_elf_needs_agrees_with_readelf(program: str | None):
    assert program is not None
    real = str(Path(program).resolve())
    assert elf_needs(Path(real).read_bytes()) == readelf(real)


def test_a_static_program_or_a_script_needs_nothing():
    assert readelf(BUSYBOX) == ("", [], [])  # (busybox-static)
    assert elf_needs(Path(BUSYBOX).read_bytes()) is None
    assert elf_needs(b"#!/bin/sh\necho hi\n") is None
    assert elf_needs(Path(sys.executable).resolve().read_bytes()[:200]) is None  # cut short
