"""Finding the quoted and commented parts of a query, and the registry refusing parameters there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import RegistryError
from runtime.registry import parse_registry
from runtime.sql_text import quoted_spans


def _quoted(query: str) -> list[str]:
    return [query[start:end] for start, end, _ in quoted_spans(query)]


@pytest.mark.parametrize(
    ("query", "parts"),
    [
        ("SELECT 1", []),
        ("SELECT 'it''s', x FROM t", ["'it''s'"]),
        (r"SELECT E'a\'b', 1", [r"E'a\'b'"[1:]]),
        ("SELECT \"we\"\"ird\" FROM t", ['"we""ird"']),
        ("SELECT 1 -- note\nFROM t", ["-- note"]),
        ("SELECT /* a /* nested */ b */ 1", ["/* a /* nested */ b */"]),
        ("SELECT $$x 'y' $$, $tag$ $$ $tag$", ["$$x 'y' $$", "$tag$ $$ $tag$"]),
        ("SELECT a$1, 'open", ["'open"]),  # a$1 is not a dollar quote; the open string runs to the end
    ],
)
def test_quoted_spans(query: str, parts: list[str]) -> None:
    assert _quoted(query) == parts


def _sql(query: str) -> None:
    entry = {"id": "q", "kind": "sql", "query": query, "arguments": {"name": {"type": "string"}}}
    parse_registry(Path("/srv/registry.json"), json.dumps({"scripts": [entry]}))


@pytest.mark.parametrize(
    ("query", "inside"),
    [
        ("SELECT * FROM pg_user WHERE usename = '%(name)s'", "a string literal"),
        ("SELECT E'%(name)s'", "a string literal"),
        ("SELECT $$ %(name)s $$", "a dollar-quoted string"),
        ('SELECT "%(name)s" FROM t', "a quoted identifier"),
        ("SELECT 1 -- %(name)s\n", "a comment"),
        ("SELECT 1 /* %(name)s */", "a comment"),
    ],
)
def test_a_parameter_inside_quotes_or_a_comment_is_refused(query: str, inside: str) -> None:
    with pytest.raises(RegistryError, match=f"parameter %\\(name\\)s is inside {inside}; write it bare"):
        _sql(query)


def test_bare_parameters_next_to_quoted_text_are_accepted() -> None:
    _sql("SELECT '%%literal%%' || %(name)s, $$ 100%% $$ -- done\n")
