"""The line formats of feedback files (hh, preference, rating, correction) and their fields.

Each parser turns one JSON object into a record; see :mod:`fedrlhf.feedback.importers`
for what each format looks like. Problems are DataErrors carrying only the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fedrlhf.errors import DataError
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating

HH_ASSISTANT = "\n\nAssistant:"
HH_EMPTY_RESPONSE = "(no response)"
"""Stands for an HH-RLHF assistant turn left empty (the transcript ends at the marker).

HH-RLHF harmless holds pairs where the preferred answer is saying nothing; records
need non-empty text, so the importer writes this instead of dropping the pair."""
_ROLE_PREFIX = {"user": "\n\nHuman:", "assistant": HH_ASSISTANT, "system": "\n\nSystem:"}


# --------------------------------------------------------------------------- formats


def _parse_hh(obj: dict[str, Any]) -> Preference:
    """An HH-RLHF pair of full transcripts, split into prompt and final responses."""
    chosen = _text(obj, "chosen")
    rejected = _text(obj, "rejected")
    for name, transcript in (("chosen", chosen), ("rejected", rejected)):
        if HH_ASSISTANT not in transcript:
            raise DataError("has no '\\n\\nAssistant:' turn (not an HH-RLHF transcript)", field=name)
    if chosen == rejected:
        raise DataError("is identical to 'chosen'", field="rejected")
    common = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(HH_ASSISTANT, 0, common)
    if cut < 0:
        raise DataError(
            "shares no '\\n\\nAssistant:' turn with 'chosen' (the dialogues differ before it)",
            field="rejected",
        )
    end = cut + len(HH_ASSISTANT)
    responses = [t[end:].strip() or HH_EMPTY_RESPONSE for t in (chosen, rejected)]
    return _preference(chosen[:end], responses[0], responses[1], _reason(obj))


def _parse_preference(obj: dict[str, Any]) -> Preference:
    """A generic preference; responses are strings or chat-message lists."""
    chosen_history, chosen = _response(obj, "chosen")
    rejected_history, rejected = _response(obj, "rejected")
    histories = [h for h in (chosen_history, rejected_history) if h is not None]
    if len(histories) == 2 and histories[0] != histories[1] and not isinstance(obj.get("prompt"), str):
        raise DataError(
            "the conversation before the final assistant message differs from 'chosen'",
            field="rejected",
        )
    prompt = _prompt(obj, histories[0] if histories else None)
    return _preference(prompt, chosen, rejected, _reason(obj))


def _parse_rating(obj: dict[str, Any]) -> Rating:
    """A KTO-style thumbs up/down; ``response`` is an alias of ``completion``."""
    if "completion" in obj and "response" in obj:
        raise DataError("give either 'completion' or 'response', not both", field="response")
    key = "response" if "response" in obj else "completion"
    prompt = _prompt(obj, None)
    response = _text(obj, key)
    label = _label(obj)
    try:
        return Rating(prompt, response, label, _reason(obj))
    except DataError as err:
        raise DataError(err.reason, field=key if err.field == "response" else err.field) from None


def _parse_correction(obj: dict[str, Any]) -> Correction:
    """A user's rewrite of a response."""
    return Correction(_prompt(obj, None), _text(obj, "response"), _text(obj, "corrected"), _reason(obj))


_PARSERS: dict[str, Callable[[dict[str, Any]], Feedback]] = {
    "hh": _parse_hh,
    "preference": _parse_preference,
    "rating": _parse_rating,
    "correction": _parse_correction,
}


# --------------------------------------------------------------------------- fields


def _preference(prompt: str, chosen: str, rejected: str, reason: str | None) -> Preference:
    if chosen == rejected:
        raise DataError("is identical to 'chosen'", field="rejected")
    return Preference(prompt, chosen, rejected, reason)


def _text(obj: dict[str, Any], key: str) -> str:
    if key not in obj:
        raise DataError("missing", field=key)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {_json_type(value)}", field=key)
    return value


def _reason(obj: dict[str, Any]) -> str | None:
    value = obj.get("reason")
    if value is not None and not isinstance(value, str):
        raise DataError(f"must be a string or null, got {_json_type(value)}", field="reason")
    return value


def _label(obj: dict[str, Any]) -> int:
    if "label" not in obj:
        raise DataError("missing", field="label")
    value = obj["label"]
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, int) and value in (1, 0, -1):
        return 1 if value == 1 else -1
    raise DataError(f"must be true, false, 1, 0 or -1, got {_short(value)}", field="label")


def _prompt(obj: dict[str, Any], history: list[tuple[str, str]] | None) -> str:
    """The prompt text: a string, or messages (the ``prompt`` list, then ``history``) rendered."""
    value = obj.get("prompt")
    if isinstance(value, str):
        return value
    if value is None and history is None:
        raise DataError("missing" if "prompt" not in obj else "must be a string, got null", field="prompt")
    if value is not None and not isinstance(value, list):
        raise DataError(f"must be a string or a list of messages, got {_json_type(value)}", field="prompt")
    messages = _messages(value, "prompt") if value is not None else []
    return _render(messages + (history or []))


def _response(obj: dict[str, Any], key: str) -> tuple[list[tuple[str, str]] | None, str]:
    """``(earlier messages or None, response text)`` of a string or a message list."""
    if key not in obj:
        raise DataError("missing", field=key)
    value = obj[key]
    if isinstance(value, str):
        return None, value
    if not isinstance(value, list):
        raise DataError(f"must be a string or a list of messages, got {_json_type(value)}", field=key)
    if not value:
        raise DataError("must not be an empty list of messages", field=key)
    messages = _messages(value, key)
    role, content = messages[-1]
    if role != "assistant":
        raise DataError(
            f"the last message must be the assistant's response, got role {role!r}",
            field=f"{key}[{len(messages) - 1}].role",
        )
    return messages[:-1], content


def _messages(value: list[Any], key: str) -> list[tuple[str, str]]:
    """Validate a list of chat messages as ``(role, content)`` pairs."""
    out = []
    for i, message in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"must be a message object, got {_json_type(message)}", field=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLE_PREFIX:
            roles = sorted(_ROLE_PREFIX)
            raise DataError(f"must be one of {roles}, got {_short(role)}", field=f"{where}.role")
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"must be a string, got {_json_type(content)}", field=f"{where}.content")
        out.append((role, content))
    return out


def _render(messages: list[tuple[str, str]]) -> str:
    """HH-style text of a conversation, ending with the assistant's turn marker ("" if none)."""
    if not messages:
        return ""
    return "".join(f"{_ROLE_PREFIX[role]} {content}" for role, content in messages) + HH_ASSISTANT


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: object, *, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
