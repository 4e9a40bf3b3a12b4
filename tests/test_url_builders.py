"""server/borrowed/url_builders.py: a URL built by a builder made on first use is the one
werkzeug's own builder makes, for every route MLflow's server has and for the kinds of rule
werkzeug knows (converters, defaults, extra values as a query string, missing values)."""

from __future__ import annotations

import pytest
from werkzeug.routing import BuildError, Map, Rule

from server.borrowed import internals, url_builders

SAMPLES = {"default": "a b/é", "unicode": "x%y é", "path": "dir/sub dir/file.txt", "integer": 42, "float": 1.5,
           "uuid": "0f8fad5b-d9cb-469f-a165-70867728950e", "any": "b"}


@pytest.fixture
def lazy(monkeypatch):
    monkeypatch.setattr(Rule, "_compile_builder", url_builders._EAGER)  # undone after the test
    assert url_builders.install(True)


def copy_rules(rules) -> list[Rule]:
    return [Rule(r.rule, endpoint=r.endpoint, methods=r.methods, defaults=r.defaults) for r in rules]


def values_for(rule: Rule) -> dict:
    return {name: SAMPLES.get(type(conv).__name__.removesuffix("Converter").lower(), SAMPLES["default"])
            for name, conv in rule._converters.items()}


def every_build(url_map: Map) -> list:
    adapter = url_map.bind("mlflow.example", "/base")
    built = []
    for rule in sorted(url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        values = values_for(rule)
        for extra, append in (({}, True), ({"page_token": "t?&=", "n": [1, 2]}, True), ({"n": 3}, False)):
            for method in sorted(rule.methods or {None}):
                try:
                    built.append(adapter.build(rule.endpoint, {**values, **extra}, method=method,
                                               force_external=bool(extra), append_unknown=append))
                except (BuildError, ValueError) as exc:  # a value a converter refuses: the same error
                    built.append(f"{type(exc).__name__} {exc}")
        if values:  # a value missing: werkzeug's error, or another rule of the endpoint
            try:
                built.append(adapter.build(rule.endpoint, {}))
            except BuildError as exc:
                built.append(f"BuildError {exc}")
    return built


def test_every_route_of_mlflows_server_builds_the_same_url():
    from mlflow.server import app

    eager = every_build(Map(copy_rules(app.url_map.iter_rules())))
    try:
        url_builders.install(True)
        lazy = every_build(Map(copy_rules(app.url_map.iter_rules())))
    finally:
        Rule._compile_builder = url_builders._EAGER
    assert len(eager) > 800
    assert lazy == eager


def test_converters_defaults_and_unknown_values_build_as_werkzeug_builds(lazy):
    rules = [
        Rule("/static", endpoint="static"),
        Rule("/runs/<int:run>", endpoint="run"),
        Rule("/files/<path:name>", endpoint="file"),
        Rule("/x/<uuid:id>/<float:f>", endpoint="typed"),
        Rule("/pages/", defaults={"page": 1}, endpoint="pages"),
        Rule("/pages/<int:page>", endpoint="pages"),
        Rule("/<any(a, b):which>/item", endpoint="choice"),
        Rule("/<any(c, d):which>/other", endpoint="refused"),  # the sample value is not one of them
    ]
    lazy_built = every_build(Map(copy_rules(rules)))
    Rule._compile_builder = url_builders._EAGER
    assert lazy_built == every_build(Map(copy_rules(rules)))
    assert "http://mlflow.example/base/runs/42?page_token=t?%26%3D&n=1&n=2" in lazy_built  # extras as a query


def test_a_builder_is_compiled_once_then_is_werkzeugs(lazy):
    url_map = Map([Rule("/runs/<int:run>", endpoint="run")])
    rule = next(url_map.iter_rules())
    stand_in, other = rule._build_unknown, rule._build
    assert stand_in.__qualname__.startswith("_on_first_use")
    adapter = url_map.bind("h")
    assert adapter.build("run", {"run": 7}) == "/runs/7"  # append_unknown: _build_unknown
    assert rule._build_unknown is not stand_in and not rule._build_unknown.__qualname__.startswith("_on_first_use")
    assert rule._build is other  # the other builder is made only when it is used
    assert adapter.build("run", {"run": 8, "x": 1}) == "/runs/8?x=1"
    assert adapter.build("run", {"run": 9, "x": 1}, append_unknown=False) == "/runs/9"


def test_left_as_werkzeugs_when_its_entry_does_not_fit(monkeypatch):
    monkeypatch.setattr(Rule, "_compile_builder", url_builders._EAGER)
    assert url_builders.install(False) is False
    assert Rule._compile_builder is url_builders._EAGER


def test_its_entry_fits_the_installed_werkzeug():
    entry = next(e for e in internals.ENTRIES if e.name == internals.URL_BUILDERS)
    assert entry.problems() == []
