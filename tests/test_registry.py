from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime import RegistryError, load_registry
from runtime.registry import parse_registry


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
        ('{"scripts": [{"id": "a", "command": ["x"], "max_retries": -1}]}', "field 'max_retries': must be 0 or more"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "int"}}}]}', "field 'arguments.n.type': unknown argument type 'int'"),
        ('{"scripts": [{"id": "a", "command": ["x"], "arguments": {"n": {"type": "integer", "default": "3"}}}]}', "field 'arguments.n.default': must be of type integer"),
        ('{"scripts": [{"id": "a", "kind": "ftp"}]}', "field 'kind': unknown kind 'ftp'"),
    ],
)
def test_errors_name_file_script_and_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_unreadable_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read the registry"):
        load_registry(tmp_path / "missing.json")


def test_example_registry_is_valid() -> None:
    registry = load_registry(Path(__file__).parent.parent / "examples" / "registry.json")
    assert {"greet", "word-count", "flaky"} <= set(registry)
