"""Where a PostgreSQL query's text is quoted or commented, so the registry can refuse a
``%(name)s`` parameter placed there.

psycopg2 binds a parameter by writing the value as a quoted literal in its place. Placed
inside a string, a quoted identifier or a comment, that literal is no longer one token:
a value holding a quote (or, in a ``--`` comment, a newline) ends the surrounding
construct and the rest of the value is read as SQL. Outside them it is always inert.
"""

from __future__ import annotations

import re

__all__ = ["quoted_spans"]

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def quoted_spans(query: str) -> list[tuple[int, int, str]]:
    """The ``(start, end, what)`` spans of ``query`` that are string literals (plain,
    ``E''`` and dollar-quoted), quoted identifiers or comments; ``end`` is exclusive.
    An unterminated one runs to the end of the text."""
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c == "'":
            escapes = i > 0 and query[i - 1] in "eE" and (i < 2 or not _word_char(query[i - 2]))
            end = _end_of_quoted(query, i, "'", backslash=escapes)
            spans.append((i, end, "a string literal"))
        elif c == '"':
            end = _end_of_quoted(query, i, '"', backslash=False)
            spans.append((i, end, "a quoted identifier"))
        elif query.startswith("--", i):
            newline = query.find("\n", i)
            end = n if newline < 0 else newline
            spans.append((i, end, "a comment"))
        elif query.startswith("/*", i):
            end = _end_of_block_comment(query, i)
            spans.append((i, end, "a comment"))
        elif c == "$" and (i == 0 or not _word_char(query[i - 1])):
            match = _DOLLAR_TAG.match(query, i)
            if match is None:
                i += 1
                continue
            tag = match.group(0)
            close = query.find(tag, match.end())
            end = n if close < 0 else close + len(tag)
            spans.append((i, end, "a dollar-quoted string"))
        else:
            i += 1
            continue
        i = end
    return spans


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _end_of_quoted(query: str, start: int, quote: str, backslash: bool) -> int:
    i, n = start + 1, len(query)
    while i < n:
        c = query[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and query[i + 1] == quote:  # a doubled quote stands for itself
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _end_of_block_comment(query: str, start: int) -> int:
    depth, i, n = 0, start, len(query)
    while i < n:
        if query.startswith("/*", i):
            depth += 1
            i += 2
        elif query.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n
