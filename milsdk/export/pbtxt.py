"""A reader for protobuf text format, the subset Triton's config.pbtxt files use.

Fields ``key: value``, nested messages ``key { ... }`` (also ``key: { ... }`` and ``< ... >``), lists
``key: [ ... ]``, repeated fields, ``#`` comments, strings, numbers, enum identifiers and booleans. No schema:
it returns plain dicts and lists.
"""

from __future__ import annotations

import json
import re
from typing import Any

from milsdk.errors import ArtifactError

__all__ = ["parse_pbtxt"]

_TOKEN = re.compile(
    r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)'
    r"|(?P<id>[A-Za-z_][\w.]*)"
    r"|(?P<p>[{}\[\]:,;<>])"
)


def _tokens(text: str, source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ArtifactError(f"{source}: cannot parse config at character {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        for kind in ("str", "num", "id", "p"):
            if m.group(kind) is not None:
                out.append((kind, m.group(kind)))
    return out


def _scalar(kind: str, value: str) -> Any:
    if kind == "str":
        try:
            return json.loads(value)
        except ValueError:
            return value[1:-1]
    if kind == "num":
        return float(value) if any(c in value for c in ".eE") else int(value)
    return {"true": True, "false": False}.get(value, value)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.tokens, self.i, self.source = tokens, 0, source

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ArtifactError(f"{self.source}: config ends unexpectedly")
        self.i += 1
        return tok

    def message(self, closing: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None or (closing and tok == ("p", closing)):
                if closing:
                    self.next()
                elif tok is not None:
                    raise ArtifactError(f"{self.source}: unexpected {tok[1]!r}")
                return fields
            kind, key = self.next()
            if kind != "id":
                raise ArtifactError(f"{self.source}: expected a field name, found {key!r}")
            if self.peek() == ("p", ":"):
                self.next()
            fields.setdefault(key, []).extend(self.value())
            if self.peek() in (("p", ","), ("p", ";")):
                self.next()

    def value(self) -> list[Any]:
        kind, text = self.next()
        if (kind, text) in (("p", "{"), ("p", "<")):
            return [self.message("}" if text == "{" else ">")]
        if (kind, text) == ("p", "["):
            items: list[Any] = []
            while self.peek() != ("p", "]"):
                items.extend(self.value())
                if self.peek() == ("p", ","):
                    self.next()
            self.next()
            return items
        if kind == "p":
            raise ArtifactError(f"{self.source}: unexpected {text!r}")
        return [_scalar(kind, text)]


def parse_pbtxt(text: str, source: str = "config.pbtxt") -> dict[str, list[Any]]:
    """Parse protobuf text format. Every field maps to the list of its values, in order (a repeated field and
    a ``[...]`` list alike); nested messages are dicts of the same form; enum names stay strings, ``true`` /
    ``false`` become bools.

    Raises:
        ArtifactError: naming ``source`` and the position of the first thing it cannot parse.
    """
    return _Parser(_tokens(text, source), source).message(None)
