"""Channels of the CLI's client commands, sending the operator's ``--token`` (or
``MODELSERVE_TOKEN``) as ``authorization: Bearer`` on every call."""

from __future__ import annotations

import os

import grpc
from grpc import aio

from modelserve.auth.client import bearer_interceptors

TOKEN_ENV = "MODELSERVE_TOKEN"
_token: str | None = None


def set_token(token: str | None) -> None:
    """The token every channel made by ``channel`` sends (None: ``MODELSERVE_TOKEN``)."""
    global _token
    _token = token


def token() -> str | None:
    return _token if _token is not None else (os.environ.get(TOKEN_ENV) or None)


def channel(address: str) -> aio.Channel:
    """An insecure channel to ``address`` carrying the CLI's token, if any."""
    return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token()))
