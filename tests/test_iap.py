"""Google sign-in through IAP on a real server: assertions signed by a key the test makes, its
public key served over HTTP on 127.0.0.1 (MLFLOW_IAP_KEYS_URL), roles by email, domain and '*'.
The server also has Basic users, as a team keeps them for training scripts."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests

from tests.conftest import ALICE, USERS_FILE
from tests.iap_tokens import AUDIENCE, KeyServer, SigningKey
from tests.services import Server, wait_for

ROLES = """
[admin]
boss@example.com
[editor]
@ml.example.com
[viewer]
reviewer@example.com
"""
API = "/api/2.0/mlflow"


@pytest.fixture(scope="module")
def iap(workdir, postgres, gcs):
    key = SigningKey("key-1")
    keys = KeyServer(key)
    env = {**gcs.env(), "MLFLOW_IAP_AUDIENCE": AUDIENCE, "MLFLOW_IAP_KEYS_URL": keys.url,
           "MLFLOW_AUTH_MAX_FAILURES": "100000"}
    secrets = {"mlflow_backend_store_uri": postgres.create_database("mlflow_iap"),
               "mlflow_artifacts_destination": f"gs://{gcs.bucket}/iap", "mlflow_auth_users": USERS_FILE,
               "mlflow_iap_roles": ROLES}
    server = Server(workdir / "server-iap", env, secrets).start()
    yield server, key, keys
    server.stop()
    keys.stop()


def as_(server, assertion: str | None, method: str = "GET", path: str = f"{API}/experiments/search",
        **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if assertion is not None:
        headers["x-goog-iap-jwt-assertion"] = assertion
    return requests.request(method, server.url + path, headers=headers, timeout=30,
                            params={"max_results": 5} if method == "GET" else None, **kwargs)


def create(server, assertion, **kwargs) -> requests.Response:
    return as_(server, assertion, "POST", f"{API}/experiments/create",
               json={"name": f"iap-{uuid.uuid4().hex[:8]}"}, **kwargs)


def test_roles_by_email_and_by_domain(iap):
    server, key, _ = iap
    reviewer = key.sign("reviewer@example.com")
    assert as_(server, reviewer).status_code == 200
    refused = create(server, reviewer)
    assert refused.status_code == 403 and "role 'viewer'" in refused.json()["message"]
    assert create(server, key.sign("someone@ml.example.com")).status_code == 200  # domain: editor
    made = create(server, key.sign("Boss@Example.com"))  # emails compare without case
    assert made.status_code == 200
    gone = as_(server, key.sign("boss@example.com"), "POST", f"{API}/experiments/delete",
               json={"experiment_id": made.json()["experiment_id"]})
    assert gone.status_code == 200
    who = as_(server, key.sign("someone@ml.example.com"), path="/ajax-api/2.0/mlflow/users/current").json()
    assert who["user"]["username"] == "someone@ml.example.com" and who["user"]["role"] == "editor"
    assert who["is_basic_auth"] is False


def test_an_account_without_a_role_is_refused(iap):
    server, key, _ = iap
    r = as_(server, key.sign("stranger@elsewhere.example"))
    assert r.status_code == 403 and "no role" in r.text


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["email"] = "boss@example.com"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_bad_assertions_get_401_and_never_fall_through_to_basic(iap):
    server, key, _ = iap
    impostor = SigningKey("key-1")  # same key id, another key: a forgery
    bad = {
        "forged": impostor.sign("boss@example.com"),
        "tampered": _tampered(key.sign("reviewer@example.com")),
        "expired": key.sign("boss@example.com", issued=time.time() - 3600, lifetime=600),
        "issued in the future": key.sign("boss@example.com", issued=time.time() + 3600),
        "wrong audience": key.sign("boss@example.com", audience="/projects/1/global/backendServices/2"),
        "wrong issuer": key.sign("boss@example.com", issuer="https://accounts.google.com"),
        "unknown key": SigningKey("key-2").sign("boss@example.com"),
        "not a JWT": "not-a-jwt",
        "alg none": "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImJvc3NAZXhhbXBsZS5jb20ifQ.",
    }
    # with valid Basic credentials of an admin beside it, a bad assertion is still refused
    for what, token in bad.items():
        r = create(server, token, auth=ALICE)
        assert r.status_code == 401, (what, r.status_code, r.text)
        assert "IAP" in r.text and "www-authenticate" not in {k.lower() for k in r.headers}
    assert as_(server, key.sign("boss@example.com")).status_code == 200  # the real key still works


def test_without_an_assertion_basic_credentials_still_work(iap):
    server, _, _ = iap
    assert as_(server, None).status_code == 401  # neither: the Basic challenge
    assert as_(server, None, auth=ALICE).status_code == 200
    assert create(server, None, auth=ALICE).status_code == 200  # alice: admin (no section)


def test_keys_are_fetched_once_not_per_request(iap):
    server, key, keys = iap
    before = keys.fetches
    for _ in range(20):
        assert as_(server, key.sign("reviewer@example.com")).status_code == 200
    # at most one fetch per worker (on its first IAP request), none per request
    assert keys.fetches - before <= 2


def test_a_new_role_takes_effect_when_the_iap_roles_secret_changes(iap):
    server, key, _ = iap
    newcomer = key.sign("newcomer@elsewhere.example")
    assert as_(server, newcomer).status_code == 403
    server.write_secret("mlflow_iap_roles", ROLES + "[editor]\nnewcomer@elsewhere.example\n")
    try:
        wait_for(lambda: create(server, newcomer).status_code == 200, 20, "the newcomer made an editor")
    finally:
        server.write_secret("mlflow_iap_roles", ROLES)
    wait_for(lambda: as_(server, newcomer).status_code == 403, 20, "the newcomer without a role again")
    # a broken roles file is refused: the last good roles stay in force
    server.write_secret("mlflow_iap_roles", "[owners]\nnewcomer@elsewhere.example\n")
    try:
        time.sleep(3)
        assert create(server, key.sign("someone@ml.example.com")).status_code == 200
        assert "IAP roles secret changed but cannot be used" in server.logs()
    finally:
        server.write_secret("mlflow_iap_roles", ROLES)
