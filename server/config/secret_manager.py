"""Resolve ``sm://projects/P/secrets/S/versions/V`` values through Google Secret Manager.

The client library is imported only when such a value is present, so a server configured from
files and variables never loads gRPC nor asks a metadata server for credentials.
"""

from __future__ import annotations

import re

from server.config.sources import SourceError, strip_trailing_newlines

PREFIX = "sm://"
_NAME = re.compile(r"^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$")


def is_reference(value: str) -> bool:
    return value.startswith(PREFIX)


def resource_name(value: str, setting: str) -> str:
    name = value[len(PREFIX):]
    if not _NAME.match(name):
        raise SourceError(
            f"{setting}: a Secret Manager reference must look like "
            "sm://projects/PROJECT/secrets/SECRET[/versions/VERSION]"
        )
    return name if "/versions/" in name else f"{name}/versions/latest"


class SecretManagerResolver:
    """Fetches secret versions; one client for the whole start-up.

    Args:
        endpoint: ``SECRET_MANAGER_ENDPOINT``; empty for Google's API. An ``http://`` endpoint
            (an emulator or a test stand-in) is reached over REST with anonymous credentials.
    """

    def __init__(self, endpoint: str | None = None):
        self._endpoint = endpoint
        self._client = None

    def _make_client(self):
        from google.cloud import secretmanager

        if not self._endpoint:
            return secretmanager.SecretManagerServiceClient()
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return secretmanager.SecretManagerServiceClient(
            credentials=AnonymousCredentials(),
            transport="rest",
            client_options=ClientOptions(api_endpoint=self._endpoint),
        )

    def fetch(self, value: str, setting: str) -> str:
        name = resource_name(value, setting)
        try:
            if self._client is None:
                self._client = self._make_client()
            response = self._client.access_secret_version(name=name, timeout=15)
            text = response.payload.data.decode("utf-8")
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one config problem
            # The resource name is not secret; the payload never reaches this message.
            raise SourceError(
                f"{setting}: cannot read {name} from Secret Manager ({type(exc).__name__})"
            ) from None
        text = strip_trailing_newlines(text)
        if not text.strip():
            raise SourceError(f"{setting}: the Secret Manager secret {name} is empty")
        return text
