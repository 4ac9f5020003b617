from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime import RegistryError, load_registry
from runtime.registry import RegistryFile, parse_registry


def _entry(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": "s", "command": ["true"]}
    entry.update(fields)
    return entry


def _parse(*entries: Any) -> Any:
    return parse_registry(Path("/srv/reg/registry.json"), json.dumps({"scripts": list(entries)}))


def test_valid_entry_parsed_with_defaults_and_resolved_program() -> None:
    registry = _parse(
        _entry(id="a", command=["scripts/run.sh", "x"], description="d", timeout=5, max_retries=2,
               arguments={"n": {"type": "integer", "required": True}, "f": {"type": "boolean", "default": False}},
               extra={"k": 1}),
        _entry(id="b"),
    )
    a = registry["a"]
    assert a.command == ("/srv/reg/scripts/run.sh", "x")
    assert a.folder == "/srv/reg"
    assert a.timeout == 5.0 and a.max_retries == 2 and a.description == "d"
    assert a.arguments["n"].required and a.arguments["f"].default is False
    assert a.options == {"extra": {"k": 1}}
    assert registry["b"].command == ("true",) and registry["b"].max_retries is None
    assert len(registry) == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"scripts": [', "invalid JSON at line 1, column 14"),
        ('{"scripts": {}}', 'must be an object with a "scripts" array'),
        ('{"scripts": [3]}', "script #1: must be an object"),
        ('{"scripts": [{"command": ["x"]}]}', "script #1, field 'id': missing"),
        ('{"scripts": [{"id": "a", "command": ["x"]}, {"id": "a", "command": ["y"]}]}', "script #2, field 'id': duplicate id 'a'"),
        ('{"scripts": [{"id": "a", "command": "ls -l"}]}', "script 'a' (#1), field 'command': must be a non-empty array"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": "5"}]}', "field 'timeout': must be a number of seconds, got a string"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": true}]}', "field 'timeout': must be a number of seconds, got a boolean"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": 0}]}', "field 'timeout': must be positive, got 0"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": Infinity}]}', "field 'timeout': must be a finite number of seconds, got Infinity"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": -Infinity}]}', "field 'timeout': must be a finite number of seconds, got -Infinity"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": NaN}]}', "field 'timeout': must be a finite number of seconds, got NaN"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": 1e300}]}', "field 'timeout': must be at most 31622400 seconds (a year), got 1e+300"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": 1e400}]}', "field 'timeout': must be a finite number of seconds, got Infinity"),
        ('{"scripts": [{"id": "a", "command": ["x"], "max_retries": -1}]}', "field 'max_retries': must be 0 or more"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "int"}}}]}', "field 'arguments.n.type': unknown argument type 'int'"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "integer", "default": "3"}}}]}', "field 'arguments.n.default': must be of type integer"),
        ('{"scripts": [{"id": "a", "kind": "ftp"}]}', "field 'kind': unknown kind 'ftp'"),
        # Shapes no field check foresaw: each a RegistryError, never a crash of the reader.
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": ["string", "null"]}}}]}',
         "field 'arguments.n.type': unknown argument type ['string', 'null']"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "number", "default": NaN}}}]}',
         "field 'arguments.n.default': must be a JSON value"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "array", "default": [Infinity]}}}]}',
         "field 'arguments.n.default': must be a JSON value"),
        ('{"scripts": [{"id": "a", "command": ["x", "a\\u0000b"]}]}', "field 'command': must not contain a NUL"),
        ('{"scripts": [{"id": "a", "command": ["x"], "timeout": ' + "9" * 5000 + '}]}', "invalid JSON: Exceeds the limit"),
        ('{"scripts": [' + "[" * 100_000 + "]" * 100_000 + "]}", "invalid JSON: nested too deeply"),
        ('{"scripts": [{"id": "a", "command": ["x"], "retry_backoff": {"min": "fast"}}]}',
         "field 'retry_backoff.min': must be a number of seconds, got a string"),
        ('{"scripts": [{"id": "a", "command": ["x"], "retry_backoff": 5}]}', "field 'retry_backoff': must be an object"),
        ('{"scripts": [{"id": "a", "command": ["x"], "retry_backoff": {"min": -1}}]}',
         "field 'retry_backoff.min': must be a number of seconds from 0 to 31622400"),
        ('{"scripts": [{"id": "a", "command": ["x"], "retry_backoff": {"min": 5, "max": 1}}]}',
         "field 'retry_backoff': min (5) must not exceed max (1)"),
        ('{"scripts": [{"id": "a", "command": ["x"], "retry_backoff": {"minimum": 1}}]}',
         "field 'retry_backoff': unknown field(s) minimum"),
    ],
)
def test_errors_name_file_script_and_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_a_timeout_integer_beyond_any_float_is_refused() -> None:
    with pytest.raises(RegistryError, match="field 'timeout': must be a finite number of seconds, got an integer too large"):
        _parse(_entry(timeout=10**400))


def test_unreadable_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read the registry"):
        load_registry(tmp_path / "missing.json")


def test_example_registry_is_valid() -> None:
    registry = load_registry(Path(__file__).parent.parent / "examples" / "registry.json")
    assert {"greet", "word-count", "flaky"} <= set(registry)


def test_http_sql_python_options_normalised_with_defaults() -> None:
    registry = _parse(
        {"id": "h", "kind": "http", "url": "https://api.example/items/{id}?q={q}",
         "arguments": {"id": {"type": "integer", "required": True}, "q": {"type": "string", "default": "x"}},
         "headers": {"Authorization": "Bearer ${API_TOKEN}", "X-Item": "{id}"}},
        {"id": "h2", "kind": "http", "method": "post", "url": "http://127.0.0.1:8080/", "success_statuses": [201, 200, 201],
         "body_cap": 10},
        {"id": "q", "kind": "sql", "query": "SELECT %(a)s::int, 5 %% 3", "arguments": {"a": {"type": "integer"}}},
        {"id": "w", "kind": "sql", "query": "DELETE FROM t", "pool": "reports", "readonly": False, "max_rows": 5},
        {"id": "p", "kind": "python", "callable": "m:f"},
        {"id": "pp", "kind": "python", "callable": "m:f", "isolation": "process"},
    )
    h = registry["h"].options
    assert h["method"] == "GET" and h["url"] == "https://api.example/items/{id}?q={q}"
    assert dict(h["headers"]) == {"Authorization": "Bearer ${API_TOKEN}", "X-Item": "{id}"}
    assert h["success_statuses"] == tuple(range(200, 300)) and h["body_cap"] == 1 << 20
    h2 = registry["h2"].options
    assert h2["method"] == "POST" and h2["success_statuses"] == (200, 201) and h2["body_cap"] == 10
    assert dict(h2["headers"]) == {}
    assert dict(registry["q"].options) == {"query": "SELECT %(a)s::int, 5 %% 3", "pool": "default", "readonly": True,
                                           "max_rows": 1000}
    assert dict(registry["w"].options) == {"query": "DELETE FROM t", "pool": "reports", "readonly": False, "max_rows": 5}
    assert dict(registry["p"].options) == {"callable": "m:f", "isolation": "thread"}
    assert registry["pp"].options["isolation"] == "process"


_ARGS = {"id": {"type": "string", "required": True}, "opt": {"type": "string"}, "obj": {"type": "object", "default": {}}}


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"kind": "http"}, "field 'url': missing"),
        ({"kind": "http", "url": 5}, "field 'url': must be a string, got an integer"),
        ({"kind": "http", "url": "ftp://host/x"}, "field 'url': must be an absolute http:// or https:// URL"),
        ({"kind": "http", "url": "/relative"}, "field 'url': must be an absolute http:// or https:// URL"),
        ({"kind": "http", "url": "http://h/{nope}"}, "field 'url': placeholder {nope} names no declared argument"),
        ({"kind": "http", "url": "http://h/{id"}, "field 'url': stray '{' or '}'"),
        ({"kind": "http", "url": "http://{id}/x"}, "field 'url': placeholders may not be in the scheme or host"),
        ({"kind": "http", "url": "http://h:99999/x"}, "field 'url': not a valid URL: Port out of range"),
        ({"kind": "http", "url": "http://[::1/x"}, "field 'url': not a valid URL"),
        ({"kind": "http", "url": "http://h/{opt}"}, "placeholder {opt} names an optional argument without a default"),
        ({"kind": "http", "url": "http://h/{obj}"}, "placeholder {obj} names an argument of type object"),
        ({"kind": "http", "url": "http://h/", "method": "FETCH"}, "field 'method': unknown method 'FETCH'"),
        ({"kind": "http", "url": "http://h/", "method": 1}, "field 'method': must be a string"),
        ({"kind": "http", "url": "http://h/", "headers": []}, "field 'headers': must be an object"),
        ({"kind": "http", "url": "http://h/", "headers": {"X": 1}}, "field 'headers.X': must be a string, got an integer"),
        ({"kind": "http", "url": "http://h/", "headers": {"X Y": "v"}}, "field 'headers.X Y': not a valid header name"),
        ({"kind": "http", "url": "http://h/", "headers": {"X": "a\r\nB: c"}}, "field 'headers.X': must not contain a line break"),
        ({"kind": "http", "url": "http://h/", "headers": {"X": "{who}"}}, "field 'headers.X': placeholder {who} names no"),
        ({"kind": "http", "url": "http://h/", "headers": {"X": "${1BAD}"}}, "field 'headers.X': stray '{' or '}'"),
        ({"kind": "http", "url": "http://h/", "success_statuses": []}, "field 'success_statuses': must be a non-empty array"),
        ({"kind": "http", "url": "http://h/", "success_statuses": [200, 600]}, "integers from 100 to 599"),
        ({"kind": "http", "url": "http://h/", "success_statuses": [True]}, "integers from 100 to 599"),
        ({"kind": "http", "url": "http://h/", "success_statuses": 200}, "field 'success_statuses': must be an array"),
        ({"kind": "http", "url": "http://h/", "body_cap": 0}, "field 'body_cap': must be positive, got 0"),
        ({"kind": "http", "url": "http://h/", "body_cap": 1.5}, "field 'body_cap': must be a positive integer, got a number"),
        ({"kind": "sql"}, "field 'query': missing or empty"),
        ({"kind": "sql", "query": "  "}, "field 'query': missing or empty"),
        ({"kind": "sql", "query": ["SELECT 1"]}, "field 'query': must be a string, got an array"),
        ({"kind": "sql", "query": "SELECT %(who)s"}, "field 'query': parameter %(who)s names no declared argument"),
        ({"kind": "sql", "query": "SELECT %s"}, "field 'query': stray '%'"),
        ({"kind": "sql", "query": "SELECT 5 % 3"}, "a literal % is written %%"),
        ({"kind": "sql", "query": "SELECT 1", "pool": ""}, "field 'pool': must be a non-empty pool name"),
        ({"kind": "sql", "query": "SELECT 1", "timeout": 2_147_484}, "field 'timeout': must be at most 2147483 seconds"),
        ({"kind": "sql", "query": "SELECT 1", "pool": 3}, "field 'pool': must be a string"),
        ({"kind": "sql", "query": "SELECT 1", "readonly": "no"}, "field 'readonly': must be a boolean, got a string"),
        ({"kind": "sql", "query": "SELECT 1", "max_rows": -1}, "field 'max_rows': must be positive, got -1"),
        ({"kind": "sql", "query": "SELECT 1", "max_rows": False}, "field 'max_rows': must be a positive integer, got a boolean"),
        ({"kind": "python", "callable": "m:f", "isolation": "fork"}, "field 'isolation': unknown isolation 'fork'"),
        ({"kind": "python", "callable": "m:f", "isolation": None}, "field 'isolation': must be a string, got null"),
    ],
)
def test_kind_option_errors_name_file_script_and_field(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(RegistryError) as info:
        _parse({"id": "k", "arguments": _ARGS, **entry})
    assert str(info.value).startswith("/srv/reg/registry.json: script 'k' (#1), field ")
    assert needle in str(info.value)


def test_registry_file_reads_each_version_once_and_falls_back_to_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"scripts": [{"id": "a", "command": ["true"]}]}')
    last_good: list[bytes | None] = [None]
    registry = RegistryFile(path, lambda: last_good[0])
    assert registry.get("a") is not None and registry.get("b") is None
    path.write_text('{"scripts": [{"id": "a", "command": ["true"]}, {"id": "b", "command": ["true"]}]}')
    assert registry.get("b") is not None  # a new version is read
    path.write_text('{"scripts": [')  # invalid, and no good version known: a clear error
    with pytest.raises(RegistryError, match="no good version"):
        registry.get("a")
    last_good[0] = b'{"scripts": [{"id": "c", "command": ["true"]}]}'
    assert registry.get("c") is not None and registry.get("a") is None  # the last good version is in force
