"""``clear-learn serve``: an OpenAI-compatible proxy that budgets each request by CLEAR.

- :mod:`.config`: the typed settings (YAML keys and command-line flags);
- :mod:`.payloads`: validating OpenAI request bodies, the query text, writing the budget;
- :mod:`.budget`: the predictor micro-batched off the event loop, the live price, the
  abandoned-query policy;
- :mod:`.metrics`: Prometheus metrics;
- :mod:`.app`: the FastAPI app (routes, upstream client, errors, streaming);
- :mod:`.server`: running it under uvicorn;
- :mod:`.litellm_hook`: the same budget as a LiteLLM proxy pre-call hook.

Each process runs one :class:`~clear_learn.controller.StreamController`: run N replicas
with a per-second target each set to its share (the total divided by N; a per-query target
stays as it is). Replicas do not coordinate. Imports of FastAPI, httpx and torch happen
only in the modules that need them.
"""

from __future__ import annotations

from .._lazy import lazy_getattr


_LAZY = {
    "ServeConfig": "clear_learn.serve.config",
    "create_app": "clear_learn.serve.app",
    "BudgetService": "clear_learn.serve.budget",
    "MicroBatcher": "clear_learn.serve.budget",
    "ClearBudgetHook": "clear_learn.serve.litellm_hook",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
