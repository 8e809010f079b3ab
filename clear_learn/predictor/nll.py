"""The rollouts' negative log-likelihood under predicted curves, in torch (docs/METHOD.md,
"Rollouts and the likelihood").

Per rollout, with ``M`` the generation cap and ``f`` the Gamma(2, k) density of ``L - tau``:

    correct, length L:   -log p - log((1 - eps) f(L - tau) + eps g(L))
    incorrect, finished: -log(1 - p)
    cut off at M:        -log(1 - p ((1 - eps) G(k (M - tau)) + eps))

``g`` is a broad floor density. With ``smooth_floor`` it is ``2 sigmoid((L - tau) / s) / M``
(``s = M / 8``), which still pulls ``tau`` below a correct rollout it has overshot (a flat
floor gives no gradient there); without it, ``g = 1 / M`` as in :mod:`clear_learn.fitting`,
so that reported likelihoods are comparable with the per-query fits.

``runaway`` (``c`` in (0, 1); None: the form above, DESIGN.md section 4) is the consistent
likelihood of :class:`clear_learn.fitting.FitPrior`: an unsolvable response runs away to the
cap with probability ``c``, so a finished wrong answer scores ``(1 - p)(1 - c)`` and a cut-off
``p (1 - h) + (1 - p) c`` (``h = (1 - eps) G + eps``): cut-offs no longer count against ``p``
alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rollout_nll"]


def rollout_nll(tau: torch.Tensor, p_logit: torch.Tensor, k: torch.Tensor,
                tokens: torch.Tensor, correct: torch.Tensor, cutoff: torch.Tensor,
                mask: torch.Tensor, cap: torch.Tensor, *, eps: float = 1e-3,
                smooth_floor: bool = True, runaway: float | None = None) -> torch.Tensor:
    """Mean NLL per rollout of each query: shape (B,). Inputs (B,) or (B, n) tensors.

    ``p_logit`` is ``logit(p)`` (for stable ``log p`` and ``log(1 - p)``); ``runaway`` as in
    the module doc.
    """
    tokens = tokens.to(tau.dtype)
    M = cap.to(tau.dtype)
    x = tokens - tau[:, None]
    kc = k[:, None]
    # in logs throughout: a density that underflows (a floor far past tau, at a padded or a
    # wrong rollout too) would give log(0) and, through torch.where, NaN gradients
    pos = x > 0
    kx = torch.where(pos, kc * x, torch.ones_like(x))  # 1: any finite value off the support
    log_f = torch.where(pos, torch.log(kc) + torch.log(kx) - kx,
                        torch.full_like(x, -math.inf))
    if smooth_floor:
        log_g = math.log(2.0) - torch.log(M)[:, None] + F.logsigmoid(x / (M[:, None] / 8.0))
    else:
        log_g = -torch.log(M)[:, None].expand_as(x)
    log_q = torch.logaddexp(math.log1p(-eps) + log_f, math.log(eps) + log_g)
    logp = F.logsigmoid(p_logit)[:, None]
    log1mp = F.logsigmoid(-p_logit)[:, None]
    y = (k * (M - tau)).clamp(min=0.0)
    G = 1.0 - (1.0 + y) * torch.exp(-y)
    h = (1.0 - eps) * G + eps
    p = torch.sigmoid(p_logit)
    if runaway is None:
        log_cut = torch.log1p(-(p * h).clamp(max=1.0 - 1e-7))[:, None]
    else:
        c = float(runaway)
        log_cut = torch.log((p * (1.0 - h) + (1.0 - p) * c).clamp(min=1e-30))[:, None]
        log1mp = log1mp + math.log1p(-c)
    corr = correct & mask
    wrong = mask & ~correct & ~cutoff
    cut = mask & ~correct & cutoff
    ll = torch.where(corr, logp + log_q, torch.zeros_like(log_q))
    ll = ll + torch.where(wrong, log1mp.expand_as(ll), torch.zeros_like(ll))
    ll = ll + torch.where(cut, log_cut.expand_as(ll), torch.zeros_like(ll))
    n = mask.sum(1).clamp(min=1)
    return -ll.sum(1) / n
