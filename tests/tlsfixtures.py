"""Test certificates for TLS tests (trustme), and server-side contexts.

:func:`tls_ca` returns one :class:`TLSCertificates` per process (making keys
is the slow part): a trusted CA and, issued by it,

* ``server``: a good server certificate for "localhost", "127.0.0.1" and
  "::1";
* ``wrong_host``: a valid certificate for "wrong.example" only;
* ``expired``: for the same identities as ``server``, expired yesterday;
* ``client``: a client certificate (subject CN "smtplug test client");

and, not trusted by clients that trust ``ca``,

* ``untrusted``: a certificate for the good identities issued by its own CA
  (``untrusted_ca``) that clients do not trust;
* ``self_signed``: a genuinely self-signed certificate (PEM cert and key)
  for the good identities.

Every certificate uses ECDSA P-256 keys and ECDSA-SHA256 signatures
(trustme's default).

:func:`write_files` puts the PEM files a client needs into a directory;
:func:`server_context` builds a server-side :class:`ssl.SSLContext` for any
of the certificates, optionally requiring a client certificate, limiting the
protocol versions or recording the SNI host name the client sent.

Use from a test module (tests/ is on ``sys.path``)::

    from tlsfixtures import tls_ca, server_context, write_files

    @pytest.fixture(scope="session")
    def certs():
        return tls_ca()
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

__all__ = [
    "CLIENT_COMMON_NAME",
    "GOOD_IDENTITIES",
    "WRONG_HOST",
    "ClientFiles",
    "PEMCert",
    "SNIRecorder",
    "TLSCertificates",
    "server_context",
    "tls_ca",
    "write_files",
]

GOOD_IDENTITIES = ("localhost", "127.0.0.1", "::1")
WRONG_HOST = "wrong.example"
CLIENT_COMMON_NAME = "smtplug test client"


@dataclass(frozen=True)
class PEMCert:
    """A certificate (chain) and its key as PEM, whatever issued it."""

    chain_pem: bytes  # leaf first
    key_pem: bytes

    @property
    def der(self) -> bytes:
        """The leaf certificate as DER."""
        leaf = x509.load_pem_x509_certificate(self.chain_pem)
        return leaf.public_bytes(serialization.Encoding.DER)

    def configure_cert(self, context: ssl.SSLContext | SSL.Context, directory: Path) -> None:
        """Load this certificate and key into a server ``context`` (of
        :mod:`ssl` or pyOpenSSL), through files written into ``directory``."""
        cert_path = directory / f"cert-{id(self)}.pem"
        key_path = directory / f"key-{id(self)}.pem"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key_pem)
        if isinstance(context, ssl.SSLContext):
            context.load_cert_chain(cert_path, key_path)
        else:
            context.use_certificate_chain_file(str(cert_path))
            context.use_privatekey_file(str(key_path))


def _from_leaf(leaf: trustme.LeafCert) -> PEMCert:
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return PEMCert(chain_pem=chain, key_pem=leaf.private_key_pem.bytes())


def _self_signed(identities: tuple[str, ...]) -> PEMCert:
    """A leaf certificate signed by its own key (ECDSA-SHA256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed smtplug test")])
    sans: list[x509.GeneralName] = []
    for identity in identities:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(identity)))
        except ValueError:
            sans.append(x509.DNSName(identity))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return PEMCert(
        chain_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class TLSCertificates:
    """The CA and the certificates described in the module docstring."""

    ca: trustme.CA
    server: PEMCert
    wrong_host: PEMCert
    expired: PEMCert
    client: PEMCert
    untrusted_ca: trustme.CA
    untrusted: PEMCert
    self_signed: PEMCert

    @property
    def ca_pem(self) -> bytes:
        """The trusted CA certificate as PEM."""
        return self.ca.cert_pem.bytes()


@functools.cache
def tls_ca() -> TLSCertificates:
    """The test certificates, made once per process."""
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    untrusted_ca = trustme.CA()
    return TLSCertificates(
        ca=ca,
        server=_from_leaf(ca.issue_cert(*GOOD_IDENTITIES)),
        wrong_host=_from_leaf(ca.issue_cert(WRONG_HOST)),
        expired=_from_leaf(
            ca.issue_cert(
                *GOOD_IDENTITIES,
                not_before=now - datetime.timedelta(days=10),
                not_after=now - datetime.timedelta(days=1),
            )
        ),
        client=_from_leaf(ca.issue_cert("client.example", common_name=CLIENT_COMMON_NAME)),
        untrusted_ca=untrusted_ca,
        untrusted=_from_leaf(untrusted_ca.issue_cert(*GOOD_IDENTITIES)),
        self_signed=_self_signed(GOOD_IDENTITIES),
    )


@dataclass(frozen=True)
class ClientFiles:
    """Paths of the PEM files a client is configured with."""

    cafile: str  # the trusted CA
    client_cert: str  # the client certificate chain
    client_key: str  # its private key
    capath: str  # a directory holding only the CA under its OpenSSL hash name


def write_files(certs: TLSCertificates, directory: Path) -> ClientFiles:
    """Write the client-side PEM files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cafile = directory / "ca.pem"
    cafile.write_bytes(certs.ca_pem)
    client_cert = directory / "client-cert.pem"
    client_cert.write_bytes(certs.client.chain_pem)
    client_key = directory / "client-key.pem"
    client_key.write_bytes(certs.client.key_pem)
    capath = directory / "capath"
    capath.mkdir(exist_ok=True)
    (capath / f"{_subject_hash(certs.ca_pem)}.0").write_bytes(certs.ca_pem)
    return ClientFiles(str(cafile), str(client_cert), str(client_key), str(capath))


def _subject_hash(pem: bytes) -> str:
    """OpenSSL's subject name hash (the c_rehash file name) of a certificate."""
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, pem)
    return f"{cert.subject_name_hash():08x}"


@dataclass
class SNIRecorder:
    """Records the server name each handshake carried (None when absent)."""

    names: list[str | None] = field(default_factory=list)

    def __call__(self, sslobj: object, server_name: str | None, context: ssl.SSLContext) -> None:
        self.names.append(server_name)


def server_context(
    cert: PEMCert,
    directory: Path,
    *,
    client_ca: bytes | None = None,
    client_verify: ssl.VerifyMode = ssl.CERT_REQUIRED,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    sni: Callable[[object, str | None, ssl.SSLContext], None] | None = None,
) -> ssl.SSLContext:
    """A server-side context presenting ``cert``.

    ``client_ca`` (PEM) makes the server require a client certificate issued
    by it (with ``client_verify=ssl.CERT_OPTIONAL``: request one, and accept
    a client that sends none); ``minimum_version``/``maximum_version`` limit
    the protocol (old versions also lower the security level so OpenSSL may
    offer them);
    ``sni`` is installed as the ``sni_callback``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context, directory)
    if minimum_version is not None:
        context.minimum_version = minimum_version
    if maximum_version is not None:
        with warnings.catch_warnings():
            # Old versions are deprecated: offering them is the point here.
            warnings.simplefilter("ignore", DeprecationWarning)
            if maximum_version < ssl.TLSVersion.TLSv1_2:
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
                if minimum_version is None:
                    context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum_version
    if client_ca is not None:
        context.verify_mode = client_verify
        context.load_verify_locations(cadata=client_ca.decode("ascii"))
    if sni is not None:
        context.sni_callback = sni
    return context
