"""Our own indexes on MLflow's tables (server/borrowed/own_indexes.py), on a real PostgreSQL with
MLflow's own store: built once by the migration step, rebuilt when a cut-off build left them
invalid, used by the planner for the queries MLflow sends, and changing no result."""

from __future__ import annotations

import pytest
import sqlalchemy

from bench.scale_data import seed
from server.borrowed import migrate, own_indexes, planner_settings, runs_by_metric
from server.config import normalize_backend_uri
from tests.services import statements

NAMES = {index.name for index in own_indexes.INDEXES}


@pytest.fixture(scope="module")
def seeded(postgres):
    """A migrated database with experiments of 2,000 and 30,000 runs, and one of 20,000 traces: the
    runs searched are a small part of the table, where an index is the plan that wins."""
    uri = normalize_backend_uri(postgres.create_database("own_indexes"))
    assert migrate.ensure_schema(uri) == "created"
    ids = seed(postgres.dsn("own_indexes"), "mlflow-artifacts:/", run_sizes=(2_000, 30_000), history_sizes=(),
               trace_sizes=(20_000,), experiments=0, say=lambda _: None)
    engine = sqlalchemy.create_engine(uri)
    yield uri, engine, ids
    engine.dispose()


def index_state(engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return own_indexes.state(conn)


def mlflow_store(uri: str):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(uri, "mlflow-artifacts:/")


def plan_of(engine, statement: str, parameters) -> str:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("EXPLAIN " + statement, parameters)
            return "\n".join(r[0] for r in cur.fetchall())
    finally:
        raw.close()


def test_the_migration_step_builds_them_once(seeded):
    uri, engine, _ = seeded
    assert index_state(engine) == {name: True for name in NAMES}
    assert own_indexes.create(engine) == []  # a second start finds them
    assert migrate.ensure_schema(uri) == "current"
    assert index_state(engine) == {name: True for name in NAMES}


def test_an_index_left_invalid_is_built_again(seeded):
    """A concurrent build cut off by a stopped instance leaves an invalid index, which the planner
    never uses: the next start drops and builds it."""
    _, engine, _ = seeded
    name = own_indexes.INDEXES[0].name
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = CAST(:n AS regclass)"),
                     {"n": name})
    assert index_state(engine)[name] is False
    assert own_indexes.create(engine) == [name]
    assert index_state(engine) == {n: True for n in NAMES}


# For the runs, either index of ours (which one the planner takes depends on the experiment's size;
# at 2,000 runs the sort is cheap, bench/scale.py shows the large ones).
RUNS_INDEX = "mlflow_server_runs_experiment_start_time"
QUERIES = {
    # the UI's runs table: a page of 100 ordered by start time
    "runs, start time order": (RUNS_INDEX,
                               lambda store, ids: store.search_runs(
                                   [str(ids["runs"][2_000])], "", 1, max_results=100,
                                   order_by=["attributes.start_time DESC"])),
    # the client's search_runs with no order_by
    "runs, default order": (RUNS_INDEX,
                            lambda store, ids: store.search_runs([str(ids["runs"][2_000])], "", 1, max_results=100)),
    "runs, filtered": (RUNS_INDEX,
                       lambda store, ids: store.search_runs(
                           [str(ids["runs"][2_000])], "metrics.m1 > 0.5 and params.p1 = '7'", 1, max_results=100,
                           order_by=["attributes.start_time DESC"])),
    # the UI's runs table sorted by a metric column, as runs_by_metric asks it (a page of 101 runs of
    # an experiment holding most runs: the walk is taken)
    "runs, metric order": ("mlflow_server_latest_metrics_key_value",
                           lambda store, ids: runs_by_metric.search_runs(
                               store, [str(ids["runs"][30_000])], "", 1, 100, ["metrics.m1 DESC"], None)[0]),
    "traces, span name": ("mlflow_server_spans_experiment_name",
                          lambda store, ids: store.search_traces(
                              locations=[str(ids["traces"][20_000])], filter_string="span.name = 'retrieve'",
                              max_results=100)),
}


def result_of(store, ids, query) -> list:
    found = query(store, ids)
    if isinstance(found, tuple):  # search_traces: (trace infos, token)
        return [t.to_proto().SerializeToString(deterministic=True) for t in found[0]]
    return [r.to_proto().SerializeToString(deterministic=True) for r in found]


@pytest.mark.parametrize("name", list(QUERIES))
def test_the_planner_uses_them_and_no_result_changes(seeded, name):
    uri, engine, ids = seeded
    index, query = QUERIES[name]
    store = mlflow_store(uri)
    with statements(store.engine) as sent:
        with_indexes = result_of(store, ids, query)
    main = [(s, p) for s, p in sent if " LIMIT " in s and ("FROM runs" in s or "FROM trace_info" in s)]
    assert main, [s[:200] for s, _ in sent]
    plans = [plan_of(engine, s, p) for s, p in main]
    assert any(index in plan for plan in plans), "\n\n".join(plans)
    assert with_indexes

    # the same query without our indexes: the same rows in the same order
    with engine.begin() as conn:
        for n in NAMES:
            conn.execute(sqlalchemy.text(f"DROP INDEX {n}"))
    try:
        assert result_of(store, ids, query) == with_indexes
    finally:
        own_indexes.create(engine)
    assert index_state(engine) == {n: True for n in NAMES}


def test_a_user_who_may_not_build_them_still_starts(seeded, postgres, caplog):
    """A database user that does not own MLflow's tables cannot create indexes on them: the
    server starts anyway (speed only), and the log says what the owner can run."""
    _, engine, _ = seeded
    name = own_indexes.INDEXES[-1].name
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP INDEX {name}"))
        conn.execute(sqlalchemy.text("DROP ROLE IF EXISTS mlflow_reader"))
        conn.execute(sqlalchemy.text("CREATE ROLE mlflow_reader LOGIN PASSWORD 'reader-pw-123'"))
        conn.execute(sqlalchemy.text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO mlflow_reader"))
    reader = sqlalchemy.create_engine(
        f"postgresql+psycopg2://mlflow_reader:reader-pw-123@127.0.0.1:{postgres.port}/own_indexes")
    try:
        with caplog.at_level("WARNING", logger="server.own_indexes"):
            assert own_indexes.create(reader) == []
    finally:
        reader.dispose()
    assert f"index {name} not built" in caplog.text
    assert "must be owner" in caplog.text
    assert own_indexes.create(engine) == [name]  # the owner builds it


def test_sqlite_gets_none(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'local.db'}")
    assert own_indexes.create(engine) == []


# ---------------------------------------------------------------- planner settings (server/borrowed/planner_settings.py)

def random_page_cost(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SHOW random_page_cost")).scalar()


def test_the_servers_connections_plan_a_span_filter_from_the_matching_spans(seeded):
    """With PostgreSQL's default costs the span-name filter scans every trace of the experiment;
    on the server's connections it reads the matching spans from our index and fetches their
    traces by key, and returns the same traces."""
    uri, engine, ids = seeded
    _, query = QUERIES["traces, span name"]
    store = mlflow_store(uri)
    with statements(store.engine) as sent:
        default_costs = result_of(store, ids, query)
    statement, params = next((s, p) for s, p in sent if " LIMIT " in s and "FROM trace_info" in s)
    assert "Seq Scan on trace_info" in plan_of(engine, statement, params)

    planned = sqlalchemy.create_engine(uri)
    planner_settings.install([planned])
    try:
        assert random_page_cost(planned) == planner_settings.RANDOM_PAGE_COST
        plan = plan_of(planned, statement, params)
        assert "Seq Scan on trace_info" not in plan and "trace_info_pk" in plan, plan
        store.engine.dispose()
        planner_settings.install([store.engine])
        assert result_of(store, ids, query) == default_costs
    finally:
        planned.dispose()


def test_a_value_the_operator_set_is_kept(seeded):
    uri, engine, _ = seeded
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("ALTER DATABASE own_indexes SET random_page_cost = 2.5"))
    planned = sqlalchemy.create_engine(uri)
    planner_settings.install([planned])
    try:
        assert random_page_cost(planned) == "2.5"
    finally:
        planned.dispose()
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("ALTER DATABASE own_indexes RESET random_page_cost"))
