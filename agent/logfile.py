"""The agent's own bounded log file, and reading it back for a remote log request.

``state_dir/log/agent.log`` is rotated at ``[log] max_bytes`` with ``backups`` old files, so the log
never takes more than ``(backups + 1) * max_bytes`` of disk. Each record starts with a UTC
timestamp and its level, which is what a request filters on; continuation lines (tracebacks)
belong to the record above them. Everything read back goes through ``redact`` first.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

from agent.config_sections import LogConfig
from protocol.remote import LogLevel, LogRequest

LOG_NAME = "agent.log"
_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
_HEAD = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")

_REDACTIONS = (
    # key = value, key: value, "key": "value" for anything that names a secret
    re.compile(
        r"(?i)((?:pass(?:word|wd)?|secret|token|api[_-]?key|private[_-]?key|credentials?|auth)"
        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]+)"
    ),
    re.compile(r"(?i)(\b(?:Bearer|Basic)\s+)([A-Za-z0-9._~+/=-]{6,})"),
    re.compile(r"(?i)(\w+://[^/\s:@]+:)([^@\s/]+)(?=@)"),  # user:password@ in a URL
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with passwords, tokens, keys and the agent's own configured secrets replaced."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _PEM.sub(REDACTED, text)
    for pattern in _REDACTIONS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _utc_formatter() -> logging.Formatter:
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # the timestamps a request's since is compared with: UTC
    return formatter


def install(state_dir: Path, config: LogConfig) -> RotatingFileHandler | None:
    """Add the rotating file handler to the root logger (None when ``[log] file = false``)."""
    apply_level(config.level)
    if not config.file:
        return None
    folder = state_dir / "log"
    folder.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(
        folder / LOG_NAME, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
    )
    handler.setFormatter(_utc_formatter())
    logging.getLogger().addHandler(handler)
    return handler


_initial_level: list[int] = []
"""The root logger's level before the first ``apply_level`` (the command line's: -v or not)."""


def apply_level(level: LogLevel | None) -> None:
    """The least level logged, now (a remote config or SIGHUP may change it); None: the level the
    process started with."""
    root = logging.getLogger()
    if not _initial_level:
        _initial_level.append(root.level)
    root.setLevel(level.number if level is not None else _initial_level[0])


def remove(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


@dataclass(frozen=True)
class Excerpt:
    text: str
    lines: int
    truncated: bool


def _files(folder: Path) -> list[Path]:
    """Oldest first: agent.log.N ... agent.log.1, agent.log."""
    rotated = [p for p in folder.glob(f"{LOG_NAME}.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: -int(p.suffix[1:]))
    current = folder / LOG_NAME
    return rotated + ([current] if current.exists() else [])


def _records(folder: Path) -> Iterator[tuple[datetime | None, int, list[str]]]:
    """Each record: (its time, its level number, its lines)."""
    when: datetime | None = None
    level = logging.INFO
    lines: list[str] = []
    for path in _files(folder):
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                head = _HEAD.match(line)
                if head is not None:
                    if lines:
                        yield when, level, lines
                    when = datetime.fromisoformat(head.group(1)).replace(tzinfo=UTC)
                    level = LogLevel(head.group(2).lower()).number
                    lines = []
                lines.append(line.rstrip("\n"))
    if lines:
        yield when, level, lines


def excerpt(folder: Path, request: LogRequest, max_bytes: int, secrets: Iterable[str] = ()) -> Excerpt:
    """The newest ``request.lines`` lines at ``request.level`` or above (since ``request.since``),
    redacted, at most ``min(request.max_bytes, max_bytes)`` bytes of UTF-8: the oldest go first."""
    least = request.level.number
    since = request.since.astimezone(UTC) if request.since is not None else None
    # A record has at least one line: the newest ``lines`` records hold the newest ``lines`` lines.
    records: deque[list[str]] = deque(maxlen=request.lines)
    for when, level, lines in _records(folder):
        if level < least or (since is not None and (when is None or when < since)):
            continue
        records.append(lines)
    secrets = list(secrets)
    # Whole records are redacted, so a secret split over lines (a PEM key) is caught too.
    kept = [line for lines in records for line in redact("\n".join(lines), secrets).split("\n")]
    kept = kept[-request.lines :]
    cap = min(request.max_bytes, max_bytes)
    out: deque[str] = deque()
    size = 0
    truncated = False
    for line in reversed(kept):  # newest first, so what does not fit is the oldest
        cost = len(line.encode()) + 1
        if size + cost > cap:
            truncated = True
            break
        out.appendleft(line)
        size += cost
    return Excerpt(text="\n".join(out) + ("\n" if out else ""), lines=len(out), truncated=truncated)
