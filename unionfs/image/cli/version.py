"""``pyunion version``: pyunion's version and those of the parts it runs."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess

from unionfs.image.store import Store

HELP = "Show the version of pyunion and of the OCI runtimes it finds"


def register(commands) -> None:
    p = commands.add_parser("version", help=HELP, description=HELP,
                            epilog="examples:\n  pyunion version\n"
                                   "  pyunion version --format json")
    p.add_argument("-f", "--format", help="json, or a Go template ({{.Client.Version}})")
    p.set_defaults(run=run)


def _runtime_version(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        return None
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = result.stdout.splitlines()[:1]
    return first[0].split()[-1] if first else None


def facts() -> dict:
    from unionfs.image.cli.dispatch import version_line

    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(),
                                                          platform.machine())
    return {"Client": {"Version": version_line().split()[-1],
                       "PythonVersion": platform.python_version(),
                       "Os": "linux", "Arch": machine,
                       "KernelVersion": platform.release()},
            "Runtimes": {name: v for name in ("runc", "crun")
                         if (v := _runtime_version(name)) is not None}}


def run(args, store: Store) -> int:
    data = facts()
    if args.format:
        from unionfs.image.cli.template import render

        if args.format == "json":
            print(json.dumps(data))
        else:
            print(render(args.format, data))
        return 0
    client = data["Client"]
    print(f"Client:\n Version:\t{client['Version']}\n Python version:\t"
          f"{client['PythonVersion']}\n OS/Arch:\t{client['Os']}/{client['Arch']}\n"
          f" Kernel:\t{client['KernelVersion']}")
    for name, number in data["Runtimes"].items():
        print(f"Runtime {name}:\n Version:\t{number}")
    return 0
