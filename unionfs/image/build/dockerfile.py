"""The syntax of a Containerfile / Dockerfile, as docker's parser reads it.

Parser directives (``# syntax=...``, ``# escape=\\`` or ```` ` ````) only at the very top;
comment lines dropped (also inside a continued instruction); a line ending in the escape
character continues on the next; the first word is the instruction (any case), leading
``--flag=value`` words are its flags, and ``RUN``/``CMD``/``ENTRYPOINT``/``SHELL``/``COPY``/
``ADD``/``VOLUME`` arguments that are a JSON array of strings are the exec (JSON) form.

Everything is checked here, before anything runs: an instruction or a flag pyunion does not
support is an error naming its line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from unionfs.image.errors import ImageError

# instruction -> the flags it takes (a flag's value after "=", or a bare flag)
INSTRUCTIONS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"network"}),
    "CMD": frozenset(), "ENTRYPOINT": frozenset(), "SHELL": frozenset(),
    "COPY": frozenset({"chown", "chmod", "from", "link"}),
    "ADD": frozenset({"chown", "chmod", "link"}),
    "ENV": frozenset(), "ARG": frozenset(), "LABEL": frozenset(), "WORKDIR": frozenset(),
    "USER": frozenset(), "EXPOSE": frozenset(), "VOLUME": frozenset(),
    "STOPSIGNAL": frozenset(), "ONBUILD": frozenset(), "MAINTAINER": frozenset(),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval",
                              "retries"}),
}
JSON_FORMS = {"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"}
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$")
_FLAG = re.compile(r"--([a-zA-Z][a-zA-Z0-9-]*)(?:=(.*))?$")


class DockerfileError(ImageError):
    """A syntax error or an unsupported instruction, with the file's line."""


@dataclass
class Instruction:
    keyword: str                 # upper case
    args: str                    # the arguments after the flags, continuations joined
    line: int                    # the line the instruction starts on (1-based)
    original: str                # the instruction as written (continuations joined)
    flags: dict[str, str | None] = field(default_factory=dict)
    exec_form: list[str] | None = None  # the JSON (exec) form's array

    def error(self, message: str) -> DockerfileError:
        return DockerfileError(f"line {self.line}: {self.keyword}: {message}")


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    directives: dict[str, str]
    escape: str = "\\"


def parse(text: str, *, where: str = "Containerfile") -> Dockerfile:
    lines = text.splitlines()
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(f"{where}: invalid escape token {escape!r} does not validate "
                              "(must be ` or \\)")
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    instructions: list[Instruction] = []
    pieces: list[str] = []
    start = 0
    for number, line in enumerate(lines[first:], start=first + 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pieces):
            continue
        if not stripped:  # an empty line inside a continued instruction: skipped
            continue
        if not pieces:
            start, line = number, line.lstrip()
        match = continued.search(line)
        if match:
            pieces.append(line[:match.start()])
            continue
        pieces.append(line)
        instructions.append(_instruction("".join(pieces), start, escape))
        pieces = []
    if pieces:
        instructions.append(_instruction("".join(pieces), start, escape))
    return Dockerfile(instructions, directives, escape)


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """The parser directives at the top, and the index of the first line after them."""
    directives: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if not match:
            return directives, index
        name = match.group(1).lower()
        if name in directives:
            raise DockerfileError(f"line {index + 1}: only one {name} parser directive can be "
                                  "used")
        directives[name] = match.group(2)
    return directives, len(lines)


def _instruction(text: str, line: int, escape: str) -> Instruction:
    keyword, _, rest = text.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    upper = keyword.upper()
    if upper not in INSTRUCTIONS:
        raise DockerfileError(f"line {line}: unknown instruction: {keyword}")
    rest = rest.strip()
    flags, args = _flags(rest)
    instruction = Instruction(upper, args, line, text.strip(), flags)
    for name in flags:
        if name not in INSTRUCTIONS[upper]:
            raise instruction.error(f"the --{name} flag is not supported")
    if upper in JSON_FORMS:
        instruction.exec_form = _json_array(args)
    _check(instruction, escape)
    return instruction


def _flags(text: str) -> tuple[dict[str, str | None], str]:
    flags: dict[str, str | None] = {}
    rest = text
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        match = _FLAG.match(word)
        if not match:
            break
        flags[match.group(1)] = match.group(2)
        rest = after.lstrip()
    return flags, rest


def _json_array(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _check(ins: Instruction, escape: str) -> None:
    """What can be known wrong before anything runs."""
    k = ins.keyword
    if k in ("RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "FROM", "WORKDIR", "USER",
             "STOPSIGNAL", "EXPOSE", "VOLUME", "SHELL", "LABEL", "ENV", "ARG", "ONBUILD",
             "MAINTAINER") and not ins.args and k not in ("CMD", "ENTRYPOINT"):
        raise ins.error("requires at least one argument")
    if k == "SHELL" and not ins.exec_form:
        raise ins.error("requires the arguments to be in JSON form")
    if k in ("COPY", "ADD"):
        count = len(ins.exec_form) if ins.exec_form is not None else len(ins.args.split())
        if count < 2:
            raise ins.error("requires at least two arguments, but only one was provided. "
                            "Destination could not be determined")
        if "<<" in ins.args:
            raise ins.error("here-documents are not supported")
    if k == "RUN" and ins.args.startswith("<<"):
        raise ins.error("here-documents are not supported")
    if k == "RUN" and ins.flags.get("network") not in (None, "host", "none", "default"):
        raise ins.error(f"unsupported network mode {ins.flags['network']!r} (host, none)")
    if k == "ONBUILD":
        inner = ins.args.split(None, 1)[0].upper()
        if inner in ("ONBUILD", "FROM", "MAINTAINER"):
            raise ins.error(f"{inner} isn't allowed as an ONBUILD trigger")
        _instruction(ins.args, ins.line, escape)
    if k == "HEALTHCHECK":
        word = ins.args.split(None, 1)[0].upper() if ins.args else ""
        if word not in ("NONE", "CMD"):
            raise ins.error("the first argument must be CMD or NONE")
    if k == "ADD" and re.search(r"(^|\s|\[\")git(@|://)", ins.args):
        raise ins.error("a git source is not supported (clone it into the context)")
