"""Client certificates for devices, issued from the operator's CA by ``edgefleet device add
--ca-cert/--ca-key`` on the operator's machine (the CA key never goes to the fleet).

The certificate's CN is the device id: with Mosquitto's ``require_certificate true`` and
``use_identity_as_username true`` it is the device's MQTT user name, so the same ACL patterns
apply and the device needs no broker password.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import FleetError

if TYPE_CHECKING:
    from cryptography import x509

DEVICE_CONFIG_DIR = "/etc/edgefleet"
"""Where install.sh puts the device's files; the TOML names the certificate files there."""


class DeviceCertError(FleetError):
    """The operator CA's certificate or key is missing, unreadable or unusable."""


@dataclass(frozen=True)
class DeviceCert:
    cert: Path
    key: Path
    ca: Path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DeviceCertError(f"{what} {path}: {exc.strerror or exc}") from exc


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(_read(ca_cert, "--ca-cert"))
    except ValueError as exc:
        raise DeviceCertError(f"--ca-cert {ca_cert} is not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(_read(ca_key, "--ca-key"), password=None)
    except (ValueError, TypeError) as exc:
        raise DeviceCertError(f"--ca-key {ca_key} is not an unencrypted PEM private key") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, public) != cert.public_key().public_bytes(pem, public):
        raise DeviceCertError(f"--ca-key {ca_key} is not the key of --ca-cert {ca_cert}")
    return cert, key


def issue_device_cert(ca_cert: Path, ca_key: Path, device_id: str, out: Path, days: int = 825) -> DeviceCert:
    """Write ``out/ID.crt`` (CN=ID, client auth, signed by the CA), ``out/ID.key`` (0600) and
    ``out/ca.crt`` (the CA certificate, for ``[mqtt.tls] ca_file``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    authority, signer = _load_ca(ca_cert, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    algorithm = (
        None if isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    )
    try:
        cert = builder.sign(signer, algorithm)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DeviceCertError(f"--ca-key {ca_key} cannot sign certificates: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    issued = DeviceCert(out / f"{device_id}.crt", out / f"{device_id}.key", out / "ca.crt")
    issued.key.touch(mode=0o600)
    issued.key.chmod(0o600)
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.ca.write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    return issued


def tls_toml(device_id: str) -> str:
    """The agent's ``[mqtt.tls]`` section naming the issued files where the device keeps them."""
    return (
        "\n[mqtt.tls]\n"
        f'ca_file = "{DEVICE_CONFIG_DIR}/ca.crt"\n'
        f'cert_file = "{DEVICE_CONFIG_DIR}/{device_id}.crt"\n'
        f'key_file = "{DEVICE_CONFIG_DIR}/{device_id}.key"\n'
    )
