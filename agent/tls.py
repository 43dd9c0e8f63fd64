"""TLS for the agent's connections to the MQTT broker and the fleet's HTTPS API.

One place builds the client ``ssl.SSLContext`` from the configured files (each checked at
start-up: a missing, unreadable or non-PEM file is named), and one place turns a refused
handshake into words an operator can act on (untrusted, expired, wrong host name, client
certificate required). Standard library only: the serving process already carries ``ssl``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from agent.config import MqttTlsConfig


class TlsFileError(ConfigError):
    """A CA, certificate or key file for TLS is missing, unreadable, not PEM, or does not match."""


class TlsHandshakeError(AgentError):
    """A TLS handshake failed: the peer's certificate was refused here, or ours was refused there."""


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise TlsFileError(f"{what} {path} does not exist (or is not a file)")
    if not os.access(path, os.R_OK):
        raise TlsFileError(f"{what} {path} is not readable by this user (uid {os.geteuid()})")


def client_context(
    *,
    purpose: str,
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server against ``ca_file`` (unset: the system's
    CA store) and, with ``cert_file``/``key_file``, presents this device's certificate.

    ``purpose`` names the setting in errors, e.g. ``[mqtt.tls]``. Raises ``TlsFileError``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _readable(ca_file, f"{purpose} ca_file")
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except ssl.SSLError as exc:
            raise TlsFileError(
                f"{purpose} ca_file {ca_file} holds no PEM CA certificate ({exc.reason or exc})"
            ) from exc
    if (cert_file is None) != (key_file is None):
        raise TlsFileError(f"{purpose}: cert_file and key_file go together; set both or neither")
    if cert_file is not None and key_file is not None:
        _readable(cert_file, f"{purpose} cert_file")
        _readable(key_file, f"{purpose} key_file")
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except ssl.SSLError as exc:
            raise TlsFileError(
                f"{purpose}: cannot use the certificate {cert_file} with the key {key_file} "
                f"({exc.reason or exc}); both must be PEM, the key unencrypted and matching the certificate"
            ) from exc
    context.check_hostname = check_hostname
    return context


_VERIFY_HINTS: dict[int, str] = {
    9: "its certificate is not valid yet: check this device's clock (NTP) or the certificate's dates",
    10: "its certificate has expired (or this device's clock is wrong): renew the server certificate",
    18: "its certificate is not trusted: it is self-signed, not issued by the configured CA (ca_file)",
    19: "its certificate is not trusted: its chain ends in a CA other than the configured one (ca_file)",
    20: "its certificate is not trusted: it was not issued by the configured CA (ca_file)",
    21: "its certificate is not trusted: it was not issued by the configured CA (ca_file)",
    62: "its certificate does not name the host this device connects to",
    64: "its certificate does not name the host this device connects to (an IP address)",
}
"""OpenSSL X509_V_ERR codes -> what they mean for the operator."""

_ALERT_HINTS: dict[str, str] = {
    "CERTIFICATE_REQUIRED": "it requires a client certificate: set cert_file and key_file",
    "BAD_CERTIFICATE": "it refused this device's client certificate (not issued by its CA?)",
    "UNKNOWN_CA": "it does not trust the CA that issued this device's client certificate",
    "CERTIFICATE_EXPIRED": "it says this device's client certificate has expired",
    "WRONG_VERSION_NUMBER": "it does not speak TLS on this port (a plain listener?)",
}


def describe_handshake(exc: BaseException, peer: str) -> str:
    """A refused handshake with ``peer`` (e.g. ``MQTT broker 10.0.0.5:8883``), in words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code, "its certificate is not trusted")
        return f"TLS: the {peer} was refused: {hint} ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        for key, hint in _ALERT_HINTS.items():
            if key in reason:
                return f"TLS: the {peer} ended the handshake: {hint} ({reason})"
        return f"TLS: the handshake with the {peer} failed: {reason}"
    return f"TLS: the handshake with the {peer} failed: {exc}"


def record_handshake_errors(context: ssl.SSLContext, sink: Callable[[BaseException], None]) -> None:
    """Make every socket of ``context`` hand a failed handshake to ``sink`` before it raises.

    paho runs the handshake on its network thread and reports a failed connect without the
    cause; this is how the MQTT link learns why (``SSLContext.sslsocket_class`` is public API).
    A TLS error on a later read (TLS 1.3 alerts) goes to ``sink`` too.
    """

    class _Recording(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except OSError as exc:  # ssl.SSLError is an OSError
                sink(exc)
                raise

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            # TLS 1.3: a server that refuses the client's certificate says so after the handshake,
            # in an alert read with the first bytes.
            try:
                return super().recv(buflen, flags)
            except ssl.SSLError as exc:
                if "ALERT" in str(exc.reason or ""):  # the peer refused us; not a dropped connection
                    sink(exc)
                raise

    context.sslsocket_class = _Recording


def mqtt_context(tls: MqttTlsConfig) -> ssl.SSLContext | None:
    """The broker's TLS context from ``[mqtt.tls]``; None when TLS is off."""
    if not tls.active:
        return None
    return client_context(
        purpose="[mqtt.tls]",
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        check_hostname=tls.check_hostname,
    )
