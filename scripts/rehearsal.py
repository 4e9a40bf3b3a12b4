"""The MLflow upgrade rehearsal's two halves (scripts/try-mlflow.sh runs them):

``snapshot``  run inside a venv, with the repository on PYTHONPATH: what our server borrows
              from the installed MLflow (every target of server/borrowed/internals.py with its
              source and any problem), the routes with the level route_access gives each, the
              database migrations, and what each MLflow distribution requires. Prints JSON.
``report``    compares the pinned snapshot with the candidate's and reads the test results
              (JUnit XML): one Markdown report. Exit 0 when nothing is to re-read, 1 otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

PACKAGES = ("mlflow", "mlflow-skinny", "mlflow-tracing", "gunicorn", "protobuf", "fastapi", "huey", "werkzeug")
DISTRIBUTIONS = ("mlflow", "mlflow-skinny", "mlflow-tracing")
DIFF_LINES = 150  # per target; a longer diff says how many lines it left out


# ---------------------------------------------------------------- snapshot (inside the venv)


def _source(target) -> str | None:
    import inspect

    try:
        obj = target.resolve()
    except (ImportError, AttributeError):
        return None
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or inspect.ismodule(obj):
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            return None
    if isinstance(obj, (str, int, float, bool, type(None), tuple, frozenset)):
        return repr(obj)  # a constant
    return f"<an instance of {type(obj).__module__}.{type(obj).__qualname__}>"  # its repr holds an address


def _internals() -> dict:
    from server.borrowed import internals

    return {entry.name: {"kind": entry.kind, "used_by": entry.used_by, "why": entry.why,
                         "problems": entry.problems(),
                         "sources": {target.name: _source(target) for target in entry.targets}}
            for entry in internals.ENTRIES}


def _routes() -> dict[str, str]:
    """``"METHOD path"`` of every route the app serves -> the level the table gives it."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.fastapi_app import create_fastapi_app

    from server.borrowed.native_routes import leaves, native_routes
    from server.gate.route_access import PREPARED, TABLE, _declared, route_key

    served = [(path, getattr(route, "methods", None))
              for path, route in leaves(native_routes(create_fastapi_app(mlflow_app)))]
    served += [(rule.rule, rule.methods) for rule in mlflow_app.url_map.iter_rules()]
    routes = {}
    for path, methods in served:
        for method in _declared(methods):
            key = (method, route_key(path))
            level = TABLE.get(key) or (f"{PREPARED[key]} (prepared)" if key in PREPARED else "write (not in the table)")
            routes[f"{method} {path}"] = level
    return routes


def _migrations() -> list[str]:
    import mlflow.store.db_migrations

    folder = Path(mlflow.store.db_migrations.__file__).parent / "versions"
    return sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")


def _requires() -> dict[str, list[str]]:
    from importlib.metadata import PackageNotFoundError, requires

    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = sorted(requires(name) or [])
        except PackageNotFoundError:
            found[name] = []
    return found


def snapshot() -> dict:
    import logging
    import warnings
    from importlib.metadata import PackageNotFoundError, version

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "internals": _internals(), "routes": _routes(),
            "migrations": _migrations(), "requires": _requires()}


# ---------------------------------------------------------------- report (pure)


def changed_entries(pinned: dict, candidate: dict) -> list[dict]:
    """Entries whose targets moved: problems in the candidate, or a target's source changed."""
    found = []
    for name, now in candidate["internals"].items():
        before = pinned["internals"].get(name, {"sources": {}})
        diffs = {}
        for target, source in now["sources"].items():
            old = before["sources"].get(target)
            if old != source:
                diffs[target] = unified_diff(old, source, target)
        if now["problems"] or diffs:
            found.append({"name": name, "kind": now["kind"], "used_by": now["used_by"],
                          "problems": now["problems"], "diffs": diffs})
    return found


def unified_diff(old: str | None, new: str | None, name: str) -> str:
    if old is None or new is None:
        return f"(the target is {'new' if old is None else 'gone'})"
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"pinned/{name}", f"candidate/{name}",
                                      lineterm=""))
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... {len(lines) - DIFF_LINES} more lines"]
    return "\n".join(lines)


def route_changes(pinned: dict, candidate: dict) -> tuple[dict[str, str], list[str]]:
    """(new routes -> the level they would get, routes gone)."""
    new = {r: level for r, level in candidate["routes"].items() if r not in pinned["routes"]}
    gone = sorted(r for r in pinned["routes"] if r not in candidate["routes"])
    return dict(sorted(new.items())), gone


def requirement_changes(pinned: dict, candidate: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Per distribution: (requirements added, requirements dropped), by their full text."""
    def own(requirement: str) -> bool:  # the twins pin each other at their own version
        return requirement.split(";")[0].split("=")[0].split("<")[0].split(">")[0].strip() in DISTRIBUTIONS

    out = {}
    for name in DISTRIBUTIONS:
        before = {r for r in pinned["requires"].get(name, []) if not own(r)}
        after = {r for r in candidate["requires"].get(name, []) if not own(r)}
        if before != after:
            out[name] = (sorted(after - before), sorted(before - after))
    return out


def test_failures(junit: Path | None) -> tuple[int, list[tuple[str, str]]]:
    """(tests run, [(test, first line of why)]) from a JUnit XML file."""
    if junit is None or not junit.exists():
        return 0, []
    run, failed = 0, []
    for case in ElementTree.parse(junit).iter("testcase"):  # noqa: S314 - our own pytest's output
        run += 1
        for outcome in ("failure", "error"):
            if (node := case.find(outcome)) is not None:
                why = (node.get("message") or node.text or outcome).strip().splitlines()
                failed.append((f"{case.get('classname')}::{case.get('name')}", why[0][:300] if why else outcome))
    return run, failed


def new_conflicts(pinned_check: str, candidate_check: str) -> list[str]:
    """``pip check`` lines of the candidate venv that the pinned venv does not have (our lock
    already overrides some caps on purpose: gunicorn 27 beyond MLflow's ``<27``)."""
    def lines(text: str) -> set[str]:
        return {line.strip() for line in text.splitlines() if "requires" in line or "has requirement" in line}

    def general(line: str) -> str:  # the pinned venv names its own MLflow version
        return line.split(" has requirement ", 1)[-1].split(" requires ", 1)[-1]

    known = {general(line) for line in lines(pinned_check)}
    return sorted(line for line in lines(candidate_check) if general(line) not in known)


def report(pinned: dict, candidate: dict, junit: Path | None, freeze_moves: list[str],
           conflicts: list[str] = ()) -> tuple[str, bool]:
    """(Markdown, whether anything is to re-read)."""
    entries = changed_entries(pinned, candidate)
    new_routes, gone_routes = route_changes(pinned, candidate)
    new_migrations = sorted(set(candidate["migrations"]) - set(pinned["migrations"]))
    gone_migrations = sorted(set(pinned["migrations"]) - set(candidate["migrations"]))
    requirements = requirement_changes(pinned, candidate)
    run, failed = test_failures(junit)
    want, have = pinned["versions"]["mlflow"], candidate["versions"]["mlflow"]
    out = [f"# MLflow {have}: upgrade rehearsal against our pin {want}", ""]
    out += ["| what | count |", "|---|---|",
            f"| internals entries to re-read | {len(entries)} |",
            f"| routes new / gone | {len(new_routes)} / {len(gone_routes)} |",
            f"| migrations new / gone | {len(new_migrations)} / {len(gone_migrations)} |",
            f"| distributions whose requirements changed | {len(requirements)} |",
            f"| packages added to the lock / lock pins it no longer allows | {len(freeze_moves)} / {len(conflicts)} |",
            f"| tests failed / run | {len(failed)} / {run} |", ""]
    versions = [f"{name} {pinned['versions'].get(name)} -> {v}" for name, v in candidate["versions"].items()
                if pinned["versions"].get(name) != v]
    out += ["Versions that differ: " + ("; ".join(versions) or "none"), ""]

    out += ["## Internals entries to re-read (server/borrowed/internals.py)", ""]
    if not entries:
        out += ["None: every target's source is the one our code was written against.", ""]
    for entry in entries:
        out += [f"### {entry['name']} ({entry['kind']}; {entry['used_by']})", ""]
        out += [f"- problem: {p}" for p in entry["problems"]]
        for target, diff in entry["diffs"].items():
            out += [f"- `{target}` changed:", "", "```diff", diff, "```", ""]
        out.append("")

    out += ["## Routes (server/gate/route_access.py)", ""]
    if new_routes:
        out += ["New routes, with the level the table would give them:", "", "| route | level |", "|---|---|"]
        out += [f"| `{route}` | {level} |" for route, level in new_routes.items()] + [""]
    if gone_routes:
        out += ["Routes gone (their table lines are stale):", ""] + [f"- `{r}`" for r in gone_routes] + [""]
    if not new_routes and not gone_routes:
        out += ["No route added or removed.", ""]

    out += ["## Database migrations", ""]
    out += [f"- new: `{m}`" for m in new_migrations] + [f"- gone: `{m}`" for m in gone_migrations]
    out += (["No migration added or removed."] if not new_migrations and not gone_migrations else []) + [""]

    out += ["## Dependencies", ""]
    for name, (added, dropped) in requirements.items():
        out += [f"- {name} now requires: " + ", ".join(f"`{r}`" for r in added)] if added else []
        out += [f"- {name} no longer requires: " + ", ".join(f"`{r}`" for r in dropped)] if dropped else []
    out += [f"- lock pin moved: {move}" for move in freeze_moves]
    out += [f"- a lock pin it does not allow: {line}" for line in conflicts]
    out += (["No requirement changed; every lock pin held."]
            if not requirements and not freeze_moves and not conflicts else []) + [""]

    out += ["## Tests (internals contract, route table, migrations, parity with stock `mlflow server`)", ""]
    if run == 0:
        out += ["The tests did not run (no results).", ""]
    out += [f"- FAILED `{name}`: {why}" for name, why in failed]
    out += ([f"All {run} passed."] if run and not failed else []) + [""]
    something = bool(entries or new_routes or gone_routes or new_migrations or gone_migrations or requirements
                     or freeze_moves or conflicts or failed or run == 0)
    return "\n".join(out), something


def freeze_moves(lock_files: list[Path], freeze: Path) -> list[str]:
    """``name a -> b`` for each pin of the locks the candidate venv holds at another version
    (the MLflow distributions themselves left out), and ``name (new) b`` for an added package."""
    def pins(lines):
        found = {}
        for line in lines:
            line = line.split("#", 1)[0].strip().rstrip("\\").strip()
            if "==" in line and not line.startswith("-"):
                name, version = line.split("==", 1)
                found[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.split(";")[0].strip()  # PEP 503
        return found

    locked = {}
    for lock in lock_files:
        locked.update(pins(lock.read_text().splitlines()))
    installed = pins(freeze.read_text().splitlines())
    moves = []
    for name, version in sorted(installed.items()):
        if name in DISTRIBUTIONS:
            continue
        if name not in locked:
            moves.append(f"{name} (new) {version}")
        elif locked[name] != version:
            moves.append(f"{name} {locked[name]} -> {version}")
    return moves


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("snapshot")
    rep = sub.add_parser("report")
    rep.add_argument("pinned", type=Path)
    rep.add_argument("candidate", type=Path)
    rep.add_argument("--junit", type=Path)
    rep.add_argument("--freeze", type=Path, help="pip freeze of the candidate venv")
    rep.add_argument("--lock", type=Path, action="append", default=[])
    rep.add_argument("--pip-check", type=Path, nargs=2, metavar=("PINNED", "CANDIDATE"),
                     help="pip check's output in each venv")
    rep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        json.dump(snapshot(), sys.stdout, indent=1, sort_keys=True)
        return 0
    moves = freeze_moves(args.lock, args.freeze) if args.freeze else []
    conflicts = new_conflicts(*(p.read_text() for p in args.pip_check)) if args.pip_check else []
    text, something = report(json.loads(args.pinned.read_text()), json.loads(args.candidate.read_text()),
                             args.junit, moves, conflicts)
    args.out.write_text(text + "\n")
    return 1 if something else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
