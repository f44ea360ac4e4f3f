# -*- test-case-name: tests.test_tls -*-
"""
A node's TLS credentials, checked at start, and the TLS settings of each of
its ports.

L{load_node_tls} reads the C{[tls]} files of one node and refuses, with a
one-line L{TLSSetupError} naming the file, anything that would only fail
later in a handshake: a missing or unreadable file, a CA that is not a CA
certificate, a certificate not signed by the CA, a key that does not match
the certificate, a certificate or CA outside its validity period.

L{NodeTLS} then hands out Twisted's TLS settings (L{CertificateOptions},
L{optionsForClientTLS}):

  - L{NodeTLS.server}: HTTPS, WSS and FTPS.  One object, hence one OpenSSL
    context, serves the FTP control connection and every data connection,
    so a client resuming its control connection's TLS session on a data
    connection (as FileZilla does) finds it in that context's session cache.
  - L{NodeTLS.peer_server} and L{NodeTLS.peer_client}: mutual TLS on the
    peer port, where both ends must present a certificate signed by the CA,
    and the connecting side checks the host name of the peer it dialled
    (service_identity).

Every context speaks TLS 1.2 or newer, with forward-secret AEAD ciphers only.
"""

from __future__ import annotations

import datetime
from typing import Optional

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    AcceptableCiphers,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)

from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_kv.core.config import TLSConfig

__all__ = ["MINIMUM_TLS_VERSION", "NodeTLS", "TLSSetupError", "load_node_tls", "tls_server_factory"]

#: The oldest protocol version any port accepts.
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2

#: TLS 1.2 cipher suites: ephemeral key exchange (forward secrecy) and
#: authenticated encryption only.  TLS 1.3 suites are all of that kind.
_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"
)


class TLSSetupError(Exception):
    """
    A C{[tls]} file is unusable; C{str()} is one line naming it.
    """


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise TLSSetupError(f"{path}: cannot read the {what}: {error.strerror or error}") from None


def _certificate(path: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError:
        raise TLSSetupError(f"{path}: not a PEM certificate (the {what})") from None


def _private_key(path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except TypeError:
        raise TLSSetupError(f"{path}: the private key is encrypted (use one without a passphrase)") from None
    except ValueError:
        raise TLSSetupError(f"{path}: not a PEM private key") from None


def _check_validity(path: str, what: str, certificate: x509.Certificate, now: datetime.datetime) -> None:
    if now < certificate.not_valid_before_utc:
        raise TLSSetupError(
            f"{path}: the {what} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > certificate.not_valid_after_utc:
        raise TLSSetupError(
            f"{path}: the {what} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@frozen
class NodeTLS:
    """
    One node's checked TLS credentials and the settings built from them.

    @ivar authority: the CA every node's certificate is signed by.
    @ivar identity: this node's certificate with its private key.
    @ivar server: the settings of HTTPS, WSS and FTPS (control and data
        connections alike).
    @ivar peer_server: the settings of the peer port: a client certificate
        signed by the CA is required.
    """

    authority: Certificate
    identity: PrivateCertificate
    server: CertificateOptions
    peer_server: CertificateOptions

    def peer_client(self, host: str) -> object:
        """
        The settings of an outbound peer connection to C{host}: present our
        certificate, trust only the CA, and check that the peer's
        certificate names C{host}.
        """
        return optionsForClientTLS(
            host,
            trustRoot=self.authority,
            clientCertificate=self.identity,
            extraCertificateOptions={
                "raiseMinimumTo": MINIMUM_TLS_VERSION,
                "acceptableCiphers": _CIPHERS,
            },
        )


def load_node_tls(tls: TLSConfig, node_id: str, now: Optional[datetime.datetime] = None) -> NodeTLS:
    """
    Read and check node C{node_id}'s files of the C{[tls]} section.

    @param now: the time certificates must be valid at (tests); now by
        default.
    @raise TLSSetupError: with one line naming the unusable file.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    paths = tls.for_node(node_id)
    ca = _certificate(paths.ca, "CA certificate")
    if not _is_ca(ca):
        raise TLSSetupError(f"{paths.ca}: not a CA certificate (no basicConstraints CA:TRUE)")
    _check_validity(paths.ca, "CA certificate", ca, now)
    cert = _certificate(paths.cert, "node certificate")
    _check_validity(paths.cert, "certificate", cert, now)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TLSSetupError(f"{paths.cert}: the certificate is not signed by the CA {paths.ca}") from None
    key = _private_key(paths.key)
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise TLSSetupError(f"{paths.key}: the private key does not match the certificate {paths.cert}")

    authority = Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM))
    identity = PrivateCertificate.loadPEM(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    common = {
        "privateKey": identity.privateKey.original,
        "certificate": identity.original,
        "raiseMinimumTo": MINIMUM_TLS_VERSION,
        "acceptableCiphers": _CIPHERS,
    }
    return NodeTLS(
        authority=authority,
        identity=identity,
        # The server cache lets an FTP data connection resume the control
        # connection's session (TLS 1.2 session ids, TLS 1.3 stateful tickets).
        server=CertificateOptions(**common, enableSessions=True),
        peer_server=CertificateOptions(
            **common,
            trustRoot=authority,  # implies a required, verified certificate
        ),
    )


class _TLSServerFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS server wrapper, refusing a connection (closing it at
    once) when the wrapped factory refuses it by building no protocol.
    """

    noisy = False

    def buildProtocol(self, addr: object) -> object:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


def tls_server_factory(
    options: object, factory: IProtocolFactory, clock: Optional[IReactorTime] = None
) -> IProtocolFactory:
    """
    C{factory} behind TLS, as the server side, with the settings
    C{options} (such as L{NodeTLS.server}): its protocols see only the
    bytes that arrive after a successful handshake.

    @param clock: schedules the coalescing of small writes; the global
        reactor by default.
    """
    return _TLSServerFactory(options, False, factory, clock)
