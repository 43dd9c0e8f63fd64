"""HTTPS for ``fleet serve``: the certificate and key are checked before uvicorn gets them.

uvicorn loads them itself (``ssl_certfile``/``ssl_keyfile``) and, when they are wrong, fails with
an OpenSSL error that names neither file; this check names the file and the problem first.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from fleet.errors import FleetError


class TlsSetupError(FleetError):
    """The HTTPS certificate or key of ``fleet serve`` is missing, unreadable or unusable."""


def check_server_files(cert_file: Path, key_file: Path) -> None:
    """Raise ``TlsSetupError`` unless ``cert_file`` and ``key_file`` make a usable server identity."""
    for what, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        if not path.is_file():
            raise TlsSetupError(f"{what} {path} does not exist (or is not a file)")
        try:
            path.read_bytes()
        except OSError as exc:
            raise TlsSetupError(f"{what} {path} is not readable: {exc.strerror or exc}") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"cannot serve HTTPS with the certificate {cert_file} and the key {key_file} "
            f"({exc.reason or exc}): both must be PEM, the key unencrypted and matching the certificate"
        ) from exc


def mqtt_client_context(ca_file: Path, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """The ingester's TLS context: the broker verified against ``ca_file`` (host name checked), the
    fleet's client certificate presented when given. Raises ``TlsSetupError`` naming a bad file."""
    for what, path in (("--mqtt-ca", ca_file), ("--mqtt-cert", cert_file), ("--mqtt-key", key_file)):
        if path is not None and not path.is_file():
            raise TlsSetupError(f"{what} {path} does not exist (or is not a file)")
    if (cert_file is None) != (key_file is None):
        raise TlsSetupError("--mqtt-cert and --mqtt-key go together: give both or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise TlsSetupError(f"--mqtt-ca {ca_file} holds no PEM CA certificate ({exc.reason or exc})") from exc
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"cannot use the certificate {cert_file} with the key {key_file} ({exc.reason or exc})"
            ) from exc
    return context
