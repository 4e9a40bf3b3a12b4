"""A runs page ordered by one metric, read from an index instead of sorting the experiment.

The UI's runs table sorted by a metric column asks ``search_runs`` for ``order_by=["metrics.`m`
DESC"]``. MLflow's query (``SqlAlchemyStore._search_runs`` with ``_get_orderby_clauses``) outer-joins
every run of the experiment to that metric's latest value, orders by ``CASE`` (a number, NaN,
missing), the value, ``start_time DESC``, ``run_uuid`` under ``SELECT DISTINCT``, and so sorts the
whole experiment for every page: 1.3-1.8 s at 500k runs, the same on stock and here.

The same order is three ranges read one after the other: runs whose value is a number, by value;
then runs whose value is NaN; then runs without the metric, by start time. Each range is a query
with its own ``ORDER BY ... LIMIT``, which PostgreSQL serves by walking our index on
``latest_metrics (key, is_nan, value)`` (``own_indexes.py``) and keeping the experiment's runs, so
a page costs about its size, not the experiment's. A later range is read only when the earlier
ones end inside the page; a page that starts past a range's end counts that range once. The
page's runs are then loaded and answered exactly as MLflow does (the same entities, inputs,
outputs and page token, through ``run_pages``), in that order. The ranges never overlap and each
run is in one of them once, so MLflow's ``DISTINCT`` has nothing to remove: the rows and their
order are MLflow's.

The walk passes the key's values of every experiment; it pays when the experiment holds a good
share of the runs (``worth_walking``: at most ``WALK_BUDGET`` values passed for a page). A small
experiment, a deep page, a filter (which thins the walk by an unknown share), several ``order_by``
clauses or one that is not a metric, other databases, no ``max_results``, and any request MLflow's
parsing rejects keep MLflow's path (``run_pages.search_runs``), where the sort is small or the same
as before.

Pinned to MLflow 3.17 (``_search_runs``, ``_get_orderby_clauses``); listed in internals.py;
``tests/test_runs_by_metric.py`` compares every page with MLflow's own path on one database.
"""

from __future__ import annotations

import math

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.store.db.db_types import POSTGRES
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun
from mlflow.store.tracking.sqlalchemy_store import (
    SqlAlchemyStore,
    _parse_experiment_ids,
)
from mlflow.utils.search_utils import SearchUtils
from sqlalchemy import exists, false, func, select, text, true

from server.borrowed.run_pages import answered_page, run_entities
from server.borrowed.run_pages import search_runs as search_runs_from_rows  # MLflow's path, runs made from rows


def metric_order(order_by) -> tuple[str, bool] | None:
    """(metric key, ascending) when ``order_by`` is exactly one metric clause; else None."""
    if not order_by or len(order_by) != 1:
        return None
    try:
        key_type, key, ascending = SearchUtils.parse_order_by_for_search_runs(order_by[0])
    except MlflowException:  # MLflow's path raises its own error for it
        return None
    if not SearchUtils.is_metric(key_type, "="):
        return None
    return SearchUtils.translate_key_alias(key), ascending  # as MLflow does, metrics included


def page_plan(counts_or_rows, offset: int, need: int):
    """Which slice of each range a page takes, given what each range holds.

    ``counts_or_rows`` is called with (range index, offset, limit) and returns the rows of that
    slice; when it returns none while ``offset`` > 0, it is called with limit None to count the
    range. Yields the rows of the page in order, at most ``need`` of them.
    """
    for part in range(3):
        if need <= 0:
            return
        rows = counts_or_rows(part, offset, need)
        if rows:
            yield from rows
            need -= len(rows)
            offset = 0
        elif offset > 0:
            offset = max(0, offset - counts_or_rows(part, 0, None))


WALK_BUDGET = 5_000  # latest values a page may walk past; beyond that MLflow's sort is as cheap


def worth_walking(need: int, experiment_runs: int, all_runs: float) -> bool:
    """Whether walking the key's values in order finds ``need`` runs of the experiments within
    ``WALK_BUDGET`` values: it meets one of them every ``all_runs / experiment_runs`` values."""
    return all_runs > 0 and experiment_runs * WALK_BUDGET >= need * all_runs


def _walk_is_cheaper(session, experiment_ids, need: int) -> bool:
    # the planner's own row count of runs (kept by ANALYZE) and a count of the experiments' runs
    # that stops at the threshold, read from our runs index: a few ms at most
    all_runs = session.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'runs'::regclass")).scalar()
    if not all_runs or all_runs <= 0:
        return False
    threshold = math.ceil(need * all_runs / WALK_BUDGET)
    first = select(SqlRun.run_uuid).where(SqlRun.experiment_id.in_(experiment_ids)).limit(threshold).subquery()
    found = session.execute(select(func.count()).select_from(first)).scalar_one()
    return worth_walking(need, found, all_runs)


def _ranges(experiment_ids, stages, key: str, ascending: bool):
    """The three queries of run ids (numbers, NaN, missing), each in MLflow's order."""
    base = select(SqlRun.run_uuid).where(SqlRun.experiment_id.in_(experiment_ids), SqlRun.lifecycle_stage.in_(stages))
    value = SqlLatestMetric.value if ascending else SqlLatestMetric.value.desc()
    with_metric = base.join(SqlLatestMetric, (SqlLatestMetric.run_uuid == SqlRun.run_uuid)
                            & (SqlLatestMetric.key == key))
    tail = (SqlRun.start_time.desc(), SqlRun.run_uuid)
    missing = ~exists().where(SqlLatestMetric.run_uuid == SqlRun.run_uuid, SqlLatestMetric.key == key)
    return (with_metric.where(SqlLatestMetric.is_nan == false()).order_by(value, *tail),
            with_metric.where(SqlLatestMetric.is_nan == true()).order_by(value, *tail),
            base.where(missing).order_by(*tail))


def search_runs(self: SqlAlchemyStore, experiment_ids, filter_string, run_view_type, max_results, order_by,
                page_token):
    order = metric_order(order_by)
    if order is None or max_results is None or filter_string or self.db_type != POSTGRES:
        return search_runs_from_rows(self, experiment_ids, filter_string, run_view_type, max_results, order_by,
                                     page_token)
    self._validate_max_results_param(max_results, allow_null=True)
    stages = set(LifecycleStage.view_type_to_stages(run_view_type))
    with self.ManagedSessionMaker() as session:
        # one snapshot for every range: a value that changes meanwhile cannot move a run from one
        # range to another between two reads (twice on a page, or on none)
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        ids = self._filter_experiment_ids(session, _parse_experiment_ids(experiment_ids))
        walk = bool(ids) and _walk_is_cheaper(session, ids, offset + max_results + 1)
        if walk:
            return _walked_page(self, session, _ranges(ids, stages, *order), offset, max_results)
    return search_runs_from_rows(self, experiment_ids, filter_string, run_view_type, max_results, order_by,
                                 page_token)


def _walked_page(self: SqlAlchemyStore, session, ranges, offset: int, max_results: int):
    """The page's runs from the ranges, answered as MLflow's _search_runs answers them."""
    def read(part: int, start: int, limit: int | None):
        if limit is None:
            return session.execute(select(func.count()).select_from(ranges[part].subquery())).scalar_one()
        return session.execute(ranges[part].offset(start).limit(limit)).scalars().all()

    page_ids = list(page_plan(read, offset, max_results + 1))
    loaded = session.execute(select(SqlRun).where(SqlRun.run_uuid.in_(page_ids))).scalars().all()
    by_id = {run.run_uuid: run for run in loaded}
    return answered_page(self, session, run_entities(session, [by_id[run_id] for run_id in page_ids]), offset,
                         max_results)


def install() -> None:
    """Use the index-driven path for every tracking store of this process."""
    SqlAlchemyStore._search_runs = search_runs
