"""Structured logging for every paygate process, with PAN redaction and request ids."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def luhn_complete(body: str) -> str:
    """`body` followed by the check digit that makes it pass Luhn (for test and bench cards)."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


def _mask_match(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = re.sub(r"\D", "", raw)
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return f"{digits[:6]}{'*' * (len(digits) - 10)}{digits[-4:]}"
    return raw


def redact(text: str) -> str:
    """Mask every 13-19 digit sequence (spaces or dashes allowed) that passes Luhn."""
    return _DIGIT_RUN.sub(_mask_match, text)


class RedactionFilter(logging.Filter):
    """Masks PAN-looking digit runs in the fully rendered message, whatever logger wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        rendered = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg = redact(rendered)
        record.args = None
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, separators=(",", ":"))


def setup_logging(process_name: str, level: str = "INFO", log_file: str | None = None,
                  console_level: str | None = None) -> None:
    """Install the JSON formatter and the redaction filter on the root logger of this process;
    `console_level` keeps the console to that level and up (the file still gets `level`)."""
    console = logging.StreamHandler(sys.stderr)
    if console_level:
        console.setLevel(console_level)
    handlers: list[logging.Handler] = [console]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.addFilter(RedactionFilter())
        handler.setFormatter(JsonFormatter(process_name))
        root.addHandler(handler)
    root.setLevel(level)


def setup_worker_logging() -> None:
    """Ray's `worker_process_setup_hook`: every actor process gets the same redacting JSON logs."""
    import os

    setup_logging(f"ray-worker-{os.getpid()}", os.environ.get("PAYGATE_LOG_LEVEL", "INFO"))
