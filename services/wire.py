"""JSON that comes from outside the process, read strictly.

Python's ``json`` accepts what the rest of the path cannot carry: ``NaN`` and ``Infinity``
(PostgreSQL's jsonb refuses them), unpaired UTF-16 surrogate escapes such as ``"\\ud800"``
(no UTF-8 encoder takes them, so asyncpg fails on the insert) and nesting deep enough to
raise ``RecursionError``. It also lets the last of two equal keys win, where another
service's parser may keep the first, so two readers of one message would disagree on its
``task_id``. Each of these is refused here, at the edge, with the reason.

What other services and operators send is read this way. The provider's answers are not
(``services/provider/dashscope.py``): a billed submit's answer refused for a repeated key
would leave its task unknown, so only what is taken from them is checked.
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.errors import ImagegenError

# Only a document with an escaped surrogate can hold an unpaired one, so the costly check
# runs for those alone (UTF-8 text cannot carry a surrogate).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadJson(ImagegenError, ValueError):
    """A body that is not JSON this service can take; the text says why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise BadJson(f"has the key {key!r} twice")
        value[key] = item
    return value


def _no_constant(name: str) -> Any:
    raise BadJson(f"is not valid JSON: {name} is not a JSON value")


def loads(data: bytes) -> Any:
    """The value of a JSON document, or ``BadJson`` whose text completes "the body …"."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson("is nested too deeply") from None
    except ValueError as exc:
        raise BadJson(f"is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("has an unpaired UTF-16 surrogate escape") from None
    return value
