"""Dockerfile-style ``--change`` instructions applied to an image config (import, commit)."""

from __future__ import annotations

import json
import shlex

from unionfs.image.errors import ImageError

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "VOLUME",
             "STOPSIGNAL")


def _command(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
            return parsed
    return ["/bin/sh", "-c", value]


def _pairs(value: str, what: str) -> list[tuple[str, str]]:
    words = shlex.split(value)
    if len(words) == 2 and "=" not in words[0]:
        return [(words[0], words[1])]
    pairs = []
    for word in words:
        key, sep, val = word.partition("=")
        if not sep or not key:
            raise ImageError(f"{what} needs KEY=VALUE, got {word!r}")
        pairs.append((key, val))
    return pairs


def apply_changes(config: dict, changes: list[str]) -> None:
    """Applies each ``INSTRUCTION args`` to ``config`` (the image config's ``config`` part)."""
    for change in changes:
        instruction, _, value = change.strip().partition(" ")
        instruction = instruction.upper()
        if instruction not in SUPPORTED:
            raise ImageError(f"unsupported --change instruction {instruction!r} "
                             f"(supported: {', '.join(SUPPORTED)})")
        if instruction == "CMD":
            config["Cmd"] = _command(value)
        elif instruction == "ENTRYPOINT":
            config["Entrypoint"] = _command(value)
        elif instruction == "ENV":
            env = [e for e in config.get("Env") or []]
            for key, val in _pairs(value, "ENV"):
                env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={val}"]
            config["Env"] = env
        elif instruction == "WORKDIR":
            config["WorkingDir"] = value.strip()
        elif instruction == "USER":
            config["User"] = value.strip()
        elif instruction == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(_pairs(value, "LABEL"))
            config["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in value.split():
                ports[port if "/" in port else port + "/tcp"] = {}
            config["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            volumes = dict(config.get("Volumes") or {})
            for path in _command(value) if value.strip().startswith("[") else value.split():
                volumes[path] = {}
            config["Volumes"] = volumes
        elif instruction == "STOPSIGNAL":
            config["StopSignal"] = value.strip()
