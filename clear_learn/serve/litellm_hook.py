"""CLEAR budgets inside a LiteLLM proxy: a ``CustomLogger`` pre-call hook.

One line of the LiteLLM proxy's ``config.yaml`` adds it::

    litellm_settings:
      callbacks: clear_learn.serve.litellm_hook.clear_budget

with the settings of ``clear-learn serve`` (the same YAML keys, ``upstream`` unused) in the
file named by the environment variable ``CLEAR_LEARN_SERVE_CONFIG`` (for example
``predictor: checkpoints/default`` and ``tokens_per_query: 128``). For every chat or text
completion the hook predicts the query's curve (micro-batched off the event loop), grants
its budget at the live price, writes it into ``budget_field`` (the smaller of it and the
request's own limit; counted ``n`` times, ``best_of`` when larger), and records the decision
under ``metadata.clear_learn``; the response carries ``x-clear-max-tokens``, ``x-clear-price``
and ``x-clear-abandoned``, and its ``usage.completion_tokens`` is reported back (what moves
the price with ``target: consumed``). A query abandoned under ``abandon_policy: refuse`` is
rejected with ``refuse_status``. A predictor that failed to load is loaded again by the next
request. Each LiteLLM worker process runs its own controller (set ``tokens_per_second`` to
its share).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .budget import BudgetService, Predictor
from .config import ConfigError, ServeConfig
from .payloads import (BadRequest, apply_budget, chat_query_text, client_cap,
                       completion_query_text, n_copies)

__all__ = ["ClearBudgetHook", "clear_budget", "CONFIG_ENV"]

#: The environment variable naming the hook's YAML settings.
CONFIG_ENV = "CLEAR_LEARN_SERVE_CONFIG"
_CHAT = ("completion", "acompletion")
_TEXT = ("text_completion", "atext_completion")
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="clear-load")


class ClearBudgetHook(CustomLogger):
    """Sets each completion's budget from its predicted curve and a live price.

    ``config`` (default: read from ``$CLEAR_LEARN_SERVE_CONFIG`` on first use), or a ready
    ``budget`` service, or a ``predictor`` to use instead of loading ``config.predictor``.
    """

    def __init__(self, config: ServeConfig | None = None, *,
                 budget: BudgetService | None = None,
                 predictor: Predictor | None = None) -> None:
        super().__init__()
        self._config = config
        self._budget = budget
        self._predictor = predictor
        self._lock: asyncio.Lock | None = None
        self._loading: concurrent.futures.Future | None = None

    def preload(self) -> None:
        """Start building the budget service (loading the predictor) in a background
        thread, so that the first request does not wait for torch. Idempotent while a load
        is under way or has succeeded."""
        if self._budget is None and (self._loading is None or self._loading.cancelled()):
            self._loading = _POOL.submit(BudgetService.from_config, self.config,
                                         self._predictor)

    @property
    def config(self) -> ServeConfig:
        """The settings (loaded from ``$CLEAR_LEARN_SERVE_CONFIG`` when none were given)."""
        if self._config is None:
            path = os.environ.get(CONFIG_ENV)
            if not path:
                raise ConfigError(f"{CONFIG_ENV}: set it to the YAML settings of the hook "
                                  "(predictor, tokens_per_query, ...)")
            self._config = ServeConfig.from_yaml(path).validate(require_upstream=False)
        return self._config

    async def budget(self) -> BudgetService:
        """The budget service, built once (the predictor loads in a worker thread); a load
        that failed raises its error here and is tried again on the next call."""
        if self._budget is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._budget is None:
                    self.preload()
                    assert self._loading is not None
                    try:
                        self._budget = await asyncio.wrap_future(self._loading)
                    except Exception:
                        self._loading = None  # not cached: the next request loads again
                        raise
        return self._budget

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: str) -> dict:
        """LiteLLM's pre-call hook: the request ``data`` with its budget set (other call
        types unchanged). Raises an HTTP 400 naming the field of a malformed request, and
        ``refuse_status`` for a refused query."""
        if call_type not in _CHAT + _TEXT:
            return data
        from fastapi import HTTPException

        cfg = self.config
        try:
            text = (chat_query_text(data, cfg.query) if call_type in _CHAT
                    else completion_query_text(data))
            cap = client_cap(data, cfg.budget_field)
            copies = n_copies(data)
        except BadRequest as err:
            raise HTTPException(status_code=400, detail=err.payload()["error"]) from None
        service = await self.budget()
        d = await service.decide(text, cap, copies=copies)
        record = {"max_tokens": d.budget, "price": d.price, "abandoned": d.abandoned,
                  "refused": d.refused, "curve": list(d.curve)}
        if d.refused:
            raise HTTPException(status_code=cfg.refuse_status, detail={
                "message": "clear-learn: this query was abandoned at the current token price "
                           f"({d.price:.3g}): its predicted accuracy does not pay for the "
                           "tokens", "type": "budget_refused"})
        out = data if d.budget is None else apply_budget(data, d.budget, cfg.budget_field)
        meta = out.get("metadata")
        out["metadata"] = {**(meta if isinstance(meta, dict) else {}), "clear_learn": record}
        return out

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        """LiteLLM's success callback: report the completion tokens of a budgeted request's
        answer (``usage.completion_tokens``; nothing when it has none)."""
        if self._budget is None or (_record(kwargs) is None
                                    and _record(kwargs.get("litellm_params")) is None):
            return
        used = _get(_get(response_obj, "usage"), "completion_tokens")
        if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
            self._budget.report_consumed(used)

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any,
                                                    response: Any,
                                                    request_headers: dict | None = None,
                                                    litellm_call_info: dict | None = None,
                                                    **kwargs: Any) -> dict[str, str] | None:
        """``x-clear-*`` headers on the response of a budgeted request."""
        rec = _record(data)
        if rec is None:
            return None
        return {"x-clear-max-tokens": "" if rec["max_tokens"] is None else str(rec["max_tokens"]),
                "x-clear-price": repr(float(rec["price"])),
                "x-clear-abandoned": "true" if rec["abandoned"] else "false"}


def _record(data: Any) -> dict | None:
    """The ``clear_learn`` decision record in a request's metadata, or None."""
    if not isinstance(data, dict):
        return None
    for key in ("metadata", "litellm_metadata"):
        meta = data.get(key)
        if isinstance(meta, dict) and isinstance(meta.get("clear_learn"), dict):
            return meta["clear_learn"]
    return None


def _get(obj: Any, name: str) -> Any:
    """``obj[name]`` of a dict, ``obj.name`` of an object, or None."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


#: The instance LiteLLM's config names: ``callbacks: clear_learn.serve.litellm_hook.clear_budget``.
clear_budget = ClearBudgetHook()
if os.environ.get(CONFIG_ENV):  # inside a LiteLLM proxy: load while it starts up
    clear_budget.preload()
