"""Docker's variable substitution and word splitting (its ``shell.Lex``), for the instructions
that take it: ``$V``, ``${V}``, ``${V:-default}``, ``${V-default}``, ``${V:+alt}``,
``${V+alt}``; single quotes keep everything literal, double quotes keep spaces and allow
``$`` expansion; the escape character (``\\`` or `````) escapes the next character.
"""

from __future__ import annotations

from collections.abc import Mapping

from unionfs.image.errors import ImageError


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text, self.env, self.escape = text, env, escape
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def words(self, split: bool) -> list[str]:
        """The words of the text (one word when not ``split``): quotes removed, variables
        substituted; when splitting, blanks in an unquoted variable's value split words too."""
        words: list[str] = []
        current: list[str] = []
        started = False

        def flush() -> None:
            nonlocal current, started
            if started:
                words.append("".join(current))
            current, started = [], False

        while self.pos < len(self.text):
            ch = self.take()
            if split and ch in " \t\n":
                flush()
            elif ch == self.escape:
                started = True
                current.append(self.take() if self.pos < len(self.text) else ch)
            elif ch == "'":
                started = True
                current.append(self._single_quoted())
            elif ch == '"':
                started = True
                current.append(self._double_quoted())
            elif ch == "$":
                for c in self._variable():
                    if split and c in " \t\n":
                        flush()
                    else:
                        started = True
                        current.append(c)
            else:
                started = True
                current.append(ch)
        if not split:
            return ["".join(current)]
        flush()
        return words

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise ImageError("unexpected end of statement while looking for matching single-quote")
        value = self.text[self.pos:end]
        self.pos = end + 1
        return value

    def _double_quoted(self) -> str:
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise ImageError("unexpected end of statement while looking for matching "
                                 "double-quote")
            ch = self.take()
            if ch == '"':
                return "".join(out)
            if ch == self.escape and self.peek() in ('"', "$", self.escape):
                out.append(self.take())
            elif ch == "$":
                out.append(self._variable())
            else:
                out.append(ch)

    def _name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum()
                                             or self.text[self.pos] == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _variable(self) -> str:
        if self.peek() == "{":
            self.take()
            return self._braced()
        name = self._name()
        if not name:
            return "$"
        return self.env.get(name, "")

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise ImageError(f"bad substitution in {self.text!r}")
        ch = self.take()
        if ch == "}":
            return self.env.get(name, "")
        colon = ch == ":"
        if colon:
            ch = self.take()
        if ch not in "-+?":
            raise ImageError(f"unsupported modifier ({ch}) in substitution: {self.text!r}")
        word = self._word_until_brace()
        value = self.env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if ch == "-":
            return value if is_set else word  # type: ignore[return-value]
        if ch == "+":
            return word if is_set else ""
        if not is_set:
            raise ImageError(f"{name}: {word or 'is not allowed to be unset'}")
        return value  # type: ignore[return-value]

    def _word_until_brace(self) -> str:
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise ImageError(f"missing '}}' in substitution: {self.text!r}")
            ch = self.take()
            if ch == "}":
                return "".join(out)
            if ch == self.escape and self.pos < len(self.text):
                out.append(self.take())
            elif ch == "$":
                out.append(self._variable())
            elif ch == "'":
                out.append(self._single_quoted())
            elif ch == '"':
                out.append(self._double_quoted())
            else:
                out.append(ch)


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word: quotes removed, variables substituted (docker's ``ProcessWord``)."""
    return _Lexer(text, env, escape).words(split=False)[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Words split on unquoted blanks, quotes removed, variables substituted
    (docker's ``ProcessWords``)."""
    return _Lexer(text, env, escape).words(split=True)


def split_keeping_quotes(text: str, escape: str = "\\") -> list[str]:
    """Words split on unquoted blanks, quotes and escapes kept (the parser's ``parseWords``):
    what ``ENV``/``LABEL``/``ARG`` split into ``name=value`` pairs before substitution."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if not quote and ch in " \t\n":
            if current:
                words.append("".join(current))
                current = []
            i += 1
            continue
        current.append(ch)
        if ch == escape and quote != "'" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        i += 1
    if current:
        words.append("".join(current))
    return words
