"""Local certificates for ``modelserve up --secure`` (and the TLS tests).

``ensure_local_pki(data_dir)`` writes under ``<data_dir>/tls/``: a CA (``ca.pem``,
``ca-key.pem``), and per service one certificate with both server and client use
(``<service>.pem``, ``<service>-key.pem``, subject CN the service name, SANs the service name,
``localhost`` and ``127.0.0.1``), plus ``client.pem`` (SAN ``client``) for the operator CLI. The
name SAN is what ``tls_service_sans`` / ``tls_admin_sans`` match (auth/peers.py). Files
present, issued by that CA, naming their service and valid for at least another day are
reused, so a restarted ``up`` keeps the CA clients trust.
Keys are written 0600. Only the CLI needs ``cryptography`` (``modelserve[cli]``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=1)
LOCAL_NAMES = ("localhost", "127.0.0.1")
CLIENT = "client"  # the operator CLI's certificate (internal listeners require one)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class LocalPKI:
    dir: Path
    ca: Path
    pairs: dict[str, Pair]

    def pair(self, name: str) -> Pair:
        return self.pairs[name]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _fresh(cert: x509.Certificate | None) -> bool:
    return cert is not None and cert.not_valid_after_utc - RENEW_BEFORE > _now()


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _new_ca(dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelserve local CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(dir / "ca-key.pem", key)
    _write_cert(dir / "ca.pem", cert)
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    cert_path: Path,
    key_path: Path,
    *,
    sans: Sequence[str] | None = None,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """Issue a server+client certificate for ``name`` and write it (key first, atomically).
    ``sans``: default ``name`` and the loopback names."""
    if sans is None:
        sans = (name, *LOCAL_NAMES)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert


def load_ca(dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((dir / "ca-key.pem").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{dir / 'ca-key.pem'} is not an EC key")
    return cert, key


def ensure_local_pki(
    data_dir: Path, names: Sequence[str], extra_sans: Sequence[str] = ()
) -> LocalPKI:
    """CA and one certificate per name (and ``client``) under ``data_dir/tls``, reused when
    present, issued by the CA there, naming what it should and not about to expire; otherwise
    (re)issued. ``extra_sans``: more SANs for every service certificate (the one name every
    service checks in the others' certificates in compose, ``tls_server_name``)."""
    dir = data_dir / "tls"
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert = _load_cert(dir / "ca.pem")
    if _fresh(ca_cert) and (dir / "ca-key.pem").exists():
        ca_cert, ca_key = load_ca(dir)
    else:
        ca_cert, ca_key = _new_ca(dir)
    pairs: dict[str, Pair] = {}
    for name in dict.fromkeys([*names, CLIENT]):
        pair = Pair(dir / f"{name}.pem", dir / f"{name}-key.pem")
        cert = _load_cert(pair.cert)
        sans = [name, *extra_sans, *LOCAL_NAMES] if name != CLIENT else [name, *LOCAL_NAMES]
        if not (
            _fresh(cert)
            and pair.key.exists()
            and _issued_by(cert, ca_cert)
            and _names(cert, [n for n in sans if n not in LOCAL_NAMES])
        ):
            issue(ca_cert, ca_key, name, pair.cert, pair.key, sans=sans)
        pairs[name] = pair
    return LocalPKI(dir=dir, ca=dir / "ca.pem", pairs=pairs)


def _issued_by(cert: x509.Certificate | None, ca: x509.Certificate) -> bool:
    if cert is None or cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate | None, names: Sequence[str]) -> bool:
    """Whether ``cert`` has every one of ``names`` as a DNS SAN (certificates made before
    they had them are issued again)."""
    if cert is None:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(names) <= set(san.get_values_for_type(x509.DNSName))
