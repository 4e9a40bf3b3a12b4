"""server/borrowed/verdict.py: the build's internals verdict answers at start only while
everything it was made from holds; otherwise the check runs in full, and finds what changed.

The entries here name a small package made for each test, so a test can change its files as a
pin bump would change MLflow's. ``heavy`` records each import of it in a file: a verdict that
holds answers without importing what it checked (GraphQL, in the server).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys

import pytest

from server.borrowed import internals, verdict

MOD = '''
def checked(alpha, beta):
    return alpha + beta


def fast(x):
    return x
'''

HEAVY = '''
import os
with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as fh:
    fh.write("imported\\n")
SCHEMA = "read only"
'''


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """``vpkg`` on sys.path: ``vpkg.mod`` (a function the safety entry checks) and ``vpkg.heavy``."""
    root = tmp_path / "site"
    (root / "vpkg").mkdir(parents=True)
    (root / "vpkg" / "__init__.py").write_text("")
    (root / "vpkg" / "mod.py").write_text(MOD)
    (root / "vpkg" / "heavy.py").write_text(HEAVY)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewritten file is read again
    yield root / "vpkg"
    for name in [m for m in sys.modules if m == "vpkg" or m.startswith("vpkg.")]:
        del sys.modules[name]


def entries(speed_params=("x",), heavy_value="read only"):
    return (
        internals.Entry("checked call", "safety", "tests", "a safety contract",
                        (internals.Target("vpkg.mod", "checked", params=("alpha", "beta")),
                         internals.Target("vpkg.heavy", "SCHEMA", value=heavy_value))),
        internals.Entry("fast path", "speed", "tests", "a speed contract",
                        (internals.Target("vpkg.mod", "fast", params=speed_params),)),
    )


# the FastAPI-only routes a build records (server/borrowed/native_routes.py), here a stand-in
ROUTES = [["/v1/things", ["POST"]], ["/v1/things/{name}", ["DELETE", "GET"]]]


def write(stamp, checked=None):
    return verdict.write(stamp, checked or entries(), routes=lambda: ROUTES)


def forget_imports(pkg):
    for name in [m for m in sys.modules if m.startswith("vpkg.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    (pkg / "imports.log").unlink(missing_ok=True)


def imported_heavy(pkg) -> bool:
    return (pkg / "imports.log").exists()


def test_a_holding_verdict_answers_without_importing_what_it_checked(pkg, tmp_path):
    stamp = tmp_path / "verdict.json"
    write(stamp)
    forget_imports(pkg)
    del sys.modules["vpkg"]  # nor the parent package: the server reads it before MLflow's Flask app exists
    assert verdict.verify(stamp, entries()) == (set(), ROUTES)
    assert not imported_heavy(pkg) and "vpkg" not in sys.modules
    assert verdict._read(stamp, entries())[1] == ""


def test_without_a_stamp_the_check_runs_in_full(pkg, tmp_path):
    assert verdict.verify(tmp_path / "none.json", entries()) == (set(), None)  # no routes: the app is built
    assert imported_heavy(pkg)


@pytest.mark.parametrize(("file", "source", "refusal"), [
    ("mod.py", MOD.replace("alpha, beta", "alpha, beta, gamma=None"), r"vpkg.mod:checked now takes"),
    ("heavy.py", HEAVY.replace('"read only"', '"reads and writes"'), "SCHEMA is now 'reads and writes'"),
], ids=["a function's parameters", "a constant"])
def test_a_changed_safety_target_stops_the_start_although_the_stamp_said_it_fit(pkg, tmp_path, file, source,
                                                                              refusal):
    stamp = tmp_path / "verdict.json"
    write(stamp)
    forget_imports(pkg)
    (pkg / file).write_text(source)
    with pytest.raises(internals.InternalsChangedError, match=refusal):
        verdict.verify(stamp, entries())
    assert verdict._read(stamp, entries())[1] == f"{pkg / file} changed"


def test_a_speed_entry_off_at_build_stays_off_with_its_warning(pkg, tmp_path, caplog):
    stamp = tmp_path / "verdict.json"
    made = write(stamp, entries(speed_params=("y",)))
    assert set(made["off"]) == {"fast path"}
    forget_imports(pkg)
    with caplog.at_level(logging.WARNING, logger="server.internals"):
        assert verdict.verify(stamp, entries(speed_params=("y",))).off == {"fast path"}
    assert not imported_heavy(pkg)
    assert "fast path switched off" in caplog.text and "vpkg.mod:fast now takes ('x',)" in caplog.text


def test_a_safety_failure_makes_no_verdict(pkg, tmp_path):
    stamp = tmp_path / "verdict.json"
    with pytest.raises(internals.InternalsChangedError):
        write(stamp, entries(heavy_value="writes"))
    assert not stamp.exists()


def test_another_list_of_entries_is_checked_in_full(pkg, tmp_path):
    stamp = tmp_path / "verdict.json"
    write(stamp)
    forget_imports(pkg)
    with pytest.raises(internals.InternalsChangedError):
        verdict.verify(stamp, entries(heavy_value="writes"))  # an entry edited after the build
    assert imported_heavy(pkg)


def test_a_module_found_at_another_place_is_checked_in_full(pkg, tmp_path, monkeypatch):
    stamp = tmp_path / "verdict.json"
    write(stamp)
    forget_imports(pkg)
    del sys.modules["vpkg"]
    other = tmp_path / "other" / "vpkg"  # another copy earlier on the path, as another install would be
    other.mkdir(parents=True)
    for name in ("__init__.py", "mod.py", "heavy.py"):
        (other / name).write_text((pkg / name).read_text())
    monkeypatch.syspath_prepend(str(other.parent))
    importlib.invalidate_caches()
    assert "is now found at" in verdict._read(stamp, entries())[1]
    assert verdict.verify(stamp, entries()) == (set(), None)
    assert (other / "imports.log").exists()


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"format": 99}'])
def test_a_stamp_that_cannot_be_used_is_checked_in_full(pkg, tmp_path, text):
    stamp = tmp_path / "verdict.json"
    stamp.write_text(text)
    assert verdict.verify(stamp, entries()) == (set(), None)
    assert imported_heavy(pkg)


@pytest.mark.parametrize("damage", [{"files": {}, "modules": {}}, {"modules": ["vpkg.mod"]}, {"off": None},
                                    {"native_routes": [["/v1/things", "POST"]]}, {"native_routes": {}},
                                    {"static_prefix": None}],
                         ids=["empty lists", "a list for a mapping", "no verdict", "a route's methods as a string",
                              "a mapping for the routes", "no static prefix"])
def test_a_stamp_without_its_file_list_is_not_trusted(pkg, tmp_path, damage):
    stamp = tmp_path / "verdict.json"
    made = write(stamp)
    stamp.write_text(json.dumps({**made, **damage}))
    forget_imports(pkg)
    assert verdict._read(stamp, entries())[0] is None
    verdict.verify(stamp, entries())
    assert imported_heavy(pkg)


def test_the_routes_are_recorded_for_the_static_prefix_of_the_build(pkg, tmp_path, monkeypatch, caplog):
    """Under another static prefix the FastAPI app is built at start; the rest of the verdict holds."""
    stamp = tmp_path / "verdict.json"
    monkeypatch.delenv(internals.STATIC_PREFIX_ENV_VAR, raising=False)
    assert write(stamp)["static_prefix"] == ""
    forget_imports(pkg)
    monkeypatch.setenv(internals.STATIC_PREFIX_ENV_VAR, "/mlflow")
    with caplog.at_level(logging.INFO, logger="server.internals"):
        assert verdict.verify(stamp, entries()) == (set(), None)
    assert not imported_heavy(pkg)
    assert "the static prefix is not the build's" in caplog.text


def test_a_build_without_routes_records_none(pkg, tmp_path):
    stamp = tmp_path / "verdict.json"
    assert verdict.write(stamp, entries(), routes=None)["native_routes"] is None
    assert verdict.verify(stamp, entries()) == (set(), None)


def test_the_pinned_packages_verdict_is_the_full_checks(tmp_path):
    from server.borrowed.native_routes import mlflow_table

    stamp = tmp_path / "verdict.json"
    made = verdict.write(stamp)
    assert made["off"] == {}
    assert verdict._read(stamp, internals.ENTRIES)[1] == ""
    # the routes recorded are those of MLflow's FastAPI app, and come back as the server reads them
    assert made["native_routes"] == mlflow_table() and len(made["native_routes"]) == 74
    assert verdict.verify(stamp) == (set(), json.loads(json.dumps(mlflow_table())))
    assert any(f.endswith("RECORD") and "mlflow-" in f for f in made["files"])  # another MLflow changes it
    assert set(made["modules"]) == {t.module for e in internals.ENTRIES for t in e.targets}
