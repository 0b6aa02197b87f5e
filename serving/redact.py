"""Keep secrets out of logs and error messages.

The Redis password of the production profile reaches the process in the URL of
``cfg.feast.redis_env`` or in ``cfg.serving.redis_password_env``. :func:`secrets_of` collects it
(raw and percent-encoded), :func:`redact` replaces every occurrence in a text and
:func:`install_log_redaction` applies the same to every log record of the process.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from saviorrec.config import Config

MASK = "***"
_SECRETS: set[str] = set()
_lock = threading.Lock()
_installed = False


def secrets_of(cfg: Config) -> set[str]:
    """Every secret string the serving process may hold, in the forms it may be printed."""
    found: set[str] = set()
    url = os.environ.get(cfg.feast.redis_env, "")
    try:
        password = urlsplit(url).password if url else None
    except ValueError:  # an unparsable URL: its error message comes from feature_repo
        password = None
    extra = os.environ.get(cfg.serving.redis_password_env) if cfg.serving.redis_password_env else None
    for secret in (password, extra):
        if secret:
            found |= {secret, quote(secret, safe=""), unquote(secret)}
    return {s for s in found if s}


def redact(text: str, secrets: set[str] | None = None) -> str:
    """``text`` with each known secret replaced by ``***`` (longest first)."""
    for secret in sorted(_SECRETS if secrets is None else secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class _RedactingRecord(logging.LogRecord):
    """A log record whose message and traceback text are redacted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and _SECRETS:
            self.exc_text = redact(logging.Formatter().formatException(self.exc_info))

    def getMessage(self) -> str:
        return redact(super().getMessage())


def install_log_redaction(secrets: set[str]) -> None:
    """Register ``secrets`` and make every log record of the process redact them."""
    global _installed
    with _lock:
        _SECRETS.update(secrets)
        if not _installed:
            logging.setLogRecordFactory(_RedactingRecord)
            _installed = True
