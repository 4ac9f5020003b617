"""Secrets kept out of what the pools show: DSNs, error texts and descriptions.

Every DSN shown anywhere goes through ``redact_dsn``; a connection error's text goes
through ``scrub_secrets`` before it is re-raised (``from None``, so the original,
which may quote the password, is not chained).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact_dsn", "scrub_secrets"]

_REDACTED = "***"

#: Parameter names whose values are secrets (``password``, ``sslpassword``,
#: ``token``, ``api_key``, ...). Over-matching (``sslkey`` is a file path) is harmless.
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)

#: A libpq ``key=value`` pair; values may be single-quoted with backslash escapes.
_KEYWORD_PAIR = re.compile(r"(?P<key>[\w.-]+)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*(?:'|\Z)|\S*)", re.DOTALL)

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact_dsn(dsn: str) -> str:
    """A DSN fit to show: passwords and other secret parameters become ``***``.

    Handles both libpq forms: URLs (the password in the user info and secret-named
    query parameters) and ``key=value`` strings (secret-named keys).

    Args:
        dsn: a connection string, possibly holding a password.

    Returns:
        The same string with every secret value replaced by ``***``.
    """
    if _URL_SCHEME.match(dsn):
        return _redact_url(dsn)
    return _redact_keywords(dsn)


def _redact_keywords(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if _SECRET_NAME.search(match["key"]):
            return f"{match['key']}{match['eq']}{_REDACTED}"
        return match[0]

    return _KEYWORD_PAIR.sub(replace, text)


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    # The user info ends at the last '@' before the query: taking the last one
    # (not the first, as libpq does) also hides a password with a raw '@' in it.
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    at = rest.rfind("@", 0, min(ends, default=len(rest)))
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{_REDACTED}{rest[at:]}"
    head, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        query = "&".join(_redact_query_param(param) for param in query.split("&")) + hash_ + fragment
    return f"{scheme}://{head}{question}{query}"


def _redact_query_param(param: str) -> str:
    key, equals, _ = param.partition("=")
    return f"{key}={_REDACTED}" if equals and _SECRET_NAME.search(key) else param


def scrub_secrets(text: str, params: Mapping[str, Any]) -> str:
    """An error text fit to show: one line, the values of secret parameters hidden.

    Args:
        text: the text of an error, e.g. libpq's, which may quote the DSN.
        params: the connection parameters whose secret-named values are hidden.

    Returns:
        The text on one line, with ``***`` for every secret value.
    """
    text = " ".join(text.split())
    for key, value in params.items():
        if value and isinstance(value, str) and _SECRET_NAME.search(key):
            text = text.replace(value, _REDACTED)
    return _redact_keywords(text)
