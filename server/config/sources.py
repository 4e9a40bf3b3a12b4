"""Where one setting's raw value comes from: a variable, a ``NAME_FILE`` file, a secrets directory.

The lookup order follows the official Docker images' ``file_env`` convention:

1. ``NAME`` in the environment;
2. the file named by ``NAME_FILE`` (setting both ``NAME`` and ``NAME_FILE`` is an error);
3. a file in the secrets directory (Docker/compose secrets under ``/run/secrets``), named
   ``NAME`` or ``name`` (lower case).

Values are never put into messages: a :class:`SourceError` names the setting and the places
looked at, nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class SourceError(Exception):
    """A setting that exists but cannot be used (unreadable, empty, ambiguous)."""


@dataclass(frozen=True)
class RawValue:
    value: str
    origin: str  # "$NAME", a file path: where the value came from, for messages and reloads
    path: str | None = None  # set when the value came from a file (so it can be re-read)


def strip_trailing_newlines(text: str) -> str:
    # `echo pw > file` and most editors add a newline; libpq then sees "pw\n" and the
    # classic "password authentication failed" follows.
    return text.rstrip("\r\n")


def read_secret_file(path: str, name: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise SourceError(f"{name}: the file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(f"{name}: cannot read the file {path} ({exc.strerror})") from None
    text = strip_trailing_newlines(text)
    if not text.strip():
        raise SourceError(f"{name}: the file {path} is empty")
    return text


def secrets_dir_candidates(name: str, secrets_dir: str) -> list[str]:
    names = dict.fromkeys([name, name.lower()])  # ordered, without duplicates
    return [os.path.join(secrets_dir, n) for n in names]


def places(name: str, secrets_dir: str | None) -> str:
    """Human-readable list of where ``name`` is looked up, for 'not set' messages."""
    looked = [f"${name}", f"${name}_FILE"]
    if secrets_dir:
        looked += secrets_dir_candidates(name, secrets_dir)
    return ", ".join(looked)


def lookup(name: str, environ: dict[str, str], secrets_dir: str | None) -> RawValue | None:
    """Return the raw value of ``name``, or None when it is set nowhere."""
    direct = environ.get(name)
    file_var = f"{name}_FILE"
    file_path = environ.get(file_var)
    if direct is not None and file_path is not None:
        raise SourceError(f"{name}: both ${name} and ${file_var} are set; set only one")
    if direct is not None:
        value = strip_trailing_newlines(direct)
        if not value.strip():
            raise SourceError(f"{name}: ${name} is set but empty")
        return RawValue(value, f"${name}")
    if file_path is not None:
        if not file_path.strip():
            raise SourceError(f"{name}: ${file_var} is set but empty")
        return RawValue(read_secret_file(file_path, name), file_path, file_path)
    if secrets_dir:
        for candidate in secrets_dir_candidates(name, secrets_dir):
            if os.path.isfile(candidate):
                return RawValue(read_secret_file(candidate, name), candidate, candidate)
    return None
