"""Secrets in the agent's config that live in a file of their own: a systemd credential
(``LoadCredential=``) or an absolute path, resolved into the password while the config is
validated."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
_MAX_SECRET_CHARS = 4096
PASSWORD_FILE_HELP = (
    "File holding the password (one line; a trailing newline is dropped). A relative name is a "
    "systemd credential, read from $CREDENTIALS_DIRECTORY (the unit's LoadCredential=NAME:PATH, see "
    "docs/install.md); an absolute path is read as it is. Read at start-up and on SIGHUP; not with "
    "password."
)


def password_from_file(data: Any, info: ValidationInfo) -> Any:
    """Resolve ``password_file`` into ``password`` while the section is validated, so every user of
    the password (the MQTT link, the fleet's HTTP auth) gets it as before and a missing credential
    is a config error at start-up (or a kept config on SIGHUP), never a failure later."""
    if not isinstance(data, dict) or data.get("password_file") is None:
        return data
    if data.get("password") is not None:
        raise ValueError("password and password_file are mutually exclusive: keep one of them")
    name = Path(str(data["password_file"]))
    environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
    if name.is_absolute():
        path = name
    else:
        folder = environ.get(CREDENTIALS_ENV)
        if not folder:
            raise ValueError(
                f"password_file = {str(name)!r} is a credential name, but ${CREDENTIALS_ENV} is not set: "
                f"start the agent from a unit with LoadCredential={name}:/path/to/secret, or give an "
                "absolute path"
            )
        path = Path(folder) / name
    try:
        secret = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        hint = f" (is LoadCredential={name}:/path/to/secret in the unit?)" if not name.is_absolute() else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"password_file: cannot read {path}: {reason}{hint}") from exc
    secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret or len(secret) > _MAX_SECRET_CHARS or "\n" in secret:
        raise ValueError(
            f"password_file: {path} must hold one non-empty line of at most {_MAX_SECRET_CHARS} characters"
        )
    return {**data, "password": secret}
