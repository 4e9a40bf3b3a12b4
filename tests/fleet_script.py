"""What a team does with the stock client before its judges run, against any tracking server:

    python tests/fleet_script.py judges API_BASE N EXPERIMENT JUDGE... OUT.json
        an AI-gateway endpoint on the OpenAI-compatible API at API_BASE, an LLM judge on it
        registered in EXPERIMENT under each JUDGE name, then N traces
    python tests/fleet_script.py online API_BASE N EXPERIMENT OUT.json
        the same endpoint, one judge on it started for EXPERIMENT at a sample rate of 1 (online
        scoring), then N traces
    python tests/fleet_script.py traces N EXPERIMENT OUT.json
        N more traces

OUT.json gets the experiment id, the trace ids and each judge's serialized form. Trace i
answers "answer i: 7" (``output_of``), so a judge's prompt names the trace it is about.
"""

from __future__ import annotations

import json
import os
import sys

import mlflow
import requests

URI = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
AUTH = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])


def output_of(experiment: str, i: int) -> str:
    return f"answer {i} of {experiment}: 7"


def traces(n: int, experiment: str, first: int = 0) -> list[str]:
    ids = []
    for i in range(first, first + n):
        with mlflow.start_span(name="answer") as span:
            span.set_inputs({"question": f"question {i}"})
            span.set_outputs({"answer": output_of(experiment, i)})
        ids.append(span.trace_id)
    mlflow.flush_trace_async_logging()
    return ids


def gateway(path: str, body: dict) -> dict:
    response = requests.post(f"{URI}/ajax-api/3.0/mlflow/gateway/{path}", json=body, auth=AUTH, timeout=60)
    response.raise_for_status()
    return response.json()


def judge_endpoint(api_base: str, name: str) -> str:
    secret = gateway("secrets/create", {"secret_name": f"{name}-key", "secret_value": {"api_key": "sk-stand-in"},
                                        "provider": "openai", "auth_config": {"api_base": api_base}})
    model = gateway("model-definitions/create", {"name": f"{name}-model", "provider": "openai",
                                                 "secret_id": secret["secret"]["secret_id"],
                                                 "model_name": "gpt-4o-mini"})
    gateway("endpoints/create", {"name": name, "model_configs": [
        {"model_definition_id": model["model_definition"]["model_definition_id"], "linkage_type": "PRIMARY",
         "weight": 1.0}]})
    return f"gateway:/{name}"


def judge(name: str, model: str):
    from mlflow.genai.judges import make_judge

    return make_judge(name=name, instructions=f"As the judge {name}: is the answer in {{{{ outputs }}}} polite? "
                                              "Answer yes or no.", model=model, feedback_value_type=str)


def main(argv: list[str]) -> None:
    mode, out = argv[0], argv[-1]
    if mode == "traces":
        n, experiment = int(argv[1]), argv[2]
        experiment_id = mlflow.set_experiment(experiment).experiment_id
        first = int(os.environ.get("FLEET_FIRST_TRACE", "0"))
        result = {"experiment_id": experiment_id, "trace_ids": traces(n, experiment, first), "scorers": {}}
    else:
        api_base, n, experiment, names = argv[1], int(argv[2]), argv[3], argv[4:-1]
        experiment_id = mlflow.set_experiment(experiment).experiment_id
        model = judge_endpoint(api_base, f"{experiment}-judge")
        if mode == "online":
            from mlflow.genai.scorers import ScorerSamplingConfig

            judge("polite", model).register(experiment_id=experiment_id).start(
                experiment_id=experiment_id, sampling_config=ScorerSamplingConfig(sample_rate=1.0))
        for name in names:
            judge(name, model).register(experiment_id=experiment_id)
        listed = requests.get(f"{URI}/api/3.0/mlflow/scorers/list", params={"experiment_id": experiment_id},
                              auth=AUTH, timeout=60).json()
        result = {"experiment_id": experiment_id, "trace_ids": traces(n, experiment),
                  "scorers": {s["scorer_name"]: s["serialized_scorer"] for s in listed.get("scorers", [])}}
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
