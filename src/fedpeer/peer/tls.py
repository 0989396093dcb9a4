"""The node's TLS certificate, bound to its DID by the DID's own signature.

A node serving HTTPS holds a P-256 key and a self-signed certificate (made
with the ``cryptography`` package on first start; P-256 because both Python's
``ssl`` and httpx accept it everywhere). No certificate authority vouches for
it: the node's signed manifest (``tls_spki_sha256``) and its signed mDNS TXT
(``tls``) carry the **pin**, the SHA-256 of the certificate's
SubjectPublicKeyInfo (DER), base64url without padding (43 characters), so the
certificate is as trustworthy as the DID that signed the pin. See
docs/protocol.md §6.6 for the rule clients apply.

Files in the data dir (a contract, mode 0600):

- ``tls.key`` / ``tls.crt``            the key (PKCS#8 PEM) and certificate (PEM) served now
- ``tls.next.key`` / ``tls.next.crt``  the announced next certificate during a rotation

Rotation (:meth:`TlsIdentity.announce_next` then :meth:`TlsIdentity.activate_next`):
the next certificate's pin is added to the manifest (re-signed at once) before
the certificate is served; activating it swaps the served certificate for new
handshakes (open connections keep theirs) and the old pin leaves the manifest.
A client whose cached manifest lacks the new pin re-fetches the manifest on
the mismatch and accepts the certificate if the fresh manifest, signed by the
same DID, lists it (§6.6).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .._files import write_private
from ..errors import ConfigInvalid, DataDirError
from ..identity.canonical import b64url_encode

__all__ = [
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_NEXT_CERT_FILE",
    "TLS_NEXT_KEY_FILE",
    "TlsCert",
    "TlsIdentity",
    "local_client_context",
    "spki_sha256",
    "spki_sha256_of_der",
]

log = logging.getLogger("fedpeer.tls")

TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"
TLS_NEXT_KEY_FILE = "tls.next.key"
TLS_NEXT_CERT_FILE = "tls.next.crt"
CERT_VALIDITY_DAYS = 3650  # the pin, not the dates, is what clients check


def spki_sha256_of_der(cert_der: bytes) -> str:
    """The pin of a DER certificate: base64url(SHA-256(SubjectPublicKeyInfo DER)),
    no padding. Raises ValueError for bytes that are not a certificate."""
    cert = x509.load_der_x509_certificate(cert_der)
    return spki_sha256(cert)


def spki_sha256(cert: x509.Certificate) -> str:
    """The pin of a certificate (see :func:`spki_sha256_of_der`)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url_encode(hashlib.sha256(spki).digest())


@attrs.frozen
class TlsCert:
    """One key and self-signed certificate (PEM) and its pin."""

    key_pem: bytes = attrs.field(repr=False)
    cert_pem: bytes
    pin: str

    @classmethod
    def generate(cls, did: str) -> TlsCert:
        """A fresh P-256 key and a self-signed certificate naming ``did``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpeer node")])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(did)]),
                critical=False,
            )
        )
        cert = builder.sign(key, hashes.SHA256())
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            pin=spki_sha256(cert),
        )

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> TlsCert:
        """Read a stored pair (ValueError when it does not parse, or when the key
        is not the certificate's)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise ValueError("the key is not the certificate's")
        return cls(key_pem=key_pem, cert_pem=cert_pem, pin=spki_sha256(cert))

    def load_into(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` serve this certificate (new handshakes only). ``ssl`` reads
        certificates from files only: on Linux the key goes through an anonymous
        in-memory file (``memfd_create``, never on a disk); elsewhere through a
        private (0600) temporary file, removed at once."""
        pem = self.key_pem + b"\n" + self.cert_pem
        fd = -1
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            try:
                fd = os.memfd_create("fedpeer-tls", os.MFD_CLOEXEC)
            except OSError:  # refused (a seccomp sandbox): the private temp file below
                fd = -1
        if fd >= 0:
            try:
                view = memoryview(pem)
                while view:
                    view = view[os.write(fd, view) :]
                path = f"/proc/self/fd/{fd}"
                ctx.load_cert_chain(certfile=path, keyfile=path)
                return
            finally:
                os.close(fd)
        fd, name = tempfile.mkstemp(prefix="fedpeer-tls-", suffix=".pem")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            ctx.load_cert_chain(certfile=name, keyfile=name)
        finally:
            os.unlink(name)


def _read_pair(ddir: Path, key_name: str, cert_name: str) -> TlsCert | None:
    key_path, cert_path = ddir / key_name, ddir / cert_name
    if not key_path.exists() and not cert_path.exists():
        return None
    try:
        if key_path.stat().st_mode & 0o077:
            raise ConfigInvalid(
                f"{key_path} is readable by others (mode {key_path.stat().st_mode & 0o777:o}); "
                f"run `chmod 600 {key_path}`"
            )
        return TlsCert.from_pem(key_path.read_bytes(), cert_path.read_bytes())
    except OSError as exc:
        raise DataDirError(
            f"cannot read the TLS key pair {key_path} / {cert_path}: {exc.strerror or exc}; "
            "remove both files to make a new certificate (peers re-learn the pin from the "
            "signed manifest)"
        ) from exc
    except ValueError as exc:
        raise DataDirError(
            f"{key_path} / {cert_path} is not a valid key and certificate ({exc}); remove both "
            "files to make a new one"
        ) from exc


def _write_pair(ddir: Path, key_name: str, cert_name: str, cert: TlsCert) -> None:
    try:
        write_private(ddir / key_name, cert.key_pem)
        write_private(ddir / cert_name, cert.cert_pem)
    except OSError as exc:
        raise DataDirError(
            f"cannot write the TLS key pair {ddir / key_name}: {exc.strerror or exc}; make room "
            "(or fix the permissions) and start again"
        ) from exc


def _half_activated(ddir: Path, nxt: TlsCert) -> bool:
    """True when ``tls.key`` or ``tls.crt`` already holds ``nxt``'s half (an
    activation interrupted between the two writes)."""
    try:
        key = (ddir / TLS_KEY_FILE).read_bytes()
        crt = (ddir / TLS_CERT_FILE).read_bytes()
    except OSError:
        return False
    return key == nxt.key_pem or crt == nxt.cert_pem


def local_client_context(data_dir: Path) -> ssl.SSLContext | None:
    """For the operator's own tools (CLI, scripts) talking to the node of
    ``data_dir``: a client context that trusts exactly that node's certificate
    files (``tls.crt`` and a pending ``tls.next.crt``), no certificate authority
    and no host name (the files are the pin). None when the data dir has no
    certificate (the node serves plain HTTP). Blocking; raises OSError."""
    pems = [
        (data_dir / name).read_bytes()
        for name in (TLS_CERT_FILE, TLS_NEXT_CERT_FILE)
        if (data_dir / name).exists()
    ]
    if not pems:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=b"\n".join(pems).decode("ascii"))
    return ctx


@attrs.define(eq=False)
class TlsIdentity:
    """The certificate a node serves, the announced next one, and the live
    server ``ssl.SSLContext`` (made by :meth:`server_context`).

    ``data_dir`` None keeps everything in memory (an ephemeral node). Blocking
    file I/O: call from a worker thread in async code.
    """

    did: str
    current: TlsCert
    next: TlsCert | None = None
    data_dir: Path | None = None
    _contexts: list[ssl.SSLContext] = attrs.field(factory=list)

    @classmethod
    def load_or_create(cls, did: str, data_dir: Path | None) -> TlsIdentity:
        """Read ``tls.key``/``tls.crt`` (and a pending ``tls.next.*``) from
        ``data_dir``, creating the first pair (mode 0600) when absent. Raises
        DataDirError for unreadable or invalid files, CONFIG_INVALID for a key
        file readable by others."""
        if data_dir is None:
            return cls(did=did, current=TlsCert.generate(did))
        nxt = _read_pair(data_dir, TLS_NEXT_KEY_FILE, TLS_NEXT_CERT_FILE)
        try:
            current = _read_pair(data_dir, TLS_KEY_FILE, TLS_CERT_FILE)
        except DataDirError:
            if nxt is None or not _half_activated(data_dir, nxt):
                raise
            # activate_next stopped between the key and the certificate: finish it.
            current, nxt = nxt, None
            _write_pair(data_dir, TLS_KEY_FILE, TLS_CERT_FILE, current)
            for name in (TLS_NEXT_KEY_FILE, TLS_NEXT_CERT_FILE):
                (data_dir / name).unlink(missing_ok=True)
            log.warning("finished an interrupted TLS rotation: serving pin %s", current.pin)
        if current is None:
            current = TlsCert.generate(did)
            _write_pair(data_dir, TLS_KEY_FILE, TLS_CERT_FILE, current)
            log.info(
                "created the TLS certificate %s (pin %s)", data_dir / TLS_CERT_FILE, current.pin
            )
        return cls(did=did, current=current, next=nxt, data_dir=data_dir)

    @property
    def pins(self) -> list[str]:
        """What the manifest announces: the served pin first, then the next one."""
        return [self.current.pin] + ([self.next.pin] if self.next is not None else [])

    def server_context(self) -> ssl.SSLContext:
        """A server context serving :attr:`current` (TLS 1.2+); kept, so a rotation
        swaps the certificate it serves."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        self.current.load_into(ctx)
        self._contexts.append(ctx)
        return ctx

    def announce_next(self) -> TlsCert:
        """Create the next certificate (``tls.next.*``) to be announced in the
        manifest before it is served; return it (the existing one if pending)."""
        if self.next is None:
            nxt = TlsCert.generate(self.did)
            if self.data_dir is not None:
                _write_pair(self.data_dir, TLS_NEXT_KEY_FILE, TLS_NEXT_CERT_FILE, nxt)
            self.next = nxt
            log.info("announcing the next TLS certificate (pin %s)", nxt.pin)
        return self.next

    def activate_next(self) -> TlsCert:
        """Serve the announced next certificate from now on (new handshakes); it
        becomes ``tls.key``/``tls.crt``. CONFIG_INVALID when none was announced."""
        nxt = self.next
        if nxt is None:
            raise ConfigInvalid("no next TLS certificate was announced: announce_next() first")
        if self.data_dir is not None:
            _write_pair(self.data_dir, TLS_KEY_FILE, TLS_CERT_FILE, nxt)
            for name in (TLS_NEXT_KEY_FILE, TLS_NEXT_CERT_FILE):
                (self.data_dir / name).unlink(missing_ok=True)
        for ctx in self._contexts:
            nxt.load_into(ctx)
        log.info("now serving the TLS certificate with pin %s (was %s)", nxt.pin, self.current.pin)
        self.current, self.next = nxt, None
        return nxt
