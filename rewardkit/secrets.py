"""Keeping secrets (a reward server's token) out of what rewardkit writes: ``config.json``, the
trackers, reports and the commands it prints.

A secret is the value of a key named like :data:`SECRET_KEYS` (``token``, ``api_key``,
``password``, ``secret``; case and dashes ignored) anywhere in a nested mapping, or such a key's
value in a command line (``--metric-param remote.token=...``, ``'{"token": "..."}'``). Its
value is replaced by :data:`REDACTED`. ``token_env`` (the *name* of the variable holding the
token) is not a secret and is kept.

The token itself is best given through the environment: :data:`TOKEN_ENV` is where both
``rewardkit serve-reward`` and the ``remote`` reward model look for it by default.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

#: Key names whose values are secrets.
SECRET_KEYS = frozenset({"token", "api_key", "apikey", "password", "secret", "authorization"})
#: What a secret is replaced by.
REDACTED = "<redacted>"
#: The environment variable holding a reward server's token (server and client alike).
TOKEN_ENV = "REWARDKIT_REWARD_TOKEN"

_NAMES = "|".join(sorted(SECRET_KEYS, key=len, reverse=True)).replace("_", "[_-]")
#: ``"token": "..."`` inside JSON text.
_JSON_PAIR = re.compile(rf'("(?:{_NAMES})"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
#: ``token=...`` / ``remote.token=...`` / ``--token=...``, up to whitespace, a comma or a quote.
_ASSIGNMENT = re.compile(rf"((?:^|[\s.,;?&{{(]|--)(?:{_NAMES})=)[^\s,;&'\"}})]*", re.IGNORECASE)
#: ``scheme://user:password@host``.
_USERINFO = re.compile(r"(://[^/\s:@]*:)[^/\s@]*@")


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (``token``, ``API-Key``...)."""
    return isinstance(key, str) and key.lower().replace("-", "_") in SECRET_KEYS


def redact(value: Any) -> Any:
    """A copy of ``value`` (mappings, lists and tuples, nested) with every secret key's value
    replaced by :data:`REDACTED` (an empty or ``None`` value stays as it is); strings are
    redacted as text (:func:`redact_text`)."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """``text`` with secret values of JSON pairs, ``key=value`` assignments (query strings
    included) and the password of a ``scheme://user:password@host`` URL redacted."""
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    if not any(name in text.lower() for name in ("token", "key", "password", "secret",
                                                  "authorization")):
        return text
    text = _JSON_PAIR.sub(rf'\1"{REDACTED}"', text)
    return _ASSIGNMENT.sub(rf"\1{REDACTED}", text)


def redact_command(args: Iterable[str]) -> list[str]:
    """A command line's arguments with secrets redacted: values of ``--token VALUE`` style
    options (the argument after a secret-named option), and secrets inside any argument."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--") and "=" not in arg and is_secret_key(arg[2:]):
            hide_next = True
        out.append(redact_text(arg))
    return out


def token_from_env(variable: str | None = None) -> str | None:
    """The token in environment variable ``variable`` (default :data:`TOKEN_ENV`), or ``None``
    when it is unset or empty."""
    value = os.environ.get(variable or TOKEN_ENV, "")
    return value or None


__all__ = ["REDACTED", "SECRET_KEYS", "TOKEN_ENV", "is_secret_key", "redact", "redact_command",
           "redact_text", "token_from_env"]
