"""Contract tests for server/borrowed/internals.py: what we borrow from MLflow, gunicorn and protobuf.

* every entry fits the installed (pinned) versions;
* the source of every borrowed function and class is the one our code was written against
  (a digest per target in tests/data/internals_digests.json): a pin bump that changes any of
  them fails here and names the entry to re-read; refresh the digests with
  ``UPDATE_INTERNALS_DIGESTS=1 scripts/test.sh tests/test_internals.py`` after re-reading;
* a safety entry whose target changed stops the server; a speed entry switches off.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from importlib.metadata import version

import pytest

from server.borrowed import internals
from tests.services import ROOT

DIGESTS = ROOT / "tests" / "data" / "internals_digests.json"


def _digest(target: internals.Target) -> str | None:
    obj = target.resolve()
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or inspect.ismodule(obj)):
        return None  # a constant: its value is checked by the entry itself
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def current_digests() -> dict[str, str]:
    found = {}
    for entry in internals.ENTRIES:
        for target in entry.targets:
            if (d := _digest(target)) is not None:
                found[f"{entry.name} | {target.name}"] = d
    return found


def test_written_for_the_pinned_versions():
    for package, wanted in internals.WRITTEN_FOR.items():
        assert version(package) == wanted, f"{package} is {version(package)}: re-read server/borrowed/internals.py"


def test_every_entry_fits_the_installed_versions():
    problems = {e.name: e.problems() for e in internals.ENTRIES if e.problems()}
    assert problems == {}
    assert internals.verify() == set()


def test_every_borrowed_source_is_the_one_we_wrote_against():
    now = current_digests()
    if os.environ.get("UPDATE_INTERNALS_DIGESTS") == "1":
        DIGESTS.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(DIGESTS.read_text())
    changed = sorted(k for k in now if pinned.get(k) != now[k])
    assert changed == [], "changed since written (re-read these entries, then refresh the digests)"
    assert sorted(pinned) == sorted(now)


def test_every_patch_module_is_in_the_list():
    # a module of ours that imports MLflow, gunicorn or protobuf internals must have an entry
    used_by = {m for e in internals.ENTRIES for m in e.used_by.split(", ")}
    borrowing = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        text = path.read_text()
        if any(marker in text for marker in ("handlers._", "SqlAlchemyStore._", "from gunicorn", "json_format",
                                              "fastapi_app", "mlflow.server.jobs", "db_utils._")):
            borrowing.append(str(path.relative_to(ROOT)))
    missing = [m for m in borrowing if m not in used_by and m != "server/borrowed/internals.py"]
    assert missing == []


def test_a_changed_safety_target_stops_the_server():
    entry = internals.Entry("demo", "safety", "server/demo.py", "demo",
                            (internals.Target("json", "dumps", params=("obj", "gone")),))
    with pytest.raises(internals.InternalsChangedError) as refused:
        internals.verify((entry,))
    assert "demo (server/demo.py)" in str(refused.value) and "json:dumps now takes" in str(refused.value)


def test_a_missing_safety_target_stops_the_server():
    entry = internals.Entry("demo", "safety", "server/demo.py", "demo",
                            (internals.Target("mlflow.server.handlers", "no_such_function"),))
    with pytest.raises(internals.InternalsChangedError, match="no_such_function is gone"):
        internals.verify((entry,))


def test_a_changed_speed_target_switches_off_with_a_warning(caplog):
    entry = internals.Entry("fast path", "speed", "server/demo.py", "demo",
                            (internals.Target("json", "dumps", value="not a function"),))
    with caplog.at_level(logging.WARNING, logger="server.borrowed.internals"):
        assert internals.verify((entry,)) == {"fast path"}
    assert "fast path switched off" in caplog.text
