"""TLS for every listener and mTLS between services (issue 11).

One configuration per process, from the ``tls_*`` settings every service shares:

- the server side (``server_credentials``) uses gRPC's dynamic credentials: gRPC asks a
  fetcher on every new handshake, and the fetcher re-reads the certificate and key once their
  files changed (mtime, size or inode), so a rotated certificate is served to new connections
  without a restart; connections already open keep the certificate they were made with;
- the client side (``ClientTLS``) is what ``modelserve.channels.internal_channel`` uses for
  every outbound channel: the CA to verify peers, and this service's own certificate and key as
  its client certificate (read when a channel is made, so new channels follow a rotation too);
- ``peer_identity(context)`` is the verified identity of the caller (certificate subject CN
  and SANs) for handlers; it is None on plaintext or when the caller showed no certificate.

Plaintext stays the default: TLS is on when ``tls_cert_file`` is set.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSConfig:
    """The TLS half of a service's settings (see ``CommonSettings.tls_*``)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    require_client_cert: bool = False
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @classmethod
    def from_settings(cls, settings: Any) -> TLSConfig:
        return cls(
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            ca_file=settings.tls_ca_file,
            require_client_cert=settings.tls_require_client_cert,
            server_name=settings.tls_server_name,
        )

    def problems(self) -> list[str]:
        """What makes this configuration impossible (checked before anything starts)."""
        out = []
        if (self.key_file or self.ca_file or self.server_name) and not self.cert_file:
            out.append("tls_key_file/tls_ca_file/tls_server_name need tls_cert_file")
        if self.cert_file and not self.key_file:
            out.append("tls_cert_file needs tls_key_file")
        if self.enabled and self.require_client_cert and not self.ca_file:
            out.append("tls_require_client_cert needs tls_ca_file (the CA client certs chain to)")
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                out.append(f"tls_{name} {path!r} is not a readable file")
        return out

    def client(self) -> ClientTLS | None:
        """What this service's outbound channels use: None when TLS is off."""
        if not self.enabled:
            return None
        return ClientTLS(
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            server_name=self.server_name,
        )


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies servers (CA; system roots if empty) and what it shows them."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""  # the name checked in server certificates, if not the address host

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


# --- the process's outbound TLS, set once by the server bootstrap --------------------------

_client_tls: ClientTLS | None = None


def configure_client_tls(tls: ClientTLS | None) -> None:
    """Make ``tls`` what every internal channel of this process uses (None: plaintext)."""
    global _client_tls
    _client_tls = tls


def client_tls() -> ClientTLS | None:
    return _client_tls


# --- the server side: certificates reloaded when their files change ------------------------


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ReloadingCertificate:
    """gRPC's certificate-configuration fetcher: the files' current certificate, once changed.

    gRPC calls it (from its own threads) for each new handshake; it stats the files and returns
    None while nothing changed (gRPC keeps the configuration it has). A new pair is served only
    once the key matches the certificate, so a rotation written file by file is never half-seen.
    """

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamps = self._current_stamps()
        self.reloads = 0
        self.initial = self._load()

    def _current_stamps(self) -> tuple[tuple[int, int, int], ...]:
        files = [self._tls.cert_file, self._tls.key_file]
        if self._tls.ca_file:
            files.append(self._tls.ca_file)
        return tuple(_stamp(f) for f in files)

    def _load(self) -> Any:
        tls = self._tls
        _check_pair(tls.cert_file, tls.key_file)
        return grpc.ssl_server_certificate_configuration(
            [(_read(tls.key_file), _read(tls.cert_file))],
            root_certificates=_read(tls.ca_file) if tls.ca_file else None,
        )

    def __call__(self) -> Any:
        with self._lock:
            try:
                stamps = self._current_stamps()
                if stamps == self._stamps:
                    return None
                config = self._load()
            except Exception as exc:  # never let a bad file break handshakes: gRPC's thread
                # Mid-rotation (key not written yet) or a bad file: keep serving the old pair
                # and look again at the next handshake.
                log.warning("TLS certificate not reloaded (%s); serving the previous one", exc)
                return None
            self._stamps = stamps
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return config


def _check_pair(cert_file: str, key_file: str) -> None:
    """Raise ssl.SSLError unless ``key_file`` is the private key of ``cert_file``."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)


def server_credentials(tls: TLSConfig) -> tuple[grpc.ServerCredentials, ReloadingCertificate]:
    """Credentials for a listener that picks up a changed certificate without a restart."""
    fetcher = ReloadingCertificate(tls)
    creds = grpc.dynamic_ssl_server_credentials(
        fetcher.initial,
        fetcher,
        require_client_authentication=tls.require_client_cert,
    )
    return creds, fetcher


class ReloadingSSLContext:
    """The same rule for a listener served by Python's ssl (the metrics port): one server
    context whose certificate is loaded again, for new connections, once the files changed.
    Client certificates are not asked for there (Prometheus scrapes with the CA)."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(tls.cert_file, tls.key_file)
        self._stamps = (_stamp(tls.cert_file), _stamp(tls.key_file))
        self.reloads = 0

    def refresh(self) -> None:
        with self._lock:
            try:
                stamps = (_stamp(self._tls.cert_file), _stamp(self._tls.key_file))
                if stamps == self._stamps:
                    return
                _check_pair(self._tls.cert_file, self._tls.key_file)
                self.context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS certificate not reloaded (%s); serving the previous one", exc)
                return
            self._stamps = stamps
            self.reloads += 1


# --- who is calling ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerIdentity:
    """The verified certificate of the caller: subject CN and subject alternative names."""

    common_name: str
    sans: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the certificate vouches for, CN first."""
        return tuple(dict.fromkeys(n for n in (self.common_name, *self.sans) if n))


def peer_identity(context: Any) -> PeerIdentity | None:
    """The caller's verified client certificate identity, or None (plaintext, or no cert).

    gRPC puts a peer's certificate into the auth context only after it verified it against
    the listener's CA, so what is returned here can be trusted as far as that CA is.
    """
    auth: dict[str, list[bytes]] = context.auth_context() or {}
    if auth.get("transport_security_type", [b""])[0] != b"ssl":
        return None
    cn = [v.decode() for v in auth.get("x509_common_name", [])]
    sans = tuple(v.decode() for v in auth.get("x509_subject_alternative_name", []))
    if not cn and not sans:
        return None
    return PeerIdentity(common_name=cn[0] if cn else "", sans=sans)
