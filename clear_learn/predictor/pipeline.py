"""From the network's curves to the shipped ones: the post-network stages, in one place.

The shipped predictor is three steps: the encoder's curve (``tau, p, k``), then

1. ``batch_context`` (:data:`BATCH_CONTEXT`): each curve pooled with its look-alikes' in the
   same batch, then shifted by its text's log length relative to theirs
   (:mod:`.batch_context`);
2. ``tau_spread`` (:data:`TAU_SPREAD`): each curve widened by a threshold uncertainty of sd
   ``tau_spread * tau`` (:mod:`.calibration`).

:func:`postprocess` applies them; ``ClearPredictor.predict`` is ``postprocess(predict_raw)``,
and training's evaluation, the leave-one-family-out study and the benchmarks call the same
function (:func:`policy_curves` builds their comparison set from it), so that what is measured
is what ships. Policy and stage names are the constants below.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..curves import Curves
from .batch_context import (BatchContext, apply_batch_context, clip_offsets, pool_and_offsets,
                            shift_by_length)
from .config import Stages

__all__ = ["BATCH_CONTEXT", "TAU_SPREAD", "STAGES", "LEARNED", "LEARNED_RAW",
           "LEARNED_NARROW", "TFIDF", "LENGTH", "GIVEN", "TASK_PRIOR", "postprocess",
           "policy_curves", "stream_policy"]

# stage names, in the order they act
BATCH_CONTEXT, TAU_SPREAD = "batch_context", "tau_spread"
STAGES = (BATCH_CONTEXT, TAU_SPREAD)

# policy names of the evaluation tables
LEARNED = "clear-learned"            # the shipped curves: every stage
LEARNED_RAW = "clear-learned-raw"    # the network's own (no batch context, no spread)
LEARNED_NARROW = "clear-learned-narrow"  # after the batch context, before the spread
TFIDF = "clear-tfidf"                # the TF-IDF baseline, then context and spread
LENGTH = "clear-length"              # the length baseline, then context and spread
GIVEN = "clear-given"                # curves from a file (clear-learn evaluate --curves)
TASK_PRIOR = "clear-task-prior"      # each task's pooled training curve


def postprocess(network: Curves, texts: Sequence[str], stages: Stages, *,
                contexts: Sequence[BatchContext] | None = None,
                spreads: np.ndarray | float | None = None,
                until: str | None = None) -> Curves:
    """The shipped curves of ``texts`` (one batch) from the network's curves ``network``.

    Parameters
    ----------
    network : the network's own curves, one per text (``ClearPredictor.predict_raw``).
    texts : the batch; the batch context compares each text with the others.
    stages : which stages act and their fitted parameters (a predictor's
        ``config.stages``).
    contexts : one :class:`BatchContext` per text, replacing ``stages.batch_context``'s
        slopes and offset bound text by text (leave-one-family-out: each query's fold); the
        neighbourhood is ``stages.batch_context``'s.
    spreads : one threshold spread per text (or one number) replacing ``stages.tau_spread``.
    until : stop after this stage (one of :data:`STAGES`).

    Returns
    -------
    Curves : ``network``'s, moved the share ``pool`` towards its look-alikes' mean curve,
        then ``tau * exp(s_tau d)``, ``logit p + s_p d`` with ``d`` the text's clipped log
        length less its look-alikes' (batch context); then ``tau, k``
        moment-matched to a threshold of sd ``spread * tau``
        (:func:`~clear_learn.curves.widen_threshold`).
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    texts = list(texts)
    if len(texts) != len(network):
        raise ValueError(f"postprocess: {len(texts)} texts for {len(network)} curves")
    curves = network
    ctx = stages.batch_context
    if ctx is not None:
        if contexts is None:
            curves = apply_batch_context(curves, texts, ctx)
        else:
            if len(contexts) != len(texts):
                raise ValueError(f"postprocess: {len(contexts)} contexts for {len(texts)} "
                                 "texts")
            curves, d = pool_and_offsets(curves, texts, np.array([c.pool for c in contexts]),
                                         ctx.neighbours, ctx.min_similarity)
            d = clip_offsets(d, [c.max_offset for c in contexts])
            curves = shift_by_length(curves, d, np.array([c.tau_slope for c in contexts]),
                                     np.array([c.p_slope for c in contexts]))
    if until == BATCH_CONTEXT:
        return curves
    spread = stages.tau_spread if spreads is None else spreads
    return curves.widened(spread) if np.any(np.asarray(spread) > 0) else curves


def policy_curves(network: Curves, baselines: Mapping[str, Curves], texts: Sequence[str],
                  stages: Stages, *, contexts: Sequence[BatchContext] | None = None,
                  spreads: Mapping[str, np.ndarray | float] | None = None
                  ) -> dict[str, Curves]:
    """The curves an evaluation compares, every one through :func:`postprocess`.

    ``network``: the learned network's own curves; ``baselines``: ``{TFIDF: ..., LENGTH:
    ...}`` fitted on the same training queries. Returns, in this order: :data:`LEARNED`
    (every stage), the baselines (each with the batch context and the spread: every
    predictor gets the same treatment), :data:`LEARNED_RAW` (the network's own; where there
    is a batch context) and :data:`LEARNED_NARROW` (before the spread; where any policy has
    one). ``spreads``: ``{policy: spread}`` replacing ``stages.tau_spread`` per policy (a
    number or one per text); ``contexts`` as in :func:`postprocess`.
    """
    inputs = {LEARNED: network, **baselines}
    spreads = dict(spreads or {})
    out = {name: postprocess(c, texts, stages, contexts=contexts, spreads=spreads.get(name))
           for name, c in inputs.items()}
    if stages.batch_context is not None:
        out[LEARNED_RAW] = network
    if any(np.any(np.asarray(spreads.get(n, stages.tau_spread)) > 0) for n in inputs):
        out[LEARNED_NARROW] = postprocess(network, texts, stages, contexts=contexts,
                                          until=BATCH_CONTEXT)
    return out


def stream_policy(network: Curves, texts: Sequence[str], stages: Stages, caps: np.ndarray):
    """An allocation policy ``f(indices, total_budget) -> budgets`` for
    :func:`clear_learn.evaluation.evaluate_policies` on traffic streams: each batch's curves
    go through :func:`postprocess` with that batch alone as the batch context's batch (as in
    deployment), then CLEAR under ``caps``."""
    from ..allocation import allocate

    texts = list(texts)
    caps = np.asarray(caps)

    def policy(idx: np.ndarray, total_budget: int) -> np.ndarray:
        idx = np.asarray(idx)
        curves = postprocess(network[idx], [texts[i] for i in idx], stages)
        return allocate(curves, int(total_budget), max_tokens=caps[idx]).budgets

    return policy
