"""Artifacts by reference: reading a version's ONNX file from where it lives.

Three schemes, one reader used by the registry (which reads an artifact once at push time to
verify and inspect it, and again to stream it to a worker that cannot reach it) and by the
worker (which fetches it straight from there):

- ``file:///absolute/path`` (no host but ``localhost``, no ``..``, a regular file);
- ``http://`` and ``https://`` (httpx; redirects are not followed, so a redirect cannot lead
  outside the registry's allowed prefixes);
- ``s3://bucket/key`` on AWS S3 or any S3-compatible store (MinIO, Ceph) at
  ``s3_endpoint_url``; credentials from the standard AWS chain (AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles). Needs the ``s3`` extra (boto3).

RELIABILITY.md rule 6 (no API loads a model from an arbitrary URL) holds through
``check_allowed``: the registry accepts only URIs under prefixes its operator configured.
Nothing here trusts the bytes: callers hash what they read and compare with the sha256.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from modelserve.errors import FailedPreconditionError, InvalidArgumentError

T = TypeVar("T")

SCHEMES = ("file", "http", "https", "s3")
CHUNK_BYTES = 1 << 20
MAX_URI_CHARS = 2048


class ArtifactFetchError(FailedPreconditionError):
    """The artifact could not be read from its URI: unreachable, refused, missing, not a file.

    Distinct from a sha256 mismatch (the bytes were read and are wrong): a worker falls back
    to the registry on this error, never on a mismatch."""


@dataclass(frozen=True)
class ArtifactUri:
    text: str  # the URI as accepted (what is stored and shown)
    scheme: str
    path: str = ""  # file: the local absolute path; s3: the object key
    bucket: str = ""  # s3 only


@dataclass(frozen=True)
class FetchOptions:
    """``timeout_s`` bounds connecting and each read (a stalled transfer), not the whole
    transfer, which may be large; ``s3_endpoint_url`` empty = AWS's own endpoint."""

    timeout_s: float = 60.0
    s3_endpoint_url: str = ""
    chunk_bytes: int = CHUNK_BYTES


def parse_artifact_uri(text: str) -> ArtifactUri:
    """The checked URI, or INVALID_ARGUMENT naming what is wrong with it."""
    if len(text) > MAX_URI_CHARS:
        raise InvalidArgumentError(f"artifact URI is longer than {MAX_URI_CHARS} characters")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidArgumentError(
            f"artifact URI must not hold spaces or control characters: {text!r}"
        )
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidArgumentError(
            f"artifact URI scheme must be one of {', '.join(s + '://' for s in SCHEMES)}; "
            f"got {text!r}"
        )
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"artifact URI must not have a query or fragment: {text!r}")
    if scheme == "file":
        return ArtifactUri(text, scheme, path=_file_path(text, parts.netloc, parts.path))
    if scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key or parts.path != "/" + key:
            raise InvalidArgumentError(f"expected s3://BUCKET/KEY; got {text!r}")
        if ".." in key.split("/"):
            raise InvalidArgumentError(f"artifact URI must not contain '..': {text!r}")
        return ArtifactUri(text, scheme, path=key, bucket=parts.netloc)
    if not parts.hostname:
        raise InvalidArgumentError(f"expected {scheme}://HOST/PATH; got {text!r}")
    if ".." in unquote(parts.path).split("/"):
        raise InvalidArgumentError(f"artifact URI must not contain '..': {text!r}")
    return ArtifactUri(text, scheme)


def _file_path(text: str, host: str, raw_path: str) -> str:
    if host not in ("", "localhost"):
        raise InvalidArgumentError(
            f"file:// artifact URIs name a local file (file:///abs/path); got host {host!r}"
        )
    path = unquote(raw_path)
    if not path.startswith("/"):
        raise InvalidArgumentError(f"file:// artifact URIs need an absolute path; got {text!r}")
    plain = posixpath.normpath(path) == path.rstrip("/") and not path.startswith("//")
    if "\x00" in path or ".." in path.split("/") or not plain:
        raise InvalidArgumentError(
            f"file:// artifact URI must be a plain absolute path (no '..', '.', '//'): {text!r}"
        )
    if path.endswith("/"):
        raise InvalidArgumentError(f"file:// artifact URI names a directory: {text!r}")
    return path


def check_allowed(uri: ArtifactUri, prefixes: Sequence[str]) -> None:
    """Refuse ``uri`` unless it lies under one of ``prefixes`` (the registry's
    ``artifact_uri_prefixes``): FAILED_PRECONDITION when none are configured (push by
    reference is off), INVALID_ARGUMENT when it lies outside them. A prefix matches on a
    path boundary ("s3://models" covers s3://models/a.onnx, not s3://models-old/...). For
    file:// the resolved path (symlinks followed) must stay under the resolved prefix, so a
    link inside an allowed folder cannot point outside it. Touches the filesystem."""
    if not prefixes:
        raise FailedPreconditionError(
            "this registry accepts no artifact URIs: push the file, or have its operator set "
            "MODELSERVE_ARTIFACT_URI_PREFIXES (e.g. s3://models/,file:///srv/models/)"
        )
    for prefix in prefixes:
        if _under(uri, prefix):
            return
    raise InvalidArgumentError(
        f"artifact URI {uri.text!r} is not under any prefix this registry accepts "
        f"({', '.join(prefixes)})"
    )


def _under(uri: ArtifactUri, prefix: str) -> bool:
    if uri.scheme == "file":
        if not prefix.lower().startswith("file://"):
            return False
        root = os.path.realpath(unquote(urlsplit(prefix).path) or "/")
        real = os.path.realpath(uri.path)
        return real == root or real.startswith(root.rstrip("/") + "/")
    bounded = prefix if prefix.endswith("/") else prefix + "/"
    return uri.text == prefix or uri.text.startswith(bounded)


async def read_chunks(
    uri: ArtifactUri, options: FetchOptions, *, executor: Executor | None = None
) -> AsyncGenerator[bytes, None]:
    """The artifact's bytes in chunks of at most ``options.chunk_bytes``; ArtifactFetchError
    when it cannot be read. Blocking reads (files, boto3) run in ``executor``. Use it with
    ``contextlib.aclosing`` so a consumer that stops early closes the connection."""
    if uri.scheme == "file":
        reader: AsyncGenerator[bytes, None] = _file_chunks(uri, options, executor)
    elif uri.scheme == "s3":
        reader = _s3_chunks(uri, options, executor)
    else:
        reader = _http_chunks(uri, options)
    async with aclosing(reader):  # closed with this one: no connection left to the GC
        async for chunk in reader:
            yield chunk


async def _file_chunks(
    uri: ArtifactUri, options: FetchOptions, executor: Executor | None
) -> AsyncGenerator[bytes, None]:
    fd = await _run(executor, _open_regular_file, uri)
    with os.fdopen(fd, "rb") as f:
        while chunk := await _run(executor, f.read, options.chunk_bytes):
            yield chunk


def _open_regular_file(uri: ArtifactUri) -> int:
    """An fd on the file, refusing anything but a regular file (O_NONBLOCK: a FIFO must not
    hang the opener; fstat after opening, so the check is on what was opened)."""
    try:
        fd = os.open(uri.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactFetchError(f"cannot read {uri.text}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactFetchError(f"cannot read {uri.text}: not a regular file")
    os.set_blocking(fd, True)
    return fd


async def _http_chunks(uri: ArtifactUri, options: FetchOptions) -> AsyncGenerator[bytes, None]:
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_s)) as client,
            client.stream("GET", uri.text) as response,
        ):
            if response.status_code != 200:
                moved = " (redirects are not followed)" if response.is_redirect else ""
                raise ArtifactFetchError(
                    f"cannot read {uri.text}: HTTP {response.status_code} "
                    f"{response.reason_phrase}{moved}"
                )
            async for chunk in response.aiter_bytes(options.chunk_bytes):
                yield chunk
    except httpx.HTTPError as exc:
        raise ArtifactFetchError(f"cannot read {uri.text}: {_http_reason(exc)}") from None


def _http_reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return type(exc).__name__


async def _s3_chunks(
    uri: ArtifactUri, options: FetchOptions, executor: Executor | None
) -> AsyncGenerator[bytes, None]:
    body = await _run(executor, _s3_open, uri, options)
    try:
        while chunk := await _run(executor, _s3_read, uri, body, options.chunk_bytes):
            yield chunk
    finally:
        body.close()


def _s3_client(options: FetchOptions) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ArtifactFetchError(
            "s3:// artifact URIs need boto3: install modelserve with the `s3` extra"
        ) from None
    config = Config(
        connect_timeout=options.timeout_s,
        read_timeout=options.timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=options.s3_endpoint_url or None, config=config
    )


def _s3_open(uri: ArtifactUri, options: FetchOptions) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = _s3_client(options).get_object(Bucket=uri.bucket, Key=uri.path)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        raise ArtifactFetchError(f"cannot read {uri.text}: {code} (HTTP {status})") from None
    except BotoCoreError as exc:
        raise ArtifactFetchError(f"cannot read {uri.text}: {type(exc).__name__}") from None
    return reply["Body"]


def _s3_read(uri: ArtifactUri, body: Any, size: int) -> bytes:
    from botocore.exceptions import BotoCoreError

    try:
        data: bytes = body.read(size)
    except (BotoCoreError, OSError) as exc:
        raise ArtifactFetchError(f"cannot read {uri.text}: {type(exc).__name__}") from None
    return data


async def _run(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
