"""OpenAI request bodies: validation (a 400 naming the field), the query text, the budget.

Pure functions on parsed JSON; no I/O. Only what the proxy relies on is checked (the
upstream validates the rest and its answer is passed back as is).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .config import STANDARD_BUDGET_FIELDS

__all__ = ["BadRequest", "parse_body", "chat_query_text", "completion_query_text",
           "client_cap", "n_copies", "apply_budget", "is_stream", "with_stream_usage"]


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
        body = json.loads(raw, parse_constant=_no_constant)
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


def _no_constant(name: str) -> Any:
    """``json.loads``' hook for ``NaN``, ``Infinity`` and ``-Infinity``: not JSON, a 400."""
    raise BadRequest(None, f"request body is not valid JSON ({name} is not a JSON number)")


def is_stream(body: dict[str, Any]) -> bool:
    """Whether the request asks for a streamed (SSE) answer."""
    return bool(body.get("stream"))


def with_stream_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(copy of body asking for usage in its stream, whether the client asked itself)``:
    ``stream_options.include_usage`` set to true, the client's other stream options kept."""
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("stream_options", "must be an object")
    opts = dict(opts or {})
    asked = opts.get("include_usage") is True
    opts["include_usage"] = True
    return {**body, "stream_options": opts}, asked


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
            if part["type"] in ("text", "input_text"):
                if not isinstance(part.get("text"), str):
                    raise BadRequest(f"{where}[{j}].text", "must be a string")
                parts.append(part["text"])
        return "\n".join(parts)
    raise BadRequest(where, "must be a string, a list of content parts, or null")


def chat_query_text(body: dict[str, Any], source: str = "last_user") -> str:
    """The query text of a chat request: the last (or first, or every) user message with
    text, or all messages (``source``); with no user text, the text of all messages; with no
    text at all (an image-only question), the empty string."""
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
    if source not in ("last_user", "first_user", "all_user", "all"):
        raise ValueError(f"unknown query source {source!r}")
    user = [t for r, t in texts if r == "user" and t.strip()]
    if source == "all" or not user:
        return "\n\n".join(t for _, t in texts if t.strip())
    if source == "last_user":
        return user[-1]
    if source == "first_user":
        return user[0]
    return "\n\n".join(user)


def completion_query_text(body: dict[str, Any]) -> str:
    """The query text of a legacy completion request: its prompt, a string or a list of one
    string (a list of several is a batch sharing one ``max_tokens``: a 400, as are token-id
    prompts)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("prompt", "required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise BadRequest("prompt", f"a list of {len(prompt)} prompts is a batch sharing one "
                                   "max_tokens, which cannot be budgeted per prompt: send one "
                                   "request per prompt")
    raise BadRequest("prompt", "must be a string or a list of one string (token-id prompts "
                               "cannot be budgeted)")


def _whole_field(body: dict[str, Any], name: str) -> int | None:
    """``body[name]`` as an int, ``None`` when absent; a 400 unless an integer >= 1."""
    v = body.get(name)
    if v is None:
        return None
    if (isinstance(v, bool) or not isinstance(v, (int, float))
            or (isinstance(v, float) and not math.isfinite(v)) or v != int(v) or v < 1):
        raise BadRequest(name, f"must be an integer >= 1, got {v!r}")
    return int(v)


def client_cap(body: dict[str, Any], budget_field: str) -> int | None:
    """The smallest of the request's own limits (``max_tokens``, ``max_completion_tokens``,
    the budget field), or ``None``; each must be an integer >= 1 when given."""
    caps = [_whole_field(body, f) for f in dict.fromkeys((*STANDARD_BUDGET_FIELDS,
                                                          budget_field))]
    caps = [c for c in caps if c is not None]
    return min(caps) if caps else None


def n_copies(body: dict[str, Any]) -> int:
    """How many completions the request generates, each up to the budget: ``n``, or
    ``best_of`` when larger (it generates that many and returns the best ``n``); each an
    integer >= 1 when given."""
    return max(_whole_field(body, "n") or 1, _whole_field(body, "best_of") or 1)


def apply_budget(body: dict[str, Any], budget: int, budget_field: str) -> dict[str, Any]:
    """A copy of ``body`` with ``budget`` in ``budget_field``; when that field is a standard
    limit, any other standard limit the client set is lowered to the budget too (so the
    budget binds whichever field the upstream reads: llama.cpp's server reads only
    ``max_tokens``; for an upstream that rejects ``max_tokens``, such as OpenAI's reasoning
    models, set ``budget_field: max_completion_tokens``)."""
    out = dict(body)
    out[budget_field] = int(budget)
    if budget_field in STANDARD_BUDGET_FIELDS:
        for f in STANDARD_BUDGET_FIELDS:
            if f != budget_field and out.get(f) is not None:
                out[f] = int(budget)
    return out
