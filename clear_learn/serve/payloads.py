"""OpenAI request bodies: validation (a 400 naming the field), the query text, the budget.

Pure functions on parsed JSON; no I/O. Only what the proxy relies on is checked (the
upstream validates the rest and its answer is passed back as is).
"""

from __future__ import annotations

import json
from typing import Any

from .config import STANDARD_BUDGET_FIELDS

__all__ = ["BadRequest", "parse_body", "chat_query_text", "completion_query_text",
           "client_cap", "apply_budget", "is_stream"]


class BadRequest(ValueError):
    """A malformed client request; ``param`` is the offending field (OpenAI's error shape)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param

    def payload(self) -> dict:
        """The OpenAI-style error body."""
        return {"error": {"message": str(self), "type": "invalid_request_error",
                          "param": self.param, "code": None}}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; :class:`BadRequest` when it is not one."""
    if not raw.strip():
        raise BadRequest(None, "request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(None, f"request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest(None, f"request body must be a JSON object, got "
                               f"{type(body).__name__}")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("model", "must be a string")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequest("stream", "must be true or false")
    return body


def is_stream(body: dict[str, Any]) -> bool:
    return bool(body.get("stream"))


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(f"{where}[{j}]", "must be a content part with a 'type'")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise BadRequest(f"{where}[{j}].text", "must be a string")
                parts.append(part["text"])
        return "\n".join(parts)
    raise BadRequest(where, "must be a string, a list of content parts, or null")


def chat_query_text(body: dict[str, Any], source: str = "last_user") -> str:
    """The query text of a chat request: the last (or first, or every) user message, or all
    messages (``source``)."""
    msgs = body.get("messages")
    if msgs is None:
        raise BadRequest("messages", "required")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages", "must be a non-empty list of messages")
    texts: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}]", "must be an object")
        if not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}].role", "required, a string")
        texts.append((m["role"], _content_text(m.get("content"), f"messages[{i}].content")))
    user = [t for r, t in texts if r == "user" and t.strip()]
    if source == "all":
        text = "\n\n".join(t for _, t in texts if t.strip())
    elif not user:
        raise BadRequest("messages", "no user message with text to budget")
    elif source == "last_user":
        text = user[-1]
    elif source == "first_user":
        text = user[0]
    elif source == "all_user":
        text = "\n\n".join(user)
    else:
        raise ValueError(f"unknown query source {source!r}")
    if not text.strip():
        raise BadRequest("messages", "no text to budget")
    return text


def completion_query_text(body: dict[str, Any]) -> str:
    """The query text of a legacy completion request: its prompt (a list of strings joined)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("prompt", "required")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        text = "\n\n".join(prompt)
    else:
        raise BadRequest("prompt", "must be a string or a non-empty list of strings "
                                   "(token-id prompts cannot be budgeted)")
    if not text.strip():
        raise BadRequest("prompt", "must not be empty")
    return text


def client_cap(body: dict[str, Any], budget_field: str) -> int | None:
    """The smallest of the request's own limits (``max_tokens``, ``max_completion_tokens``,
    the budget field), or ``None``; each must be an integer >= 1 when given."""
    caps = []
    for f in dict.fromkeys((*STANDARD_BUDGET_FIELDS, budget_field)):
        v = body.get(f)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1:
            raise BadRequest(f, f"must be an integer >= 1, got {v!r}")
        caps.append(int(v))
    return min(caps) if caps else None


def apply_budget(body: dict[str, Any], budget: int, budget_field: str) -> dict[str, Any]:
    """A copy of ``body`` with ``budget`` in ``budget_field``; when that field is a standard
    limit, any other standard limit the client set is lowered to the budget too."""
    out = dict(body)
    out[budget_field] = int(budget)
    if budget_field in STANDARD_BUDGET_FIELDS:
        for f in STANDARD_BUDGET_FIELDS:
            if f != budget_field and out.get(f) is not None:
                out[f] = int(budget)
    return out
