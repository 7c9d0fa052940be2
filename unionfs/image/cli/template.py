"""The part of Go's text/template that docker users write in ``--format``: fields
(``{{.Repository}}``, ``{{.Config.Env}}``), ``json``, ``table``, ``range``/``end``,
``if``/``else``/``end``, ``index``, ``join``, ``len``, ``upper``, ``lower``, ``title``,
``println``, pipelines (``{{.Names | upper}}``) and the ``{{-``/``-}}`` trims.

``table TEMPLATE`` (in list commands) prints a header row made from the fields' names and lays
the tab-separated columns out as docker's tabwriter does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unionfs.image.errors import ImageError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\||\(|\)|[^\s|()]+)')


class TemplateError(ImageError):
    pass


def _parse(text: str) -> list:
    """A tree: strings, ("expr", pipeline), ("range", pipeline, body, else_body),
    ("if", pipeline, body, else_body)."""
    pieces: list = []
    pos = 0
    for match in _ACTION.finditer(text):
        before = text[pos:match.start()]
        if match.group(1):
            before = before.rstrip()
        if pieces and isinstance(pieces[-1], tuple) and pieces[-1][0] == "trim":
            before = before.lstrip()
            pieces.pop()
        pieces.append(before)
        action = match.group(2).strip()
        if not action.startswith("/*"):
            pieces.append(("action", action))
        if match.group(3):
            pieces.append(("trim",))
        pos = match.end()
    rest = text[pos:]
    if pieces and isinstance(pieces[-1], tuple) and pieces[-1][0] == "trim":
        pieces.pop()
        rest = rest.lstrip()
    pieces.append(rest)
    tree, leftover = _block(iter(pieces), None)
    if leftover is not None:
        raise TemplateError(f"template: unexpected {{{{{leftover}}}}}")
    return tree


def _block(pieces, opened: str | None) -> tuple[list, str | None]:
    body: list = []
    for piece in pieces:
        if isinstance(piece, str):
            if piece:
                body.append(piece)
            continue
        if piece[0] == "trim":
            continue
        action = piece[1]
        word = action.split(None, 1)[0] if action else ""
        if word in ("end", "else"):
            if opened is None:
                raise TemplateError(f"template: unexpected {{{{{word}}}}}")
            return body, word
        if word in ("range", "if", "with"):
            inner, closer = _block(pieces, word)
            other: list = []
            if closer == "else":
                other, closer = _block(pieces, word)
            if closer != "end":
                raise TemplateError(f"template: unexpected EOF: {{{{{word}}}}} has no "
                                    "{{end}}")
            body.append((word, _tokens(action[len(word):]), inner, other))
        else:
            body.append(("expr", _tokens(action)))
    if opened is not None:
        raise TemplateError(f"template: unexpected EOF: {{{{{opened}}}}} has no {{{{end}}}}")
    return body, None


def _tokens(text: str) -> list[str]:
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    if not tokens:
        raise TemplateError("template: missing value for command")
    return tokens


# ---------------------------------------------------------------------------- evaluation

def go_string(value: Any) -> str:
    """A value as Go's fmt prints it with %v."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def _field(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        if isinstance(value, Mapping):
            if name not in value:
                raise TemplateError(f"template: can't evaluate field {name}")
            value = value[name]
        else:
            raise TemplateError(f"template: can't evaluate field {name} in a "
                                f"{type(value).__name__}")
    return value


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[int(key) if isinstance(value, (list, tuple)) else key]
        except (KeyError, IndexError, TypeError, ValueError):
            if isinstance(value, Mapping):
                return None
            raise TemplateError(f"template: index of {key!r} out of range") from None
    return value


def _join(items: Any, separator: str) -> str:
    return separator.join(go_string(i) for i in items or [])


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json, "index": _index, "join": _join,
    "len": lambda v: len(v or []), "upper": lambda s: go_string(s).upper(),
    "lower": lambda s: go_string(s).lower(), "title": lambda s: go_string(s).title(),
    "println": lambda *a: " ".join(go_string(x) for x in a) + "\n",
    "print": lambda *a: "".join(go_string(x) for x in a),
    "split": lambda s, sep: go_string(s).split(sep),
    "truncate": lambda s, n: go_string(s)[:int(n)],
    "pad": lambda s, left, right: " " * int(left) + go_string(s) + " " * int(right),
}


def _operand(token: str, dot: Any) -> Any:
    if token == ".":
        return dot
    if token.startswith("."):
        return _field(dot, token)
    if token.startswith("$."):
        return _field(dot, token[1:])
    if token[0] in "\"`":
        return json.loads(token) if token[0] == '"' else token[1:-1]
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    raise TemplateError(f'template: function "{token}" not defined')


def _pipeline(tokens: list[str], dot: Any) -> Any:
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            commands.append([])
        elif token not in "()":
            commands[-1].append(token)
    value: Any = None
    for n, command in enumerate(commands):
        if not command:
            raise TemplateError("template: missing command in a pipeline")
        head, args = command[0], [_operand(t, dot) for t in command[1:]]
        if n > 0:
            args.append(value)
        if head in FUNCTIONS:
            try:
                value = FUNCTIONS[head](*args)
            except TypeError:
                raise TemplateError(f"template: wrong number of arguments for {head}") \
                    from None
        elif args and n == 0:
            raise TemplateError(f"template: {head} is not a function")
        else:
            value = _operand(head, dot)
    return value


def _truth(value: Any) -> bool:
    return bool(value) and value != 0


def _render(tree: list, dot: Any, out: list[str]) -> None:
    for node in tree:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "expr":
            out.append(go_string(_pipeline(node[1], dot)))
        elif node[0] == "range":
            items = _pipeline(node[1], dot)
            if isinstance(items, Mapping):
                items = [items[k] for k in sorted(items)]
            if items:
                for item in items:
                    _render(node[2], item, out)
            else:
                _render(node[3], dot, out)
        elif node[0] in ("if", "with"):
            value = _pipeline(node[1], dot)
            if _truth(value):
                _render(node[2], value if node[0] == "with" else dot, out)
            else:
                _render(node[3], dot, out)


def render(template: str, data: Any) -> str:
    """The template applied to ``data`` (dicts and lists, as the JSON of the command)."""
    template = _unescape(template)
    out: list[str] = []
    _render(_parse(template), data, out)
    return "".join(out)


def _unescape(template: str) -> str:
    """``\\t`` and ``\\n`` typed in a shell's quotes, as docker reads them."""
    return template.replace("\\t", "\t").replace("\\n", "\n")


def _header(template: str, headers: Mapping[str, str]) -> str:
    def name(match: re.Match) -> str:
        tokens = match.group(2).split()
        field = next((t for t in tokens if t.startswith(".") and len(t) > 1), None)
        if field is None:
            return ""
        key = field.lstrip(".").split(".")[0]
        return headers.get(key, re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).upper())

    return _ACTION.sub(name, template)


def print_formatted(template: str, rows: Sequence[Any],
                    headers: Mapping[str, str] | None = None) -> None:
    """``--format`` for a list: ``json`` (one object a line), ``table [TEMPLATE]``, or a
    template per row."""
    if template == "json":
        for row in rows:
            print(_json(row))
        return
    if template.startswith("table"):
        body = template[len("table"):].strip()
        if not body:
            raise TemplateError("table needs a template here (table {{.ID}}\\t{{.Names}})")
        body = _unescape(body)
        lines = [_header(body, headers or {})] + [render(body, row) for row in rows]
        _print_aligned(lines)
        return
    for row in rows:
        print(render(template, row))


def _print_aligned(lines: list[str]) -> None:
    """docker's tabwriter (minwidth 10, padding 3): each tab-separated column as wide as its
    widest cell."""
    cells = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in cells:
        for n, cell in enumerate(row[:-1]):
            widths[n] = max(widths.get(n, 0), len(cell))
    for row in cells:
        text = "".join(cell.ljust(max(widths[n] + 3, 10)) for n, cell in enumerate(row[:-1]))
        print((text + row[-1]).rstrip())
