# -*- test-case-name: tests.test_certs -*-
"""
C{kvctl certs create DIR --config FILE}: a certificate authority and one
certificate per node of a cluster file, for a TLS cluster (C{[tls]}).

    DIR/ca.pem       the CA certificate: every node and client trusts it
    DIR/ca.key       the CA's private key: keep it offline once done
    DIR/NODE.pem     node NODE's certificate, naming its host
    DIR/NODE.key     node NODE's private key

Keys are ECDSA P-256 (fast handshakes).  A node's certificate names its
C{host} (an IP address or a DNS name) in subjectAltName, and is good both
for serving (HTTPS, FTPS, the peer port) and for dialling its peers (mutual
TLS).  Existing files are never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Iterable, Optional

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twisted_kv.core.config import ClusterConfig

__all__ = ["Authority", "create_certificates", "issue", "new_authority", "write_pair"]

#: How long a CA certificate is valid by default.
CA_DAYS = 3650
#: How long a node certificate is valid by default (browsers accept at most 825 days).
NODE_DAYS = 825


@frozen
class Authority:
    """
    A certificate authority: its certificate and private key.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_authority(
    common_name: str, *, now: Optional[datetime.datetime] = None, days: int = CA_DAYS
) -> Authority:
    """
    A new self-signed CA valid from C{now} for C{days} days.
    """
    now = _now() if now is None else now
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    authority: Authority,
    common_name: str,
    hosts: Iterable[str],
    *,
    now: Optional[datetime.datetime] = None,
    days: int = NODE_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    A new key and a certificate for it signed by C{authority}, naming
    C{hosts} (IP addresses or DNS names), for TLS servers and clients alike.
    """
    now = _now() if now is None else now
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_alt_name(host) for host in dict.fromkeys(hosts)]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return certificate, key


def write_pair(
    directory: str,
    stem: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """
    Write C{stem.pem} and C{stem.key} (readable by the owner only) in
    C{directory}.

    @raise FileExistsError: if either exists.
    """
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for name, data, mode in (
        (f"{stem}.key", key_bytes, 0o600),
        (f"{stem}.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        path = os.path.join(directory, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)


def create_certificates(config: ClusterConfig, directory: str) -> list[str]:
    """
    Create C{directory} (if needed), a CA and one certificate per node of
    C{config} in it.

    @return: the names of the files written.
    @raise FileExistsError: if one of them exists already (nothing is
        written then).
    """
    stems = ["ca"] + [node.node_id for node in config.nodes]
    names = [f"{stem}.{suffix}" for stem in stems for suffix in ("pem", "key")]
    os.makedirs(directory, exist_ok=True)
    for name in names:
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists already; choose an empty directory")
    authority = new_authority(f"{config.name} CA")
    write_pair(directory, "ca", authority.certificate, authority.key)
    for node in config.nodes:
        write_pair(directory, node.node_id, *issue(authority, node.node_id, [node.host]))
    return names
