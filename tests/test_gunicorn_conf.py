"""server/gunicorn.conf.py: the garbage-collector hand-over around the fork.

The master loads the settings file with the collector off (cheaper imports); `when_ready`,
which gunicorn calls after preloading the app and before the first fork, must freeze the
heap and turn the collector back on, or every worker would run without one and leak cycles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, runpy
conf = runpy.run_path("server/gunicorn.conf.py")
loaded = gc.isenabled()
import mlflow.server  # what preload_app imports
conf["when_ready"](None)
print(json.dumps({"enabled_after_load": loaded, "enabled_after_ready": gc.isenabled(),
                  "frozen": gc.get_freeze_count(), "thresholds": list(conf["gc_thresholds"]),
                  "preload": conf["preload_app"]}))
"""


def test_collector_is_off_while_loading_and_on_with_a_frozen_heap_before_fork(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WSGI_AUTH"))}
    env.update(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path}/db.sqlite", MLFLOW_AUTH_USERS="alice:Long-enough-passw0rd",
               MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"), MLFLOW_SECRETS_DIR="", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["preload"] is True
    assert state["enabled_after_load"] is False
    assert state["enabled_after_ready"] is True
    assert state["frozen"] > 100_000  # MLflow's modules, not a handful of objects
    assert state["thresholds"][0] > 700  # a larger young generation than Python's default
