"""A stand-in for gcloud and for curl's calls to Cloud SQL, for the bootstrap's state machine.

It remembers what exists in a JSON state file (``FAKE_GCLOUD_STATE``), refuses to create what
exists (as gcloud does), records every call's arguments, and can fail the Nth call that changes
something (``FAKE_GCLOUD_FAIL_AT``), as a quota error or a lost connection would. Which
commands and flags are valid is not its business: the same command lines also run through the
real gcloud (tests/gcloud_sdk.py). With ``FAKE_GCLOUD_REAL_RUN`` set (the path of
tests/gcloud_sdk.py), ``gcloud run`` commands are carried out by the real gcloud instead, against
a simulated Cloud Run service kept in the state file.

    python fake_gcloud.py gcloud ARGS...     python fake_gcloud.py curl ARGS...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROJECT_NUMBER = "123456789"
STATE_DIR = os.environ["FAKE_GCLOUD_STATE"]
STATE = os.path.join(STATE_DIR, "state.json")
EMPTY = {"created": [], "secrets": {}, "bindings": [], "sql_users": {}, "instance": {}, "providers": {},
         "cleanup_policy": None, "service": None, "changes": 0}


def load() -> dict:
    if os.path.exists(STATE):
        with open(STATE) as f:
            return json.load(f)
    return json.loads(json.dumps(EMPTY))


def save(state: dict) -> None:
    with open(STATE, "w") as f:
        json.dump(state, f)


def record(tool: str, args: list[str], stdin: str | None) -> None:
    with open(os.path.join(STATE_DIR, "calls.jsonl"), "a") as log:
        log.write(json.dumps({"tool": tool, "args": args, "stdin": stdin}) + "\n")


def change(state: dict) -> None:
    """Count a call that changes something; the FAKE_GCLOUD_FAIL_AT-th one fails."""
    state["changes"] += 1
    save(state)
    if str(state["changes"]) == os.environ.get("FAKE_GCLOUD_FAIL_AT"):
        sys.stderr.write("ERROR: (gcloud) injected failure\n")
        sys.exit(1)


def flag(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def gcloud(args: list[str], stdin: str | None) -> int:
    state = load()
    project = flag(args, "--project")
    words = list(args)  # without the common --project VALUE and --quiet
    if "--project" in words:
        at = words.index("--project")
        del words[at:at + 2]
    words = [w for w in words if w != "--quiet"]
    verbs = {"describe", "create", "create-oidc", "update-oidc", "add", "access", "patch", "deploy", "update",
             "enable", "add-iam-policy-binding", "set-cleanup-policies", "print-access-token",
             "update-traffic"}
    at = next(i for i, w in enumerate(words) if w in verbs)
    verb = words[at]
    group = " ".join(w for w in words[:at] if not w.startswith("-"))
    name = words[at + 1] if at + 1 < len(words) else ""
    if group == "iap web":  # the resource is named by flags
        name = f"{flag(words, '--resource-type')}/{flag(words, '--service')}"
    if group == "iam service-accounts" and verb != "add-iam-policy-binding" and "@" not in name:
        name = f"{name}@{project}.iam.gserviceaccount.com"
    key = f"{group} {name}"

    if verb == "print-access-token":
        print("fake-access-token")
        return 0
    if group == "secrets versions":
        secret = flag(words, "--secret") or name
        versions = state["secrets"].get(secret, [])
        if verb == "describe":
            return 0 if versions else 1
        if verb == "access":
            if not versions:
                return 1
            sys.stdout.write(versions[-1])
            return 0
        if verb == "add":
            if f"secrets {secret}" not in state["created"]:
                return 1
            change(state)
            state["secrets"].setdefault(secret, []).append(stdin)
            save(state)
            return 0
    if group in ("run services", "run") and os.environ.get("FAKE_GCLOUD_REAL_RUN"):
        return real_run(state, args)
    if group in ("run services", "run"):
        service = state["service"]
        if verb == "describe":
            return 0 if service else 1
        change(state)
        if verb == "deploy":
            state["service"] = service or {}
        elif not service:
            return 1
        if "--no-invoker-iam-check" in words:
            state["service"]["invoker_iam_disabled"] = True
        if "--iap" in words:
            state["service"]["iap_enabled"] = True
        save(state)
        return 0
    if verb == "describe":
        if key not in state["created"]:
            return 1
        if group == "sql instances" and flag(words, "--format"):
            flags = state["instance"]
            print(f"{flags.get('deletion_protection', False)}\t{flags.get('pitr', False)}")
        elif group == "iam workload-identity-pools" and flag(words, "--format"):
            print(f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/{name}")
        return 0
    if verb in ("create", "create-oidc"):
        if key in state["created"]:
            sys.stderr.write(f"ERROR: {key} already exists\n")
            return 1
        change(state)
        state["created"].append(key)
        if group == "sql instances":
            state["instance"] = {"deletion_protection": "--deletion-protection" in words,
                                 "pitr": "--enable-point-in-time-recovery" in words}
    if verb in ("create-oidc", "update-oidc"):
        if verb == "update-oidc":
            if key not in state["created"]:
                return 1
            change(state)
        state["providers"][name] = {"condition": flag(words, "--attribute-condition"),
                                    "mapping": flag(words, "--attribute-mapping")}
    if verb == "patch":
        change(state)
        state["instance"] = {"deletion_protection": "--deletion-protection" in words,
                             "pitr": "--enable-point-in-time-recovery" in words}
    if verb == "enable":
        change(state)
    if verb == "set-cleanup-policies":
        policy = json.loads(stdin)
        change(state)
        state["cleanup_policy"] = policy
    if verb == "add-iam-policy-binding":
        change(state)
        binding = [key, flag(words, "--member"), flag(words, "--role")]
        if binding not in state["bindings"]:
            state["bindings"].append(binding)
    save(state)
    return 0


def real_run(state: dict, args: list[str]) -> int:
    """A ``gcloud run`` command carried out by the real gcloud against the simulated service."""
    request = {"mode": "run", "commands": [args], "service": state.get("run_service"),
               "host": os.environ["FAKE_RUN_HOST"]}
    answer_path = os.path.join(STATE_DIR, "run-answer.json")
    subprocess.run([sys.executable, os.environ["FAKE_GCLOUD_REAL_RUN"], answer_path], input=json.dumps(request),
                   text=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(answer_path) as f:
        [answer] = json.load(f)
    if answer["sent"]:
        state["run_service"] = answer["stored"]
        state.setdefault("sent", []).append({"argv": args, "verb": answer["sent"], "service": answer["service"]})
        save(state)
        return 0
    sys.stdout.write(answer["stdout"])
    if answer["code"]:
        sys.stderr.write(answer["error"] + "\n")
    return answer["code"]


def curl(args: list[str], stdin: str) -> int:
    """Cloud SQL's users API, as the bootstrap calls it: curl --config - (the request on stdin)."""
    config = {}
    for line in stdin.splitlines():
        option, _, value = line.partition(" = ")
        config.setdefault(option, []).append(json.loads(value))  # curl's quoted strings are JSON strings here
    state = load()
    body = json.loads(config["data"][0])
    users = state["sql_users"]
    method = config["request"][0]
    if (method == "POST") == (body["name"] in users):
        print(json.dumps({"error": {"code": 409 if method == "POST" else 404}}))
        return 22
    change(state)
    users[body["name"]] = body["password"]
    if method == "POST":
        state["created"].append(f"sql users {body['name']}")
    save(state)
    print(json.dumps({"kind": "sql#operation", "status": "PENDING"}))
    return 0


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    reads_stdin = tool == "curl" or "--data-file=-" in args or "/dev/stdin" in args
    stdin = sys.stdin.read() if reads_stdin else None
    record(tool, args, stdin)
    return gcloud(args, stdin) if tool == "gcloud" else curl(args, stdin)


if __name__ == "__main__":
    sys.exit(main())
