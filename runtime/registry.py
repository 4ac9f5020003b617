"""The registry file: read, parse and validate it into immutable ``Script`` entries.

Every error names the file, the script (id, or position when the id is missing)
and the field at fault, so a user never sees a bare KeyError for their mistake.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from runtime.errors import RegistryError
from runtime.sql_text import quoted_spans

__all__ = [
    "ARGUMENT_PLACEHOLDER",
    "ARGUMENT_TYPES",
    "DEFAULT_BODY_CAP",
    "DEFAULT_MAX_ROWS",
    "HEADER_PLACEHOLDER",
    "HTTP_METHODS",
    "PYTHON_ISOLATIONS",
    "SQL_PLACEHOLDER",
    "ArgumentSpec",
    "FileStamp",
    "Registry",
    "RegistryFile",
    "Script",
    "load_registry",
    "parse_registry",
    "stamp",
]

#: Argument types a registry may declare, with the JSON values each accepts.
ARGUMENT_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}

#: HTTP methods an ``http`` script may use.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Bytes of an HTTP response body kept by default (``body_cap``).
DEFAULT_BODY_CAP = 1 << 20
#: Rows of a result set kept by default (``max_rows``).
DEFAULT_MAX_ROWS = 1000
#: How a ``python`` script may be isolated from the runtime.
PYTHON_ISOLATIONS = ("thread", "process")

_KINDS = ("command", "python", "http", "sql")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``{name}``: an argument placeholder (URL and header templates).
ARGUMENT_PLACEHOLDER = re.compile(r"\{(" + _NAME + r")\}")
#: ``${NAME}``: an environment reference (header templates), or ``{name}``.
HEADER_PLACEHOLDER = re.compile(r"\$\{(" + _NAME + r")\}|\{(" + _NAME + r")\}")
#: psycopg2's pyformat: ``%(name)s``, ``%%``, or any other ``%`` (an error).
SQL_PLACEHOLDER = re.compile(r"%\((" + _NAME + r")\)s|%%|%")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class ArgumentSpec:
    """One declared argument of a script.

    Attributes:
        type: one of ``ARGUMENT_TYPES``.
        required: a job must give it.
        default: used when a job does not give it (``None``: no default).
        description: free text for people.
    """

    type: str
    required: bool = False
    default: Any = None
    description: str = ""

    def accepts(self, value: Any) -> bool:
        if self.type in ("integer", "number") and isinstance(value, bool):
            return False  # JSON true is not a number, although Python's bool is an int
        return isinstance(value, ARGUMENT_TYPES[self.type])


@dataclass(frozen=True, slots=True)
class Script:
    """One registry entry, validated.

    Attributes:
        id: unique name jobs refer to.
        kind: ``command`` (a child process), ``python`` (a function), ``http`` or ``sql``.
        command: argv list for ``command`` scripts; a relative program path is
            resolved against the registry's folder, which is also the working folder.
        description: free text for people.
        arguments: declared arguments by name.
        timeout: seconds an attempt may take.
        max_retries: attempts after the first one that failed (``None``: the runtime's default).
        folder: the registry's folder.
        options: every other field of the entry, kept for the kinds that need them.
            The fields of the ``http``, ``sql`` and ``python`` kinds are there
            validated, normalised and with their defaults: ``http``: ``method``
            (upper case), ``url``, ``headers`` (read-only mapping),
            ``success_statuses`` (sorted tuple), ``body_cap``; ``sql``:
            ``query``, ``pool``, ``readonly``, ``max_rows``; ``python``: ``isolation``.
    """

    id: str
    kind: str = "command"
    command: tuple[str, ...] = ()
    description: str = ""
    arguments: Mapping[str, ArgumentSpec] = field(default_factory=lambda: _EMPTY)
    timeout: float = 60.0
    max_retries: int | None = None
    folder: str = "."
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    mtime_ns: int
    size: int
    inode: int


def stamp(path: Path) -> FileStamp | None:
    """The file's current stamp, or ``None`` when it cannot be read as a file: missing, its
    folder replaced by a file, no permission (its readers then keep the last good registry)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


class Registry(Mapping[str, Script]):
    """An immutable, validated registry: script id -> ``Script``."""

    def __init__(self, path: Path, scripts: Mapping[str, Script]) -> None:
        self.path = path
        self._scripts = dict(scripts)

    def __getitem__(self, script_id: str) -> Script:
        return self._scripts[script_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scripts)

    def __len__(self) -> int:
        return len(self._scripts)


class _Checker:
    """Validates one entry, building messages that name file, script and field."""

    def __init__(self, path: Path, where: str, entry: dict[str, Any]) -> None:
        self.path = path
        self.where = where
        self.entry = entry

    def fail(self, field_name: str, problem: str) -> RegistryError:
        return RegistryError(f"{self.path}: {self.where}, field {field_name!r}: {problem}")

    def get(self, name: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
        if name not in self.entry:
            return default
        value = self.entry[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise self.fail(name, f"must be {what}, got {_json_type(value)}")
        return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


#: The longest ``timeout`` a script may have, in seconds (a year).
MAX_TIMEOUT = 366 * 24 * 3600
MAX_SQL_TIMEOUT = 2_147_483  # seconds: PostgreSQL takes a statement_timeout of at most 2**31 - 1 ms


def _finite_seconds(value: int | float) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN, infinite or too large for a float."""
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _json_type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _parse_arguments(check: _Checker) -> Mapping[str, ArgumentSpec]:
    raw = check.get("arguments", dict, {}, "an object of name -> {type, required, default}")
    specs: dict[str, ArgumentSpec] = {}
    for name, spec in raw.items():
        field_name = f"arguments.{name}"
        if not isinstance(spec, dict):
            raise check.fail(field_name, f"must be an object, got {_json_type(spec)}")
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in ARGUMENT_TYPES:  # e.g. ["string", "null"]
            raise check.fail(
                f"{field_name}.type",
                f"unknown argument type {kind!r}; use one of {', '.join(ARGUMENT_TYPES)}",
            )
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise check.fail(f"{field_name}.required", f"must be a boolean, got {_json_type(required)}")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise check.fail(f"{field_name}.description", "must be a string")
        arg = ArgumentSpec(kind, required, spec.get("default"), description)
        if arg.default is not None and not arg.accepts(arg.default):
            raise check.fail(f"{field_name}.default", f"must be of type {kind}, got {_json_type(arg.default)}")
        try:  # what the script is given must be JSON: no NaN or Infinity, even nested
            json.dumps(arg.default, allow_nan=False)
        except ValueError:
            raise check.fail(f"{field_name}.default", "must be a JSON value (NaN and Infinity are not)") from None
        specs[name] = arg
    return MappingProxyType(specs)


def _parse_command(check: _Checker, folder: Path) -> tuple[str, ...]:
    command = check.entry.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise check.fail("command", "must be a non-empty array of non-empty strings (an argv list)")
    if any("\0" in a for a in command):  # no program can be given one: each start would fail
        raise check.fail("command", "must not contain a NUL character")
    program = command[0]
    # A program named by a relative path is relative to the registry, not to
    # wherever the runtime happens to be started; a bare name is looked up on PATH.
    if os.sep in program and not os.path.isabs(program):
        program = os.path.normpath(folder / program)
    return (program, *command[1:])


def _parse_retry_backoff(check: _Checker) -> Mapping[str, float]:
    """``{"min": seconds, "max": seconds}``, either may be left to the runtime's setting."""
    raw = check.get("retry_backoff", dict, {}, 'an object {"min": seconds, "max": seconds}')
    unknown = sorted(set(raw) - {"min", "max"})
    if unknown:
        raise check.fail("retry_backoff", f"unknown field(s) {', '.join(unknown)}; use min and max")
    backoff: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise check.fail(f"retry_backoff.{name}", f"must be a number of seconds, got {_json_type(value)}")
        seconds = _finite_seconds(value)
        if seconds is None or not 0 <= seconds <= MAX_TIMEOUT:
            raise check.fail(f"retry_backoff.{name}", f"must be a number of seconds from 0 to {MAX_TIMEOUT} "
                                                     f"(a year), got {_json_type(value)} {value!r}")
        backoff[name] = seconds
    if backoff.get("min", 0.0) > backoff.get("max", math.inf):
        raise check.fail("retry_backoff", f"min ({backoff['min']:g}) must not exceed max ({backoff['max']:g})")
    return MappingProxyType(backoff)


def _positive_int(check: _Checker, name: str, default: int) -> int:
    value: int = check.get(name, int, default, "a positive integer")
    if value <= 0:
        raise check.fail(name, f"must be positive, got {value}")
    return value


def _check_placeholder(check: _Checker, field_name: str, name: str, arguments: Mapping[str, ArgumentSpec],
                       *, scalar: bool) -> None:
    """A template placeholder must name an argument that always has a value a template can hold."""
    spec = arguments.get(name)
    if spec is None:
        raise check.fail(field_name, f"placeholder {{{name}}} names no declared argument "
                                     f"(declared: {', '.join(arguments) or 'none'})")
    if scalar and spec.type in ("object", "array"):
        raise check.fail(field_name, f"placeholder {{{name}}} names an argument of type {spec.type}; "
                                     "use a string, integer, number or boolean")
    if scalar and not spec.required and spec.default is None:
        raise check.fail(field_name, f"placeholder {{{name}}} names an optional argument without a default")


def _no_stray_braces(check: _Checker, field_name: str, rest: str) -> None:
    if "{" in rest or "}" in rest:
        raise check.fail(field_name, "stray '{' or '}'; a placeholder is {name}, name a declared argument")


def _parse_url(check: _Checker, arguments: Mapping[str, ArgumentSpec]) -> str:
    url = check.get("url", str, None, "a string")
    if url is None:
        raise check.fail("url", "missing (an http script needs one)")
    _no_stray_braces(check, "url", ARGUMENT_PLACEHOLDER.sub("", url))
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise check.fail("url", f"not a valid URL: {e}") from e
    # The registry, not a job's arguments, decides which server is called.
    if "{" in parts.scheme + parts.netloc:
        raise check.fail("url", "placeholders may not be in the scheme or host; use them in the path or query")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as e:
        raise check.fail("url", f"not a valid URL: {e}") from e
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise check.fail("url", "must be an absolute http:// or https:// URL with a host")
    for match in ARGUMENT_PLACEHOLDER.finditer(url):
        _check_placeholder(check, "url", match.group(1), arguments, scalar=True)
    return url


def _parse_headers(check: _Checker, arguments: Mapping[str, ArgumentSpec]) -> Mapping[str, str]:
    headers = check.get("headers", dict, {}, "an object of header name -> value")
    for name, value in headers.items():
        field_name = f"headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise check.fail(field_name, "not a valid header name")
        if not isinstance(value, str):
            raise check.fail(field_name, f"must be a string, got {_json_type(value)}")
        if "\r" in value or "\n" in value:
            raise check.fail(field_name, "must not contain a line break")
        _no_stray_braces(check, field_name, HEADER_PLACEHOLDER.sub("", value))
        for match in HEADER_PLACEHOLDER.finditer(value):
            if match.group(2) is not None:
                _check_placeholder(check, field_name, match.group(2), arguments, scalar=True)
    return MappingProxyType(dict(headers))


def _parse_http(check: _Checker, arguments: Mapping[str, ArgumentSpec]) -> dict[str, Any]:
    method = check.get("method", str, "GET", "a string").upper()
    if method not in HTTP_METHODS:
        raise check.fail("method", f"unknown method {method!r}; use one of {', '.join(HTTP_METHODS)}")
    statuses = check.get("success_statuses", list, None, "an array of HTTP status codes")
    if statuses is None:
        statuses = range(200, 300)
    elif not statuses or not all(type(code) is int and 100 <= code <= 599 for code in statuses):
        raise check.fail("success_statuses", "must be a non-empty array of integers from 100 to 599")
    return {"method": method, "url": _parse_url(check, arguments), "headers": _parse_headers(check, arguments),
            "success_statuses": tuple(sorted(set(statuses))), "body_cap": _positive_int(check, "body_cap", DEFAULT_BODY_CAP)}


def _parse_sql(check: _Checker, arguments: Mapping[str, ArgumentSpec]) -> dict[str, Any]:
    query = check.get("query", str, None, "a string")
    if query is None or not query.strip():
        raise check.fail("query", "missing or empty (an sql script needs one)")
    quoted = quoted_spans(query)
    for match in SQL_PLACEHOLDER.finditer(query):
        name = match.group(1)
        if match.group(0) == "%":
            raise check.fail("query", "stray '%': a parameter is %(name)s, a literal % is written %%")
        inside = next((what for start, end, what in quoted if start <= match.start() < end), None)
        if name is not None and inside is not None:
            # psycopg2 writes the value as a quoted literal: inside quotes or a comment,
            # a value could end them and be read as SQL.
            raise check.fail("query", f"parameter %({name})s is inside {inside}; write it bare "
                                      "(psycopg2 quotes the value itself)")
        if name is not None and name not in arguments:
            raise check.fail("query", f"parameter %({name})s names no declared argument "
                                      f"(declared: {', '.join(arguments) or 'none'})")
    pool = check.get("pool", str, "default", "a string")
    if not pool.strip():
        raise check.fail("pool", "must be a non-empty pool name")
    return {"query": query, "pool": pool, "readonly": check.get("readonly", bool, True, "a boolean"),
            "max_rows": _positive_int(check, "max_rows", DEFAULT_MAX_ROWS)}


def _parse_python(check: _Checker) -> dict[str, Any]:
    isolation = check.get("isolation", str, "thread", "a string")
    if isolation not in PYTHON_ISOLATIONS:
        raise check.fail("isolation", f"unknown isolation {isolation!r}; use one of {', '.join(PYTHON_ISOLATIONS)}")
    return {"isolation": isolation}


def _parse_kind_options(check: _Checker, kind: str, arguments: Mapping[str, ArgumentSpec]) -> dict[str, Any]:
    """The fields a kind's executor reads, validated, normalised and with their defaults filled in."""
    if kind == "http":
        return _parse_http(check, arguments)
    if kind == "sql":
        return _parse_sql(check, arguments)
    if kind == "python":
        return _parse_python(check)
    return {}


def _parse_script(path: Path, folder: Path, position: int, entry: Any) -> Script:
    where = f"script #{position + 1}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{path}: {where}: must be an object, got {_json_type(entry)}")
    if "id" not in entry:
        raise RegistryError(f"{path}: {where}, field 'id': missing")
    script_id = entry["id"]
    if not isinstance(script_id, str) or not script_id.strip():
        raise RegistryError(f"{path}: {where}, field 'id': must be a non-empty string")
    check = _Checker(path, f"script {script_id!r} (#{position + 1})", entry)
    kind = check.get("kind", str, "command", "a string")
    if kind not in _KINDS:
        raise check.fail("kind", f"unknown kind {kind!r}; use one of {', '.join(_KINDS)}")
    command = _parse_command(check, folder) if kind == "command" else ()
    timeout = check.get("timeout", (int, float), 60.0, "a number of seconds")
    seconds = _finite_seconds(timeout)
    if seconds is None:
        # Python's json reads NaN and Infinity (and integers beyond any float): none is a deadline.
        shown = json.dumps(timeout) if isinstance(timeout, float) else "an integer too large"
        raise check.fail("timeout", f"must be a finite number of seconds, got {shown}")
    if seconds <= 0:
        raise check.fail("timeout", f"must be positive, got {timeout}")
    if seconds > MAX_TIMEOUT:  # beyond what threading's waits accept
        raise check.fail("timeout", f"must be at most {MAX_TIMEOUT} seconds (a year), got {timeout}")
    if kind == "sql" and seconds > MAX_SQL_TIMEOUT:  # the query runs under statement_timeout
        raise check.fail("timeout", f"must be at most {MAX_SQL_TIMEOUT} seconds for an sql script "
                                    f"(PostgreSQL's longest statement_timeout), got {timeout}")
    max_retries = check.get("max_retries", int, None, "an integer")
    if max_retries is not None and max_retries < 0:
        raise check.fail("max_retries", f"must be 0 or more, got {max_retries}")
    arguments = _parse_arguments(check)
    known = {"id", "kind", "command", "description", "arguments", "timeout", "max_retries"}
    options = {k: v for k, v in entry.items() if k not in known}
    if "retry_backoff" in entry:
        options["retry_backoff"] = _parse_retry_backoff(check)
    options.update(_parse_kind_options(check, kind, arguments))
    return Script(
        id=script_id,
        kind=kind,
        command=command,
        description=check.get("description", str, "", "a string"),
        arguments=arguments,
        timeout=seconds,
        max_retries=max_retries,
        folder=str(folder),
        options=MappingProxyType(options),
    )


def parse_registry(path: Path, data: bytes | str) -> Registry:
    """Parse and validate registry text.

    Raises:
        RegistryError: invalid JSON (with line and column) or an invalid entry.
    """
    try:
        document = json.loads(data)
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise RegistryError(f"{path}: not UTF-8 text: {e}") from e
    except ValueError as e:  # an integer of thousands of digits
        raise RegistryError(f"{path}: invalid JSON: {e}") from e
    except RecursionError as e:
        raise RegistryError(f"{path}: invalid JSON: nested too deeply") from e
    if not isinstance(document, dict) or not isinstance(document.get("scripts"), list):
        raise RegistryError(f'{path}: must be an object with a "scripts" array')
    scripts: dict[str, Script] = {}
    folder = path.parent.resolve()
    for position, entry in enumerate(document["scripts"]):
        try:
            script = _parse_script(path, folder, position, entry)
        except RegistryError:
            raise
        except (TypeError, ValueError, RecursionError) as e:  # a shape no check foresaw: still this entry's fault
            raise RegistryError(f"{path}: script #{position + 1}: invalid entry: {e!r}") from e
        if script.id in scripts:
            raise RegistryError(f"{path}: script #{position + 1}, field 'id': duplicate id {script.id!r}")
        scripts[script.id] = script
    return Registry(path, scripts)


def load_registry(path: str | os.PathLike[str]) -> Registry:
    """Read and validate the registry file at ``path``.

    Raises:
        RegistryError: the file cannot be read or is invalid.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RegistryError(f"{path}: cannot read the registry: {e.strerror or e}") from e
    return parse_registry(path, data)


class RegistryFile:
    """The registry file for readers other than the cache: parsed again only when the
    file changes; while it is invalid (an edit in progress), the last good version
    ``last_good()`` gives (the cache's), as the cache itself would serve.

    Not thread-safe: one owner (the scheduler's thread).
    """

    def __init__(self, path: str | os.PathLike[str], last_good: Callable[[], bytes | None]) -> None:
        self.path = Path(path)
        self._last_good = last_good
        self._stamp: FileStamp | None = None
        self._registry: Registry | None = None
        self._good_data: bytes | None = None
        self._good: Registry | None = None

    def get(self, script_id: str) -> Script | None:
        """The entry ``script_id`` of the registry in force, or ``None``.

        Raises:
            RegistryError: the file is invalid and no good version was ever read.
        """
        current = stamp(self.path)
        if current is None or current != self._stamp:  # a new version (or none): read it once
            self._stamp = current
            try:
                self._registry = load_registry(self.path)
            except RegistryError:
                self._registry = None
        if self._registry is not None:
            return self._registry.get(script_id)
        data = self._last_good()
        if data is None:
            raise RegistryError(f"{self.path}: invalid, and no good version of it was read yet")
        if data is not self._good_data:
            self._good, self._good_data = parse_registry(self.path, data), data
        assert self._good is not None
        return self._good.get(script_id)
