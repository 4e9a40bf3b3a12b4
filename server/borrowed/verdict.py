"""The start-up check of ``internals.py``, made once where the packages are installed.

``internals.verify()`` imports every module it names and reads their sources: ~0.1-0.15 s of
each cold start, and the only reason GraphQL would be imported before the first ``/graphql``
request. Its verdict depends only on the files it reads, so the image build (``Dockerfile``)
makes it once, from the image's own files, and keeps it beside the packages::

    python -m server.borrowed.verdict        # writes <venv>/mlflow-server-internals.json

which fails (exit 1, the entries named) when a safety entry no longer fits: such an image is
never built. The build also records the routes only MLflow's FastAPI app serves, so a start
that has the record leaves building that app to its first request (``native_routes.py``);
the record is for the static prefix set at the build (none, in the image).

At start ``verify()`` uses that verdict only if everything it was made from is unchanged: the
list of entries, Python, the file each named module is found at, and the content (sha256) of
those files, of the files defining each checked function or class and of the ``RECORD`` of
every distribution they come from (another version installed changes it). Otherwise, or
without a stamp (a development venv), ``internals.verify()`` runs in full and the FastAPI app
is built at start.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from server.borrowed import internals
from server.borrowed.native_routes import Table, mlflow_table

log = logging.getLogger("server.internals")

STAMP = Path(sys.prefix) / "mlflow-server-internals.json"
FORMAT = 2


class Verdict(NamedTuple):
    off: set[str]  # the speed entries left off
    native_routes: Table | None  # the FastAPI-only routes as the build recorded them; None: not known


def verify(stamp: Path = STAMP, entries: tuple[internals.Entry, ...] = internals.ENTRIES) -> Verdict:
    """``internals.verify(entries)``'s answer: from the stamp when it still holds, else computed."""
    recorded, why_not = _read(stamp, entries)
    if recorded is None:
        (log.info if stamp.exists() else log.debug)("MLflow internals checked in full: %s", why_not)
        return Verdict(internals.verify(entries), None)
    log.debug("MLflow internals: the verdict in %s holds", stamp)
    routes = recorded["native_routes"]
    if routes is not None and recorded["static_prefix"] != _static_prefix():
        log.info("MLflow's FastAPI app is built at start: the static prefix is not the build's")
        routes = None
    return Verdict(internals.warn_off(recorded["off"]), routes)


def write(stamp: Path = STAMP, entries: tuple[internals.Entry, ...] = internals.ENTRIES,
          routes: Callable[[], Table] | None = mlflow_table) -> dict:
    """Check every entry in full (``InternalsChangedError`` on a safety failure); keep the verdict,
    with ``routes()``, the FastAPI-only routes (None: none recorded)."""
    off = internals.switched_off(entries)  # raises for a safety entry
    modules = {t.module: _module_file(t.module) for e in entries for t in e.targets}
    files = set(modules.values()) | _defining_files(entries) | _records(modules)
    verdict = {"format": FORMAT, "entries": _entries_digest(entries), "python": sys.version,
               "modules": modules, "files": {f: _sha256(f) for f in sorted(files)}, "off": off,
               "native_routes": routes() if routes else None, "static_prefix": _static_prefix()}
    partial = stamp.with_name(stamp.name + ".tmp")
    partial.write_text(json.dumps(verdict, indent=1, sort_keys=True) + "\n")
    os.replace(partial, stamp)
    return verdict


def _read(stamp: Path, entries) -> tuple[dict | None, str]:
    """(the stamp's verdict, "") when it holds; (None, why) otherwise."""
    try:
        verdict = json.loads(stamp.read_text())
    except FileNotFoundError:
        return None, f"no stamp at {stamp}"
    except (OSError, ValueError) as exc:
        return None, f"{stamp} unreadable ({exc.__class__.__name__})"
    if not isinstance(verdict, dict) or verdict.get("format") != FORMAT:
        return None, f"{stamp} is of another format"
    if verdict.get("entries") != _entries_digest(entries):
        return None, "the list of entries changed since the stamp was made"
    if verdict.get("python") != sys.version:
        return None, "another Python"
    modules, files, off = verdict.get("modules"), verdict.get("files"), verdict.get("off")
    if not (isinstance(modules, dict) and modules and isinstance(files, dict) and files and isinstance(off, dict)
            and isinstance(verdict.get("static_prefix"), str) and _is_table(verdict.get("native_routes", False))):
        return None, f"{stamp} is incomplete"
    for module, path in modules.items():
        try:
            found = _module_file(module)
        except Exception:  # noqa: BLE001 - a finder that fails: the full check reports what is wrong
            found = None
        if found != path:
            return None, f"{module} is now found at {found}"
    for path, digest in files.items():
        try:
            now = _sha256(path)
        except OSError:
            now = None
        if now != digest:
            return None, f"{path} changed"
    return verdict, ""


def _is_table(routes) -> bool:
    """None, or a list of [path, [method, ...]] as ``native_routes.table_of`` makes it."""
    return routes is None or (isinstance(routes, list) and all(
        isinstance(route, list) and len(route) == 2 and isinstance(route[0], str) and isinstance(route[1], list)
        and all(isinstance(method, str) for method in route[1]) for route in routes))


def _static_prefix() -> str:
    return os.environ.get(internals.STATIC_PREFIX_ENV_VAR, "")


def _entries_digest(entries) -> str:
    return hashlib.sha256(repr((internals.WRITTEN_FOR, entries)).encode()).hexdigest()


def _module_file(module: str) -> str | None:
    """The file ``module`` is, or would be, imported from, found as the import system finds it
    (each finder of ``sys.meta_path``, in a loaded parent's ``__path__``) but without importing
    anything: the stamp is read before MLflow's Flask app is imported (``server/app.py``)."""
    parts = module.split(".")
    search = None  # sys.path, for a top-level name
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        found = sys.modules.get(name)
        if found is None:
            found = _spec(name, search)
            if found is None:
                return None
            file, search = found.origin, found.submodule_search_locations
        else:
            file, search = getattr(found, "__file__", None), getattr(found, "__path__", None)
        if depth < len(parts) and search is None:
            return None  # a parent that is not a package
    return file


def _spec(name: str, search):
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and (spec := find_spec(name, search, None)) is not None:
            return spec
    return None


def _defining_files(entries) -> set[str]:
    """Files defining the functions and classes checked, where they are not the named module."""
    found = set()
    for entry in entries:
        for target in entry.targets:
            obj = target.resolve()
            for layer in (obj, inspect.unwrap(obj)) if callable(obj) else (obj,):
                try:
                    found.add(inspect.getsourcefile(layer))
                except TypeError:
                    pass  # a constant or an attribute descriptor: its module's file is kept already
    return found - {None}


def _records(modules: dict[str, str | None]) -> set[str]:
    """The RECORD of each distribution providing one of ``modules``: another version changes it."""
    providers = importlib.metadata.packages_distributions()
    records = set()
    for dist_name in {d for module in modules for d in providers.get(module.split(".")[0], ())}:
        dist = importlib.metadata.distribution(dist_name)
        for file in dist.files or ():
            if file.name == "RECORD":
                records.add(str(dist.locate_file(file)))
    return records


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


if __name__ == "__main__":
    try:
        made = write()
    except internals.InternalsChangedError as exc:
        print(f"MLflow internals: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"MLflow internals verified: {len(made['files'])} files, {len(made['off'])} speed entries off, "
          f"{len(made['native_routes'])} FastAPI-only routes; verdict kept in {STAMP}")
