"""IAP assertions for tests: an ES256 key the test makes, its public key served over HTTP on
127.0.0.1 the way https://www.gstatic.com/iap/verify/public_key serves Google's, and JWTs
signed with it (or with another key, for forgeries)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.services import send_json

ISSUER = "https://cloud.google.com/iap"
AUDIENCE = "/projects/123456789012/locations/europe-west1/services/mlflow"


class SigningKey:
    def __init__(self, key_id: str):
        self.key_id = key_id
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_pem(self) -> str:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, email: str, audience: str = AUDIENCE, issuer: str = ISSUER, lifetime: int = 600,
             issued: float | None = None, **extra) -> str:
        from google.auth import crypt, jwt

        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        signer = crypt.ES256Signer.from_string(pem, key_id=self.key_id)
        now = int(time.time() if issued is None else issued)
        claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime, "email": email,
                  "sub": f"accounts.google.com:{abs(hash(email))}", **extra}
        return jwt.encode(signer, claims).decode()


class KeyServer:
    """Serves ``{key id: PEM public key}`` of the given keys on 127.0.0.1; counts the fetches."""

    def __init__(self, *keys: SigningKey):
        self.keys = list(keys)
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                send_json(self, 200, {k.key_id: k.public_pem for k in outer.keys})

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/iap/verify/public_key"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
