"""What a log line may hold: exceptions without local variables, no credentials, bounded size.

structlog's defaults render an exception with every frame's local variables (rich in the
console, `dict_tracebacks` in JSON), on the event loop, while other requests wait. Measured
on this project: a ValueError 500 frames deep took 82 ms to log as JSON and 429 s in the
console (now 1.9 ms and 14 ms); the locals held the caller's bearer token and, when sign-in
failed, the password. Here a traceback is the last frames' file, line and function only,
every string is cut to a bound, credentials are masked by field name and by shape, and a
line never exceeds MAX_LINE_BYTES.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import (
    EventDict,
    ExceptionTransformer,
    ExcInfo,
    Processor,
    WrappedLogger,
)

MAX_LINE_BYTES = 16 * 1024
MAX_FRAMES = 20  # the outermost and innermost ten: where the request came in, where it broke
MAX_STRING = 2_000
MAX_TRACEBACK_TEXT = 8 * 1024
REDACTED = "[redacted]"

# Field names (any case, - or _) whose values are credentials whatever they look like.
_SECRET_NAMES = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "password",
        "new_password",
        "secret",
        "secret_key",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "x_api_key",
        "key",
        "csrf_token",
    }
)
_SECRET_NAMES |= {name.replace("_", "-") for name in _SECRET_NAMES}
_SCALARS = (int, float, bool, type(None))
# Credentials by their shape, wherever they appear in text (an exception's message, a header
# echoed into an error): bearer credentials, JWTs, our API keys (`tro_<prefix>_<secret>`),
# and `password=…`-like pairs, pydantic's `input_value=…` included.
_SECRET_TEXT = re.compile(
    r"(?P<scheme>\b(?:bearer|basic)\s+)[^\s'\",;]+"
    r"|\beyJ[\w-]{6,}(?:\.[\w-]*){1,2}"
    r"|\btro_[A-Za-z0-9]+_[\w-]+"
    r"|(?P<name>\b(?:password|passwd|secret|token|api[_-]?key|input_value)['\"]?\s*[:=]\s*)"
    r"(?:'[^']*'|\"[^\"]*\"|[^\s,;&]+)",
    re.IGNORECASE,
)


# Words one of those shapes contains: text without any is left alone, which keeps the access
# log's short fields cheap (the expression costs microseconds per string, this check less).
_SECRET_HINTS = re.compile("bearer|basic|eyj|tro_|pass|secret|token|key|input_value")


def _may_hold_secret(text: str) -> bool:
    return _SECRET_HINTS.search(text.lower()) is not None


def _mask(match: re.Match[str]) -> str:
    return (match.group("scheme") or match.group("name") or "") + REDACTED


def scrub_text(text: str, limit: int = MAX_STRING) -> str:
    """`text` cut to `limit` characters, credentials masked (cut first: the cut bounds the
    regular expression's work, and a masked secret cannot be cut back into view)."""
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more characters]"
    return _SECRET_TEXT.sub(_mask, text) if _may_hold_secret(text) else text


def _scrub_traceback(text: str) -> str:
    # A text traceback ends where the error is: keep its end.
    if len(text) > MAX_TRACEBACK_TEXT:
        text = f"[{len(text) - MAX_TRACEBACK_TEXT} characters before]…" + text[-MAX_TRACEBACK_TEXT:]
    return _SECRET_TEXT.sub(_mask, text) if _may_hold_secret(text) else text


def _secret_name(name: object) -> bool:
    return isinstance(name, str) and name.lower() in _SECRET_NAMES


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth > 8:  # a structure this deep is not worth a log line's space
        return "[nested too deep]"
    if isinstance(value, dict):
        return {k: REDACTED if _secret_name(k) else _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value[:100]]
    return value


def clean_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: credentials masked and strings bounded in every field."""
    if _plainly_harmless(event_dict):
        return event_dict
    cleaned = {
        key: REDACTED if _secret_name(key) else _clean(value)
        for key, value in event_dict.items()
        if key != "exception"
    }
    exception = event_dict.get("exception")
    if isinstance(exception, str):
        cleaned["exception"] = _scrub_traceback(exception)
    elif exception is not None:
        cleaned["exception"] = _clean(exception)
    return cleaned


def _plainly_harmless(event_dict: EventDict) -> bool:
    """The common line (an access line): flat, short, no credential's name or shape in it.
    One look at all its text together costs less than cleaning each field."""
    texts = []
    for key, value in event_dict.items():
        if _secret_name(key):
            return False
        if type(value) is str:
            texts.append(value)
        elif type(value) not in _SCALARS:
            return False
    joined = "\n".join(texts)
    return len(joined) <= MAX_STRING and not _may_hold_secret(joined)


def bounded(renderer: Callable[..., str]) -> Callable[..., str]:
    """A text renderer whose lines stop at MAX_LINE_BYTES characters."""

    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return renderer(logger, name, event_dict)[:MAX_LINE_BYTES]

    return render


def _text_traceback(exc_info: ExcInfo) -> str:
    # The standard library's format: no locals, and only the innermost frames of each chained
    # exception, however deep the recursion was.
    parts = traceback.format_exception(*exc_info, limit=-MAX_FRAMES)
    return "".join(part if len(part) <= MAX_STRING else part[:MAX_STRING] + "…\n" for part in parts)


def exception_renderer(json_lines: bool) -> Processor:
    """Turns `exc_info` into an `exception` field: a list of dicts for JSON, text otherwise."""
    formatter: ExceptionTransformer = (
        ExceptionDictTransformer(show_locals=False, max_frames=MAX_FRAMES, use_rich=False)
        if json_lines
        else _text_traceback
    )
    return structlog.processors.ExceptionRenderer(formatter)


def json_line(event: Any, **_: Any) -> str:
    """One JSON line of at most MAX_LINE_BYTES: past it the exception gives up its frames,
    then everything but what finds the line (time, level, event, request id) goes."""
    line = orjson.dumps(event, default=str)
    if len(line) > MAX_LINE_BYTES and isinstance(event, dict) and "exception" in event:
        event = {**event, "exception": _without_frames(event["exception"])}
        line = orjson.dumps(event, default=str)
    if len(line) > MAX_LINE_BYTES and isinstance(event, dict):
        kept = ("timestamp", "level", "event", "request_id", "component")
        event = {k: str(event[k])[:MAX_STRING] for k in kept if k in event}
        line = orjson.dumps(event | {"truncated_from_bytes": len(line)})
    return line.decode(errors="replace")


def _without_frames(exception: Any) -> Any:
    if isinstance(exception, list):
        return [
            {k: v for k, v in part.items() if k != "frames"} if isinstance(part, dict) else part
            for part in exception
        ]
    return str(exception)[-MAX_STRING:]
