"""Who is calling: operator tokens with roles, and devices with their provisioned secret. No I/O.

Operators send ``Authorization: Bearer <token>``; a token has one role, and roles are ordered
(viewer < operator < admin). Devices send HTTP Basic ``<device id>:<secret>``: the same secret
Mosquitto checks from its password file, stored here in Mosquitto's own PBKDF2-SHA512 format
(``$7$``), so one ``edgefleet device add`` gives a device both its broker login and its API login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from fleet.errors import FleetError

_COMMENT = re.compile(r"(?:^|\s)#")
PBKDF2_ITERATIONS = 101
"""What ``mosquitto_passwd`` of Mosquitto 2.0 writes; the broker reads any count."""
SALT_BYTES = 12


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role | None
    """None for a device."""
    device_id: str | None = None


@dataclass(frozen=True)
class OperatorToken:
    name: str
    role: Role
    digest: bytes
    """sha256 of the token: the token itself is not kept in memory after loading."""


class AuthError(FleetError):
    """No valid credentials (401)."""


class ForbiddenError(FleetError):
    """Valid credentials without the role the request needs (403)."""


def parse_tokens(text: str, source: str = "tokens") -> list[OperatorToken]:
    """Lines of ``ROLE NAME TOKEN`` (``#`` starts a comment), e.g. ``admin alice 4f9c…``."""
    tokens: list[OperatorToken] = []
    for number, raw in enumerate(text.splitlines(), 1):
        # A comment is a line starting with # or text after whitespace and #: a # inside a token stays.
        line = _COMMENT.split(raw, maxsplit=1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise FleetError(f"{source}:{number}: expected 'ROLE NAME TOKEN'")
        role_name, name, token = parts
        try:
            role = Role[role_name.upper()]
        except KeyError:
            raise FleetError(
                f"{source}:{number}: role {role_name!r} is not viewer, operator or admin"
            ) from None
        if len(token) < 16:
            raise FleetError(f"{source}:{number}: the token of {name} is shorter than 16 characters")
        tokens.append(OperatorToken(name, role, hashlib.sha256(token.encode()).digest()))
    return tokens


def load_tokens(path: Path) -> list[OperatorToken]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read the tokens file {path}: {exc.strerror or exc}") from exc
    return parse_tokens(text, str(path))


def find_token(tokens: list[OperatorToken], presented: str) -> OperatorToken | None:
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for token in tokens:  # compare against every one: no early exit to time
        if hmac.compare_digest(token.digest, digest):
            found = token
    return found


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def hash_secret(secret: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's password-file hash: ``$7$ITER$base64(salt)$base64(pbkdf2-sha512)``."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(secret: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(iterations), 64)
    except ValueError:
        return False
    return hmac.compare_digest(expected, got)
