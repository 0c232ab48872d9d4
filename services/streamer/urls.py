"""Broker URLs: ``redis://HOST:PORT/DB?stream=NAME[&maxlen=N]`` and
``nats://HOST:PORT?stream=NAME&subject=SUBJ``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from modelserve.settings import SettingsError


@dataclass(frozen=True)
class BrokerURL:
    scheme: str  # redis, rediss or nats
    server: str  # the URL without the stream query, as the client library takes it
    stream: str
    subject: str  # NATS only
    maxlen: int | None  # Redis sinks only

    @property
    def is_redis(self) -> bool:
        return self.scheme in ("redis", "rediss")

    def describe(self) -> str:
        """For logs: never the password."""
        parts = urlsplit(self.server)
        host = parts.hostname or ""
        return f"{self.scheme}://{host}:{parts.port or ''}/{self.stream}"


def parse(url: str, what: str = "stream URL") -> BrokerURL:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    stream = query.pop("stream", "")
    if not stream:
        raise SettingsError(f"{what} {url!r} needs ?stream=NAME")
    subject = query.pop("subject", "")
    maxlen_raw = query.pop("maxlen", "")
    if parts.scheme in ("redis", "rediss"):
        if subject:
            raise SettingsError(f"{what}: subject= is for nats:// URLs only")
        server = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    elif parts.scheme == "nats":
        if maxlen_raw:
            raise SettingsError(f"{what}: maxlen= is for redis:// URLs only")
        subject = subject or stream
        server = urlunsplit(("nats", parts.netloc, "", "", ""))
    else:
        raise SettingsError(f"{what} must be redis://, rediss:// or nats://; got {url!r}")
    try:
        maxlen = int(maxlen_raw) if maxlen_raw else None
    except ValueError:
        raise SettingsError(f"{what}: maxlen must be an integer; got {maxlen_raw!r}") from None
    return BrokerURL(parts.scheme, server, stream, subject, maxlen)


def dead_letter_default(sink: str) -> str:
    """The sink URL with ``.dlq`` appended to its stream (and subject)."""
    parts = urlsplit(sink)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "stream" in query:
        query["stream"] += "-dlq" if parts.scheme == "nats" else ".dlq"
    if "subject" in query:
        query["subject"] += ".dlq"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
