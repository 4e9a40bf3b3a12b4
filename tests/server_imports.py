"""Import every module the server's code paths load: all of ``mlflow.server`` and what its
routes and jobs import lazily (judges and scorers, issue detection, evaluation, the gateway, the
job functions). Run inside the image by tests/test_container.py; prints one line per failure
and a summary line, and exits 1 if a module outside ``NOT_SERVED`` failed."""

import importlib
import os
import pkgutil
import sys

# Parts of MLflow this server deliberately does not run: MLflow's own basic-auth app (our gate
# replaces it) and the Prometheus exporter (`mlflow server --expose-prometheus`).
NOT_SERVED = {"mlflow.server.auth", "mlflow.server.prometheus_exporter"}
# Entry points of subprocesses: importing them starts work (they are started, not imported).
ENTRY_POINTS = ("_job_runner", "_huey_consumer", "_periodic_tasks_consumer", "_job_subproc_entry",
                "_executor_runner", "_job_env_setup")
LAZY = ["mlflow.genai.scorers", "mlflow.genai.scorers.online", "mlflow.genai.judges", "mlflow.genai.discovery",
        "mlflow.genai.evaluation", "mlflow.genai.optimize", "mlflow.gateway", "mlflow.server.fastapi_app"]


def main() -> int:
    os.environ.setdefault("_MLFLOW_HUEY_STORAGE_PATH", "/tmp")
    failed: dict[str, str] = {}
    server = importlib.import_module("mlflow.server")
    names = ["mlflow.server"] + [m.name for m in pkgutil.walk_packages(
        server.__path__, "mlflow.server.", onerror=lambda n: failed.setdefault(n, "could not be walked"))]
    from mlflow.server.jobs import _SUPPORTED_JOB_FUNCTION_LIST

    names += LAZY + sorted({f.rsplit(".", 1)[0] for f in _SUPPORTED_JOB_FUNCTION_LIST})
    for name in names:
        if name.endswith(ENTRY_POINTS):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]
    for name, why in sorted(failed.items()):
        print(f"{name}: {why}")
    unexpected = sorted(set(failed) - NOT_SERVED)
    print(f"{len(names)} modules, {len(failed)} failed, unexpected: {unexpected}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
