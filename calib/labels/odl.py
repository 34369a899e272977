"""A small reader for PDS3 ODL labels (the attached labels of MER/MSL ``.IMG`` products).

Handles what real labels contain: ``KEY = VALUE`` statements whose value runs over several lines
(open parentheses or quotes), ``/* comments */``, quoted strings, parenthesised and braced
tuples, units written after a value (``0.42 <m>``, dropped: the reader knows each field's unit),
based integers (``2#0000111111111111#``), ``GROUP``/``OBJECT`` blocks and the closing ``END``.

The result is a plain dict: values are str, int, float or tuples of them; a GROUP or OBJECT is a
nested dict under its name. A repeated key keeps its first value (real labels repeat keys only
in history blocks). Syntax errors raise LabelError naming the file and the line.
"""

from __future__ import annotations

import re

from ..errors import LabelError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"[^"]*")            |
        (?P<sq>'[^']*')             |
        (?P<unit><[^>]*>)           |
        (?P<punct>[(){},])          |
        (?P<word>[^\s(){},"'<>]+)
    )""",
    re.VERBOSE,
)
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_BASED = re.compile(r"^(\d+)#([0-9A-Fa-f]+)#$")


def parse_label(text: str, path=None) -> dict:
    """The statements of an ODL label as nested dicts, up to ``END`` or the end of ``text``."""
    root: dict = {}
    stack = [("", root)]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = _strip_comment(lines[i])
        i += 1
        s = line.strip()
        if not s:
            continue
        if s == "END":
            break
        if "=" not in s:
            raise LabelError(path, f"line {lineno}: expected KEY = VALUE, got {s[:40]!r}", field="label")
        key, _, value = s.partition("=")
        key = key.strip()
        value = value.strip()
        # A value may start on the next line ("KEY =\n   'long string'").
        while not value and i < len(lines):
            value = _strip_comment(lines[i]).strip()
            i += 1
        # Continue the value while parentheses/braces or quotes are open.
        while _open(value) and i < len(lines):
            value += " " + _strip_comment(lines[i]).strip()
            i += 1
        if _open(value):
            raise LabelError(path, f"line {lineno}: unterminated value for {key}", field=key)
        upper = key.upper()
        if upper in ("GROUP", "OBJECT"):
            name = _parse_value(value, path, key, lineno)
            child: dict = {}
            stack[-1][1].setdefault(str(name), child)
            stack.append((str(name), child))
        elif upper in ("END_GROUP", "END_OBJECT"):
            if len(stack) == 1:
                raise LabelError(path, f"line {lineno}: {key} without an open block", field=key)
            stack.pop()
        else:
            stack[-1][1].setdefault(key, _parse_value(value, path, key, lineno))
    if len(stack) > 1:
        raise LabelError(path, f"block {stack[-1][0]} is not closed", field=stack[-1][0])
    return root


def _strip_comment(line: str) -> str:
    # Comments never nest and in labels never span lines; quoted text may hold "/*".
    out, q = [], False
    j = 0
    while j < len(line):
        c = line[j]
        if c == '"':
            q = not q
        if not q and line.startswith("/*", j):
            end = line.find("*/", j + 2)
            if end < 0:
                break
            j = end + 2
            continue
        out.append(c)
        j += 1
    return "".join(out)


def _open(value: str) -> bool:
    depth, q = 0, None
    for c in value:
        if q:
            if c == q:
                q = None
        elif c in "\"'":
            q = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
    return depth > 0 or q is not None


def _parse_value(value: str, path, key, lineno):
    tokens = []
    pos = 0
    while pos < len(value):
        m = _TOKEN.match(value, pos)
        if not m or m.end() == pos:
            if not value[pos:].strip():
                break
            raise LabelError(path, f"line {lineno}: cannot parse {value[pos:pos + 30]!r}", field=key)
        pos = m.end()
        kind = m.lastgroup
        if kind == "unit":
            continue
        tokens.append((kind, m.group(kind)))
    if not tokens:
        raise LabelError(path, f"line {lineno}: empty value", field=key)
    val, n = _parse_tokens(tokens, 0, path, key, lineno)
    if n != len(tokens):
        raise LabelError(path, f"line {lineno}: unexpected {tokens[n][1]!r}", field=key)
    return val


def _parse_tokens(tokens, k, path, key, lineno):
    kind, tok = tokens[k]
    if kind == "punct" and tok in "({":
        close = ")" if tok == "(" else "}"
        items = []
        k += 1
        while k < len(tokens) and tokens[k][1] != close:
            item, k = _parse_tokens(tokens, k, path, key, lineno)
            items.append(item)
            if k < len(tokens) and tokens[k][1] == ",":
                k += 1
        if k >= len(tokens):
            raise LabelError(path, f"line {lineno}: unbalanced {tok}", field=key)
        return tuple(items), k + 1
    if kind == "punct":
        raise LabelError(path, f"line {lineno}: unexpected {tok!r}", field=key)
    if kind == "str":
        return " ".join(tok[1:-1].split()), k + 1
    if kind == "sq":
        return tok[1:-1], k + 1
    return _scalar(tok), k + 1


def _scalar(tok: str):
    if _INT.match(tok):
        return int(tok)
    if _FLOAT.match(tok):
        return float(tok)
    m = _BASED.match(tok)
    if m:
        return int(m.group(2), int(m.group(1)))
    return tok
