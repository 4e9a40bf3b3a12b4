"""Stream artifacts between the client and GCS/S3 instead of spooling them whole to TMPDIR.

MLflow's proxy handlers write every gs:// or s3:// upload to a temporary file before sending it
on, and download whole artifacts to a temporary folder before answering. On Cloud Run ``/tmp``
is memory, so a 1 GiB model costs 1 GiB of RAM (and MLflow's GCS upload holds a 100 MiB chunk
besides). Here:

* uploads: MLflow's handler already streams to repositories that implement its
  ``StreamUploadMixin``; the repositories below do, with bounded buffers (a GCS resumable upload
  in ``CHUNK_BYTES`` chunks; an S3 multipart upload of ``CHUNK_BYTES`` parts). A body shorter
  than its ``Content-Length`` (client gone) aborts the upload: no truncated object appears.
* downloads: the proxy's download route and the UI's ``get-artifact`` answer with the object's
  bytes as they arrive from storage, ``CHUNK_BYTES`` at a time.

MLflow 3.17 also advertises presigned multipart transfers in ``server-info`` whenever the
repository could do them, and the stock client then sends files of 500 MiB and more straight to
the bucket with signed URLs: clients cannot reach the bucket, and Cloud Run's default
credentials cannot sign. The proxy here streams any size, so ``server-info`` says no, and a
client that asks anyway is told "unsupported" (501), on which it falls back to one proxied PUT.

A write may be create-only (``CREATE_ONLY``, set by ``server/limits/write_once.py`` for a
non-admin): the storage then refuses it when the object appeared after the rule's check (GCS
``ifGenerationMatch=0`` on the upload, S3 ``If-None-Match: *`` on the PUT or on completing the
multipart upload), and the write raises ``ObjectExistsError``.

The repositories are registered for the ``gs`` and ``s3`` schemes in MLflow's artifact
repository registry (the programmatic form of its ``mlflow.artifact_repository`` plugin entry
points: this server is not an installed distribution).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterator
from typing import BinaryIO

from mlflow.exceptions import _UnsupportedMultipartUploadException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import StreamUploadMixin
from mlflow.store.artifact.gcs_artifact_repo import GCSArtifactRepository
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

log = logging.getLogger("server.artifacts")

CHUNK_BYTES = 8 * 1024 * 1024  # GCS needs multiples of 256 KiB; S3 parts at least 5 MiB
READ_BYTES = 1024 * 1024


# True while a write must not replace an object (server/limits/write_once.py)
CREATE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("server_artifacts_create_only", default=False)


class IncompleteUploadError(Exception):
    """The request body ended before its announced length."""


class ObjectExistsError(Exception):
    """A create-only write found the object already stored (the storage's precondition failed)."""


class CountingReader:
    """Reads a WSGI input, counting bytes, and fails when it ends short of ``expected``."""

    def __init__(self, stream: BinaryIO, expected: int | None):
        self._stream = stream
        self.expected = expected
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size and size > 0 else READ_BYTES)
        self.count += len(data)
        if not data and self.expected is not None and self.count < self.expected:
            raise IncompleteUploadError(f"upload ended after {self.count} of {self.expected} bytes")
        return data

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(READ_BYTES):
            yield data

    def block(self, size: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the body."""
        parts, held = [], 0
        while held < size and (data := self.read(min(READ_BYTES, size - held))):
            parts.append(data)
            held += len(data)
        return b"".join(parts)


def _expected_length() -> int | None:
    from flask import request

    return request.content_length


def _object_path(root: str, artifact_file_name: str, artifact_path: str | None) -> str:
    parts = [root] if root else []
    if artifact_path:
        parts.append(artifact_path)
    parts.append(posixpath.basename(artifact_file_name))
    return posixpath.join(*parts)


class _ProxiedOnly:
    """Refuse presigned multipart uploads: every byte goes through the (streaming) proxy."""

    def create_multipart_upload(self, *args, **kwargs):
        raise _UnsupportedMultipartUploadException()


class _OneWriter:
    """A request's body and a local file reach storage through one ``_write`` of the repository."""

    def log_artifact_from_stream(self, stream, artifact_file_name, artifact_path=None):
        self._write(CountingReader(stream, _expected_length()), artifact_file_name, artifact_path)

    def log_artifact(self, local_file, artifact_path=None):
        with open(local_file, "rb") as file:
            self._write(CountingReader(file, os.fstat(file.fileno()).st_size), local_file, artifact_path)

    async def log_artifact_from_async_stream(self, chunks, artifact_file_name, artifact_path=None):
        raise NotImplementedError("the WSGI server streams through log_artifact_from_stream")


class StreamingGCSArtifactRepository(_ProxiedOnly, _OneWriter, GCSArtifactRepository, StreamUploadMixin):
    def _write(self, reader: CountingReader, artifact_file_name: str, artifact_path: str | None) -> None:
        from google.api_core.exceptions import PreconditionFailed

        bucket_name, root = self.parse_gcs_uri(self.artifact_uri)
        blob = self._get_bucket(bucket_name).blob(_object_path(root, artifact_file_name, artifact_path),
                                                  chunk_size=CHUNK_BYTES)
        # generation 0: "only if no live object has this name", checked by GCS when the upload ends
        condition = {"if_generation_match": 0} if CREATE_ONLY.get() else {}
        try:
            # BlobWriter: a resumable upload holding one chunk; on an exception it cancels the upload
            with blob.open("wb", chunk_size=CHUNK_BYTES, ignore_flush=True, **condition) as writer:
                for data in reader.chunks():
                    writer.write(data)
        except PreconditionFailed as exc:
            raise ObjectExistsError(blob.name) from exc

    def open_object(self, path: str) -> tuple[Iterator[bytes], int] | None:
        bucket_name, root = self.parse_gcs_uri(self.artifact_uri)
        blob = self._get_bucket(bucket_name).get_blob(posixpath.join(root, path) if root else path)
        if blob is None:
            return None
        reader = blob.open("rb", chunk_size=CHUNK_BYTES)

        def body():
            with reader:
                while data := reader.read(READ_BYTES):
                    yield data

        return body(), blob.size

    def is_folder(self, path: str) -> bool:
        bucket_name, root = self.parse_gcs_uri(self.artifact_uri)
        prefix = (posixpath.join(root, path) if root else path).rstrip("/") + "/"
        return any(True for _ in self._get_bucket(bucket_name).list_blobs(prefix=prefix, max_results=1))

    def exists(self, path: str) -> bool:
        """A stored object or folder at ``path`` (server/limits/write_once.py)."""
        bucket_name, root = self.parse_gcs_uri(self.artifact_uri)
        name = posixpath.join(root, path) if root else path
        return self._get_bucket(bucket_name).get_blob(name) is not None or self.is_folder(path)


class StreamingS3ArtifactRepository(_ProxiedOnly, _OneWriter, S3ArtifactRepository, StreamUploadMixin):
    def _write(self, reader: CountingReader, artifact_file_name: str, artifact_path: str | None) -> None:
        """One PUT for a body under CHUNK_BYTES, else a multipart upload of CHUNK_BYTES parts
        (one held at a time); an error aborts it, so no partial object appears."""
        from botocore.exceptions import ClientError

        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        key = _object_path(root, artifact_file_name, artifact_path)
        # "*": only if no object has this key, checked by S3 when the object is created
        condition = {"IfNoneMatch": "*"} if CREATE_ONLY.get() else {}
        client = self._get_s3_client()
        first = reader.block(CHUNK_BYTES)
        following = reader.block(CHUNK_BYTES) if len(first) == CHUNK_BYTES else b""
        try:
            if not following:
                client.put_object(Bucket=bucket, Key=key, Body=first, **condition)
                return
            upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            try:
                parts = []
                blocks = itertools.chain((first, following), iter(lambda: reader.block(CHUNK_BYTES), b""))
                for number, data in enumerate(blocks, start=1):
                    done = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)
                    parts.append({"PartNumber": number, "ETag": done["ETag"]})
                client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                 MultipartUpload={"Parts": parts}, **condition)
            except BaseException:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
                raise
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ObjectExistsError(key) from exc
            raise

    def open_object(self, path: str) -> tuple[Iterator[bytes], int] | None:
        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        client = self._get_s3_client()
        try:
            obj = client.get_object(Bucket=bucket, Key=posixpath.join(root, path) if root else path)
        except client.exceptions.NoSuchKey:
            return None
        body = obj["Body"]

        def chunks():
            try:
                yield from body.iter_chunks(READ_BYTES)
            finally:
                body.close()

        return chunks(), obj["ContentLength"]

    def is_folder(self, path: str) -> bool:
        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        prefix = (posixpath.join(root, path) if root else path).rstrip("/") + "/"
        listing = self._get_s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return bool(listing.get("KeyCount"))

    def exists(self, path: str) -> bool:
        """A stored object or folder at ``path`` (server/limits/write_once.py)."""
        from botocore.exceptions import ClientError

        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        try:
            self._get_s3_client().head_object(Bucket=bucket, Key=posixpath.join(root, path) if root else path)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        return self.is_folder(path)


def install() -> None:
    """Register the streaming repositories and the streaming download responses."""
    from mlflow.server import handlers
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("gs", StreamingGCSArtifactRepository)
    _artifact_repository_registry.register("s3", StreamingS3ArtifactRepository)
    handlers._send_artifact = _streaming_send(handlers._send_artifact)
    _replace_download_view(handlers)
    _no_multipart_in_server_info(handlers)


def _no_multipart_in_server_info(handlers) -> None:
    from mlflow.server import app as mlflow_app
    from mlflow.utils.server_info import (
        SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED,
        SERVER_INFO_MULTIPART_UPLOADS_ENABLED,
    )

    original = mlflow_app.view_functions["_get_server_info"]

    def get_server_info(*args, **kwargs):
        response = original(*args, **kwargs)
        info = response.get_json(silent=True)
        if isinstance(info, dict):
            info[SERVER_INFO_MULTIPART_UPLOADS_ENABLED] = False
            info[SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED] = False
            response.set_data(json.dumps(info))
        return response

    get_server_info.__name__ = "_get_server_info"
    mlflow_app.view_functions["_get_server_info"] = get_server_info


def _stream_response(repo, path: str) -> object | None:
    """A Flask response streaming ``path`` from ``repo``, or None when the repository cannot
    stream (MLflow's handler answers then); 404 for a missing object, 400 for a folder."""
    from flask import Response
    from mlflow.server.handlers import _content_disposition_attachment, _guess_mime_type

    opener = getattr(repo, "open_object", None)
    if opener is None or not path:
        return None
    opened = opener(path)
    if opened is None:
        # MLflow's own handler answers a missing object with a 500; say what it is instead
        from mlflow.exceptions import MlflowException

        if repo.is_folder(path):
            raise MlflowException.invalid_parameter_value(
                f"Artifact path refers to a directory, not a file: '{path}'")
        raise MlflowException(f"Artifact '{path}' does not exist", error_code=RESOURCE_DOES_NOT_EXIST)
    body, size = opened
    mime = _guess_mime_type(path)
    response = Response(body, mimetype=mime, direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    # attachments, as MLflow sends them (never rendered on the server's origin), no sniffing
    response.headers["Content-Disposition"] = _content_disposition_attachment(posixpath.basename(path))
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Type"] = mime
    return response


def _streaming_send(original: Callable) -> Callable:
    def send_artifact(artifact_repository, path):
        return _stream_response(artifact_repository, path) or original(artifact_repository, path)

    return send_artifact


def _replace_download_view(handlers) -> None:
    from mlflow.server import app as mlflow_app

    original = mlflow_app.view_functions["_download_artifact"]

    @handlers.catch_mlflow_exception
    def download_artifact(artifact_path):
        path = handlers.validate_path_is_safe(artifact_path)
        path = handlers._get_workspace_scoped_repo_path_if_enabled(path)
        response = _stream_response(handlers._get_artifact_repo_mlflow_artifacts(), path)
        return response if response is not None else original(artifact_path)

    download_artifact.__name__ = "_download_artifact"
    mlflow_app.view_functions["_download_artifact"] = download_artifact
