"""validate_arguments, ExecutionResult and python scripts run in the calling thread."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from runtime.errors import InvalidArguments
from runtime.executors import MAX_NESTING, ExecutionResult, run_python, validate_arguments
from runtime.registry import ArgumentSpec, Script


def _python(callable_spec: Any, **fields: Any) -> Script:
    return Script(id="py", kind="python", options=MappingProxyType({"callable": callable_spec}), **fields)


def test_wrong_kind_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        run_python(Script(id="c", command=("true",)), {})


# -- validate_arguments --------------------------------------------------------------

_TYPED = Script(
    id="typed",
    command=("true",),
    arguments=MappingProxyType({
        "count": ArgumentSpec("integer", required=True),
        "ratio": ArgumentSpec("number", default=0.5),
        "verbose": ArgumentSpec("boolean", default=False),
        "tags": ArgumentSpec("array", default=["a"]),
        "name": ArgumentSpec("string"),
    }),
)


def test_valid_arguments_get_defaults_filled_in() -> None:
    assert validate_arguments(_TYPED, {"count": 3}) == {"count": 3, "ratio": 0.5, "verbose": False, "tags": ["a"]}
    given = {"count": 1, "ratio": 2, "name": "n", "tags": ["x", {"k": 1}]}
    assert validate_arguments(_TYPED, given) == {**given, "verbose": False}


def test_defaults_and_values_are_copies() -> None:
    first = validate_arguments(_TYPED, {"count": 1})
    first["tags"].append("mutated")
    assert validate_arguments(_TYPED, {"count": 1})["tags"] == ["a"]
    tags = ["x"]
    validated = validate_arguments(_TYPED, {"count": 1, "tags": tags})
    tags.append("later")
    assert validated["tags"] == ["x"]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"count": True}, "'count' must be of type integer, got bool"),
        ({"count": 1.0}, "'count' must be of type integer"),
        ({"count": "1"}, "'count' must be of type integer, got str"),
        ({"count": 1, "ratio": False}, "'ratio' must be of type number"),
        ({"count": 1, "verbose": 1}, "'verbose' must be of type boolean"),
        ({"count": 1, "name": None}, "'name' must be of type string"),
        ({}, "'count' is required"),
        (None, "'count' is required"),
        ({"count": 1, "bogus": 2}, "unknown argument(s) bogus"),
        ({"count": 1, "ratio": float("nan")}, "'ratio' is not JSON-serialisable"),
        ({"count": 1, "tags": [{1, 2}]}, "'tags' is not JSON-serialisable"),
        (["count"], "arguments must be an object"),
    ],
)
def test_invalid_arguments_are_rejected_naming_script_and_argument(arguments: Any, fragment: str) -> None:
    with pytest.raises(InvalidArguments) as caught:
        validate_arguments(_TYPED, arguments)
    assert "'typed'" in str(caught.value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_rejected_value_is_not_echoed() -> None:
    with pytest.raises(InvalidArguments) as caught:
        validate_arguments(_TYPED, {"count": "hunter2-secret"})
    assert "hunter2-secret" not in str(caught.value)


# -- python scripts (the callables they name live here) -------------------------------

NOT_CALLABLE = 42


def add(a: int, b: int = 0) -> dict[str, int]:
    return {"sum": a + b}


def with_progress(n: int, progress: Any) -> int:
    progress(0.5, "half")
    progress(3)
    progress("not a number")
    return n


def boom() -> None:
    raise RuntimeError("nope")


def exits() -> None:
    raise SystemExit(2)


def returns_a_set() -> set[int]:
    return {1}


def raises(kind: str) -> None:
    raise {"interrupt": KeyboardInterrupt, "generator": GeneratorExit, "base": BaseException}[kind]("stop")


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def mutates(items: list[str]) -> list[str]:
    items.append("mutated")
    return items


def huge_progress(progress: Any) -> str:
    progress(10**400, "beyond any float")  # dropped, not raised into the job
    return "done"


def test_python_success_returns_the_value() -> None:
    result = run_python(_python("tests.test_executors:add"), {"a": 2, "b": 3})
    assert result.status == "succeeded", result
    assert result.value == {"sum": 5}
    assert result.error is None and result.exit_code is None
    assert json.loads(json.dumps(result.to_dict()))["value"] == {"sum": 5}


def test_python_progress_is_passed_when_accepted() -> None:
    events: list[tuple[float, str]] = []
    result = run_python(_python("tests.test_executors:with_progress"), {"n": 7}, lambda f, m: events.append((f, m)))
    assert result.status == "succeeded", result
    assert result.value == 7
    assert events == [(0.5, "half"), (1.0, "")]


def test_python_progress_without_observer_or_with_a_broken_one() -> None:
    assert run_python(_python("tests.test_executors:with_progress"), {"n": 1}).value == 1

    def broken(fraction: float, message: str) -> None:
        raise RuntimeError("observer bug")

    assert run_python(_python("tests.test_executors:with_progress"), {"n": 1}, broken).status == "succeeded"


def test_python_exception_fails_with_type_and_message() -> None:
    result = run_python(_python("tests.test_executors:boom"), {})
    assert result.status == "failed"
    assert result.error == "RuntimeError: nope"


def test_python_system_exit_fails_instead_of_ending_the_thread() -> None:
    result = run_python(_python("tests.test_executors:exits"), {})
    assert result.status == "failed"
    assert result.error == "SystemExit: 2"


@pytest.mark.parametrize("kind", ["interrupt", "generator", "base"])
def test_python_any_base_exception_fails_the_attempt_instead_of_ending_the_thread(kind: str) -> None:
    result = run_python(_python("tests.test_executors:raises"), {"kind": kind})
    assert result.status == "failed" and result.error is not None and result.error.endswith("stop")


def test_python_a_module_that_interrupts_its_import_fails_for_good(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "interrupting_module.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_python(_python("interrupting_module:f"), {})
    assert result.status == "failed" and "KeyboardInterrupt" in (result.error or "")
    assert result.to_dict()["retryable"] is False


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 600, 5000])
def test_python_a_return_value_nested_too_deeply_fails_clearly(depth: int) -> None:
    result = run_python(_python("tests.test_executors:nested"), {"depth": depth})
    assert result.status == "failed" and f"nested more than {MAX_NESTING} levels deep" in (result.error or "")
    assert run_python(_python("tests.test_executors:nested"), {"depth": MAX_NESTING - 1}).status == "succeeded"


def test_python_a_job_changing_its_arguments_changes_only_its_own_copy() -> None:
    arguments = {"items": ["a"]}
    assert run_python(_python("tests.test_executors:mutates"), arguments).value == ["a", "mutated"]
    assert arguments == {"items": ["a"]}  # what a retry gets, and what the store keeps


def test_python_a_progress_fraction_beyond_any_float_is_dropped() -> None:
    events: list[tuple[float, str]] = []
    result = run_python(_python("tests.test_executors:huge_progress"), {}, lambda f, m: events.append((f, m)))
    assert result.status == "succeeded" and events == []


def test_an_argument_nested_too_deeply_is_refused_by_name() -> None:
    script = Script(id="s", arguments=MappingProxyType({"o": ArgumentSpec("array")}))
    with pytest.raises(InvalidArguments, match=f"argument 'o' is nested more than {MAX_NESTING} levels deep"):
        validate_arguments(script, {"o": nested(MAX_NESTING + 1)})


def test_python_wrong_arguments_fail() -> None:
    result = run_python(_python("tests.test_executors:add"), {"c": 1})
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("TypeError:")


def test_python_non_json_return_value_fails() -> None:
    result = run_python(_python("tests.test_executors:returns_a_set"), {})
    assert result.status == "failed"
    assert result.error is not None and "not JSON-serialisable" in result.error
    assert result.value is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (None, "must be 'package.module:function'"),
        (["not", "hashable"], "must be 'package.module:function'"),
        ("tests.test_executors.add", "must be 'package.module:function'"),
        ("tests.test_executors:", "must be 'package.module:function'"),
        ("a:b:c", "must be 'package.module:function'"),
        ("no_such_module_xyz:f", "ModuleNotFoundError"),
        ("tests.test_executors:missing", "AttributeError"),
        ("tests.test_executors:NOT_CALLABLE", "not a function"),
    ],
)
def test_python_bad_callable_spec_fails_clearly(spec: Any, fragment: str) -> None:
    result = run_python(_python(spec), {})
    assert result.status == "failed"
    assert result.error is not None and "'py'" in result.error and fragment in result.error
    assert result.to_dict()["retryable"] is False  # a retry would load the same entry


def test_execution_result_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError):
        ExecutionResult(status="done")
