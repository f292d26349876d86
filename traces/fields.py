"""Checks and parsers for the values of one source row.

Each function returns the checked value or raises FieldError, which carries
the field, a RowProblem and a message but no location: the importer adds the
file and row when it turns the error into a TraceFormatError.

Numbers from JSON arrive as int, float or Decimal; numbers from CSV arrive as
text. Token counts must be integers >= 1. A count written as a float with an
integral value (`6758.0`) is accepted.
"""

from __future__ import annotations

import enum
import json
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from traces.errors import TraceError

__all__ = [
    "MAX_INT64",
    "MAX_UINT64",
    "FieldError",
    "RowProblem",
    "TimeZoneRule",
    "check_count",
    "check_hashes",
    "check_text",
    "check_time",
    "format_utc_ns",
    "parse_count_text",
    "parse_datetime_ns",
    "parse_hashes_text",
    "parse_number_text",
    "short_repr",
]

MAX_INT64 = 2**63 - 1
MAX_UINT64 = 2**64 - 1
_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?"
)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
_HASH_SEPARATORS = re.compile(r"[\s;|]+")


class RowProblem(enum.Enum):
    """Kinds of invalid source rows, used to count the rows skipped."""

    MISSING = "missing value"
    NOT_A_NUMBER = "not a number"
    NOT_AN_INTEGER = "not an integer"
    NOT_FINITE = "not finite"
    OUT_OF_RANGE = "out of range"
    INVALID_TIME = "invalid timestamp"
    INVALID_TEXT = "invalid text"
    INVALID_HASHES = "invalid hashes"
    TOO_MANY_HASHES = "more hashes than the prompt has blocks"
    TOTAL_MISMATCH = "total does not match its parts"
    FAILED_REQUEST = "failed request"
    MALFORMED_LINE = "malformed line"
    TRUNCATED_LINE = "truncated last line"
    INVALID_UTF8 = "invalid UTF-8"
    FIELD_COUNT = "wrong number of fields"
    OUT_OF_ORDER = "timestamp out of order"
    DUPLICATE_ID = "duplicate request id"


class FieldError(TraceError):
    """An invalid value in one field of a source row, not yet located."""

    def __init__(self, field: str | None, problem: RowProblem, message: str) -> None:
        self.field = field
        self.problem = problem
        self.message = message
        super().__init__(message)


class TimeZoneRule:
    """The rule that turns source datetimes without a zone into UTC.

    `name` is `UTC`, a fixed offset such as `+08:00`, or an IANA zone name
    such as `America/Los_Angeles`. With an IANA zone, a local time that is
    ambiguous or skipped at a daylight-saving change is rejected, because
    the source does not say which instant it means. Datetimes that carry
    their own `Z` or offset ignore the rule.

    Raises TraceError for any other name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._offset_s: int | None = None
        self._zone: ZoneInfo | None = None
        if name.upper() in ("UTC", "Z"):
            self._offset_s = 0
        elif _OFFSET.fullmatch(name):
            self._offset_s = _offset_seconds(name)
        else:
            self._zone = _load_zone(name)

    def utc_offset_s(self, local: datetime, field: str) -> int:
        """Return the UTC offset in seconds of naive `local` under this rule."""
        if self._offset_s is not None:
            return self._offset_s
        assert self._zone is not None
        early = local.replace(tzinfo=self._zone, fold=0)
        late = local.replace(tzinfo=self._zone, fold=1)
        offset = early.utcoffset()
        if offset is None or offset != late.utcoffset():
            raise FieldError(
                field,
                RowProblem.INVALID_TIME,
                f"local time {local} is ambiguous or skipped in {self.name} at a "
                "daylight-saving change; give the source times with an offset or "
                "use a fixed --time-zone such as +01:00",
            )
        return int(offset.total_seconds())


def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TraceError(
            f"invalid time zone {name!r}: expected UTC, an offset such as +08:00, "
            "or an IANA zone name such as Europe/Berlin"
        ) from None


def _offset_seconds(text: str) -> int:
    match = _OFFSET.fullmatch(text)
    assert match is not None
    sign = -1 if match.group(1) == "-" else 1
    return sign * (int(match.group(2)) * 3600 + int(match.group(3)) * 60)


def short_repr(value: object) -> str:
    """Return the repr of a source value, cut to 40 characters for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_count(value: object, field: str) -> int:
    """Return a token count from JSON as an int in [1, 2**63)."""
    accepted = "expected an integer >= 1"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise FieldError(
            field,
            RowProblem.NOT_A_NUMBER,
            f"invalid token count {short_repr(value)}: not a number, {accepted}",
        )
    if isinstance(value, float | Decimal) and not math.isfinite(value):
        raise FieldError(
            field,
            RowProblem.NOT_FINITE,
            f"invalid token count {short_repr(value)}: not finite, {accepted}",
        )
    if isinstance(value, float | Decimal) and value != int(value):
        raise FieldError(
            field,
            RowProblem.NOT_AN_INTEGER,
            f"invalid token count {short_repr(value)}: not an integer, {accepted}",
        )
    count = int(value)
    if not 1 <= count <= MAX_INT64:
        raise FieldError(
            field,
            RowProblem.OUT_OF_RANGE,
            f"invalid token count {short_repr(value)}: {accepted} and < 2**63",
        )
    return count


def parse_count_text(text: str, field: str) -> int:
    """Return a token count from CSV text as an int in [1, 2**63)."""
    stripped = text.strip()
    if not stripped:
        raise FieldError(field, RowProblem.MISSING, "missing value")
    try:
        return check_count(int(stripped), field)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        raise FieldError(
            field,
            RowProblem.NOT_A_NUMBER,
            f"invalid token count {text!r}: not a number, expected an integer >= 1",
        ) from None
    return check_count(number, field)


def parse_number_text(text: str, field: str) -> Decimal:
    """Return CSV text as an exact finite Decimal, for times and other numbers."""
    stripped = text.strip()
    if not stripped:
        raise FieldError(field, RowProblem.MISSING, "missing value")
    try:
        number = Decimal(stripped)
    except InvalidOperation:
        raise FieldError(
            field,
            RowProblem.NOT_A_NUMBER,
            f"invalid number {text!r}: not a number",
        ) from None
    if not number.is_finite():
        raise FieldError(
            field, RowProblem.NOT_FINITE, f"invalid number {text!r}: not finite"
        )
    return number


def check_time(
    value: object, field: str, unit: str, ns_per_unit: int
) -> Decimal | float | int:
    """Return a time value as a finite number in [0, 2**63 ns).

    `value` comes from JSON, or from CSV text through parse_number_text.
    `unit` names the unit in messages (such as `ms`), and `ns_per_unit`
    sets the upper bound, which keeps times within int64 nanoseconds (about
    292 years). The value keeps its type so that callers convert it without
    losing digits.
    """
    limit = Decimal(2**63) / ns_per_unit
    accepted = f"expected a finite number of {unit} in [0, {float(limit):.4g})"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise FieldError(
            field,
            RowProblem.NOT_A_NUMBER,
            f"invalid timestamp {short_repr(value)}: {accepted}",
        )
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or value < 0 or Decimal(value) >= limit:
        problem = RowProblem.OUT_OF_RANGE if finite else RowProblem.NOT_FINITE
        raise FieldError(
            field, problem, f"invalid timestamp {short_repr(value)}: {accepted}"
        )
    return value


def check_text(value: object, field: str) -> str:
    """Return an id from JSON or CSV as non-empty valid UTF-8 text.

    Numbers from JSON are accepted and written in decimal.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise FieldError(
            field,
            RowProblem.INVALID_TEXT,
            f"invalid id {short_repr(value)}: expected a string or an integer",
        )
    text = str(value).strip()
    if not text:
        raise FieldError(field, RowProblem.MISSING, "missing value")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(
                field, RowProblem.INVALID_UTF8, "invalid UTF-8 in the value"
            ) from None
    return text


def check_hashes(
    value: object,
    input_tokens: int,
    block_tokens: int,
    field: str,
    input_field: str = "input_tokens",
) -> list[int]:
    """Return a list of block hashes after checking each one and their number.

    Each hash is an integer in [0, 2**64). A prompt of `input_tokens` has at
    most ceil(input_tokens / block_tokens) blocks, the last possibly partial.
    """
    if not isinstance(value, list):
        raise FieldError(
            field,
            RowProblem.INVALID_HASHES,
            f"invalid {field} {short_repr(value)}: expected a list of integers >= 0",
        )
    # Fast path: one pass in C over the types, then min and max.
    all_ints = set(map(type, value)) <= {int}
    if not all_ints or (value and (min(value) < 0 or max(value) > MAX_UINT64)):
        _raise_first_invalid_hash(value, field)

    max_blocks = -(-input_tokens // block_tokens) if block_tokens else 0
    if len(value) > max_blocks:
        raise FieldError(
            field,
            RowProblem.TOO_MANY_HASHES,
            f"{field} has {len(value)} blocks of {block_tokens} tokens "
            f"but {input_field} {input_tokens} fills only {max_blocks}",
        )
    return value


def _raise_first_invalid_hash(value: list[object], field: str) -> None:
    for position, block_hash in enumerate(value):
        valid = isinstance(block_hash, int) and not isinstance(block_hash, bool)
        if not valid or not 0 <= block_hash <= MAX_UINT64:  # type: ignore[operator]
            raise FieldError(
                field,
                RowProblem.INVALID_HASHES,
                f"invalid {field}[{position}] {short_repr(block_hash)}: "
                "expected an integer in [0, 2**64)",
            )


def parse_hashes_text(
    text: str,
    input_tokens: int,
    block_tokens: int,
    field: str,
    input_field: str = "input_tokens",
) -> list[int]:
    """Return block hashes from CSV text: a JSON list or integers separated
    by spaces, `;` or `|`. Empty text is an empty list."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value: object = json.loads(stripped)
        except ValueError:
            raise FieldError(
                field,
                RowProblem.INVALID_HASHES,
                f"invalid {field} {short_repr(text)}: not a JSON list",
            ) from None
    else:
        parts = [part for part in _HASH_SEPARATORS.split(stripped) if part]
        try:
            value = [int(part) for part in parts]
        except ValueError:
            raise FieldError(
                field,
                RowProblem.INVALID_HASHES,
                f"invalid {field} {short_repr(text)}: expected integers separated "
                "by spaces, ';' or '|', or a JSON list",
            ) from None
    return check_hashes(value, input_tokens, block_tokens, field, input_field)


def parse_datetime_ns(text: str, rule: TimeZoneRule, field: str) -> int:
    """Return an ISO-8601 datetime as ns since the Unix epoch.

    Accepts `YYYY-MM-DD HH:MM:SS[.fraction][zone]` with a space or `T`, up to
    9 fraction digits, and a zone of `Z`, `+HH:MM` or `+HHMM`. A datetime
    without a zone is converted with `rule`.
    """
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise FieldError(
            field,
            RowProblem.INVALID_TIME,
            f"invalid timestamp {text!r}: expected YYYY-MM-DD HH:MM:SS[.fraction] "
            "with an optional Z or +HH:MM zone, such as 2023-11-16 18:17:03.9799600",
        )
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        local = datetime(year, month, day, hour, minute, second)
    except ValueError as error:
        raise FieldError(
            field, RowProblem.INVALID_TIME, f"invalid timestamp {text!r}: {error}"
        ) from None

    zone = match.group(8)
    if zone is None:
        offset_s = rule.utc_offset_s(local, field)
    elif zone == "Z":
        offset_s = 0
    else:
        offset_s = _offset_seconds(zone)
    fraction = match.group(7) or ""
    fraction_ns = int(fraction.ljust(9, "0")) if fraction else 0
    seconds = (local.replace(tzinfo=timezone.utc) - _EPOCH) // timedelta(seconds=1)
    timestamp_ns = (seconds - offset_s) * _NS_PER_S + fraction_ns
    if not -(2**63) <= timestamp_ns <= MAX_INT64:
        raise FieldError(
            field,
            RowProblem.INVALID_TIME,
            f"invalid timestamp {text!r}: expected a time from 1677-09-22 to "
            "2262-04-11, the range of int64 nanoseconds",
        )
    return timestamp_ns


def format_utc_ns(timestamp_ns: int) -> str:
    """Format ns since the Unix epoch as ISO-8601 UTC with 9 fraction digits."""
    seconds, fraction_ns = divmod(timestamp_ns, _NS_PER_S)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction_ns:09d}Z"
