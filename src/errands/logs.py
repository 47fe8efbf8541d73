"""Log output of the ``errands`` logger: readable text lines or JSON lines.

errands logs with ``extra={...}`` fields (``job_class``, ``job_uuid``, ``queue``,
``attempt``, ...). Both formats show them: text appends them as ``key=value``,
JSON makes them keys of the object.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

_HANDLER_MARK = "_errands_handler"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with ``extra=``, in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(record.created, datetime.UTC)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO  job finished job_class=app.Send status=SUCCESSFUL``"""

    def format(self, record: logging.LogRecord) -> str:
        when = _timestamp(record).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        parts = [when, f"{record.levelname:<7}", record.getMessage()]
        parts += [f"{key}={_text_value(value)}" for key, value in extra_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _timestamp(record).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    fmt = fmt.lower()
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log_format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send the ``errands`` logger's records at ``level`` and above to stderr in ``fmt``.

    Calling it again replaces the handler it installed before (never duplicates it).
    Records do not propagate to the root logger, so they are printed once.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log_level: expected one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger("errands")
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_MARK, False):
            logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
    return handler


__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "extra_fields",
    "make_formatter",
]
