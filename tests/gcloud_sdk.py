"""Runs command lines through the real gcloud CLI (Google Cloud SDK 578.0.0, offline).

Run as a script in its own interpreter (the SDK's modules stay out of the test process), with a
JSON request on stdin; the JSON answer goes to the file named by the first argument (gcloud
writes its own progress to the terminal streams):

- ``{"mode": "parse", "commands": [argv | {"argv": argv, "stdin": text}, ...]}``: each command
  (a file argument ``/dev/stdin`` reads the given text) goes through gcloud's
  parser and flag validation up to the point where it would need credentials. The answer gives,
  per command, the exit code and gcloud's error line: a valid command stops at "You do not
  currently have an active account selected" (exit 1), a wrong one at a usage error (exit 2).
- ``{"mode": "run", "commands": [...], "service": null | {...}, "host": "..."}``: each ``gcloud run`` command in
  turn is carried out against a simulated service, up to the HTTP request gcloud would send.
  The service gcloud reads (``GetService``) is the one given (null: none exists), then the one
  the previous command sent, as Cloud Run would store it (generation bumped, the new revision
  ready and serving what the traffic block says, ``host`` the run.app host name it reports). The
  answer gives, per command, what was sent (``create`` or ``replace``), the service message and
  the service as stored; or, for a command that sends nothing, its exit code, error and output.

``GCLOUD_SDK_LIB`` names the SDK's ``lib`` folder (tests/gcp.py finds it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

SDK_LIB = os.environ["GCLOUD_SDK_LIB"]


class Sent(Exception):
    """Raised where gcloud would send its request: carries the request's service message."""

    def __init__(self, verb, service):
        super().__init__(verb)
        self.verb = verb
        self.service = service


def _load_sdk():
    # a fresh, empty configuration: no account, no project, no prompts, nothing reported
    os.environ["CLOUDSDK_CONFIG"] = tempfile.mkdtemp(prefix="gcloud-config-")
    os.environ.update(CLOUDSDK_CORE_DISABLE_PROMPTS="1", CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
                      CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1")
    sys.path[:0] = [SDK_LIB, f"{SDK_LIB}/third_party"]
    import warnings

    warnings.simplefilter("ignore")
    from googlecloudsdk import gcloud_main

    return gcloud_main.CreateCLI([])


def _execute(cli, argv):
    """Run one command line; returns (exit code, gcloud's first error line, what it printed)."""
    code = 0
    captured = {1: tempfile.TemporaryFile(), 2: tempfile.TemporaryFile()}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in captured}
    for fd, file in captured.items():  # gcloud writes to the process's streams, not sys.stdout/err
        os.dup2(file.fileno(), fd)
    try:
        try:
            cli.Execute(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception as error:  # a flag value gcloud's parser could not read
            if isinstance(error, Sent):
                raise
            code = 2
            sys.stderr.write(f"ERROR: {type(error).__name__}: {error}\n")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in captured:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
    printed, errors = (captured[fd].seek(0) or captured[fd].read().decode() for fd in (1, 2))
    lines = [line for line in errors.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("ERROR:")]
    return code, (error_lines or lines or [""])[0], printed


def _with_stdin(argv, stdin):
    """The command line with /dev/stdin replaced by a file that holds what its stdin was."""
    if stdin is None:
        return argv
    file = tempfile.NamedTemporaryFile("w", suffix=".stdin", delete=False)
    file.write(stdin)
    file.close()
    return [file.name if a == "/dev/stdin" else a for a in argv]


def parse(commands):
    cli = _load_sdk()
    out = []
    for command in commands:
        argv = command["argv"] if isinstance(command, dict) else command
        code, first_error, _ = _execute(cli, _with_stdin(argv, command.get("stdin") if isinstance(command, dict) else None))
        out.append({"argv": argv, "code": code, "error": first_error})
    return out


def _as_stored(service, messages, generation, host):
    """The service Cloud Run would return after accepting ``service``: ready, new revision serving."""
    from apitools.base.py import encoding

    stored = encoding.JsonToMessage(messages.Service, encoding.MessageToJson(service))
    stored.metadata.generation = generation
    revision = stored.spec.template.metadata.name or f"{stored.metadata.name}-{generation:05d}-abc"
    stored.spec.template.metadata.name = revision
    if not stored.spec.traffic:  # Cloud Run's default: everything to the latest revision
        stored.spec.traffic = [messages.TrafficTarget(latestRevision=True, percent=100)]
    status = stored.status or messages.ServiceStatus()
    status.latestCreatedRevisionName = status.latestReadyRevisionName = revision
    status.observedGeneration = generation
    status.url = f"https://{host}"
    status.traffic = []
    for target in stored.spec.traffic:
        resolved = encoding.JsonToMessage(messages.TrafficTarget, encoding.MessageToJson(target))
        if resolved.latestRevision:
            resolved.revisionName = revision
        if resolved.tag:
            resolved.url = f"https://{resolved.tag}---{host}"
        status.traffic.append(resolved)
    stored.status = status
    return stored


def run(commands, existing, host):
    os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"] = "offline-test-token"  # credentials without a login
    os.environ["CLOUDSDK_CORE_SHOULD_PROMPT_TO_ENABLE_API"] = "false"  # no Service Usage lookup
    cli = _load_sdk()
    from apitools.base.py import encoding
    from googlecloudsdk.api_lib.run import service as service_lib
    from googlecloudsdk.api_lib.util import apis
    from googlecloudsdk.command_lib.run import serverless_operations
    from googlecloudsdk.generated_clients.apis.run.v1 import run_v1_client

    messages = apis.GetMessagesModule("run", "v1")
    state = {"service": encoding.DictToMessage(existing, messages.Service) if existing else None}

    def get_service(self, ref):
        return service_lib.Service(state["service"], messages) if state["service"] else None

    def create(self, request, global_params=None):
        raise Sent("create", request.service)

    def replace(self, request, global_params=None):
        raise Sent("replace", request.service)

    serverless_operations.ServerlessOperations.GetService = get_service
    run_v1_client.RunV1.NamespacesServicesService.Create = create
    run_v1_client.RunV1.NamespacesServicesService.ReplaceService = replace

    out = []
    for argv in commands:
        try:
            code, first_error, printed = _execute(cli, argv)
        except Sent as sent:
            generation = (state["service"].metadata.generation or 0) + 1 if state["service"] else 1
            state["service"] = _as_stored(sent.service, messages, generation, host)
            out.append({"argv": argv, "sent": sent.verb, "service": encoding.MessageToDict(sent.service),
                        "stored": encoding.MessageToDict(state["service"])})
        else:
            out.append({"argv": argv, "sent": None, "code": code, "error": first_error, "stdout": printed})
    return out


def main():
    answer_path = sys.argv[1]  # read first: gcloud's CLI rewrites sys.argv
    request = json.load(sys.stdin)
    if request["mode"] == "parse":
        answer = parse(request["commands"])
    else:
        answer = run(request["commands"], request.get("service"), request["host"])
    with open(answer_path, "w") as out:
        json.dump(answer, out)


if __name__ == "__main__":
    main()
