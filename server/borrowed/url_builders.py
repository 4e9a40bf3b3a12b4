"""Werkzeug's URL builders made on first use, not for every route at every start.

As each route is added, werkzeug compiles two URL *builders* for it (the code behind
``url_for``), generated from an AST: ~820 functions for MLflow's ~410 routes, ~75 ms of each cold
start, for URLs the server almost never builds. ``install()`` makes ``Rule._compile_builder``
return a stand-in that compiles the real builder the first time it is called and puts it in its
place on the rule, so route matching is untouched and a URL built is the one werkzeug builds.

Written for werkzeug 3.1.9: ``Rule.compile`` binds ``_compile_builder(False)`` and
``_compile_builder(True)`` to the rule as ``_build`` and ``_build_unknown``, which ``Rule.build``
calls with keyword arguments only (``server/borrowed/internals.py``, "URL builders on first use").
Installed before MLflow's Flask app is imported (``server/app.py``); not if that entry is off.
"""

from __future__ import annotations

from werkzeug.routing.rules import Rule

_EAGER = Rule._compile_builder


def install(entry_fits: bool) -> bool:
    """Builders on first use for every rule compiled from now on; False when left as werkzeug's."""
    if entry_fits:
        Rule._compile_builder = _on_first_use
    return entry_fits


def _on_first_use(self: Rule, append_unknown: bool = True):
    name = "_build_unknown" if append_unknown else "_build"

    def build(rule: Rule, **values):
        compiled = _EAGER(rule, append_unknown).__get__(rule, None)
        setattr(rule, name, compiled)  # a second thread may compile it too: the same function
        return compiled(**values)

    return build
