"""Rollouts sampled from known curves: for tests, recovery studies and the simulated demo.

Everything made here is simulated and labeled so (``"simulated": true`` on every record).
"""

from __future__ import annotations

import numpy as np

from .curves import Curves

__all__ = ["random_curves", "sample_rollouts", "simulated_dataset"]


def random_curves(n: int, seed: int = 0, *, tau_median: float = 300.0, tau_sigma: float = 0.8,
                  p_beta: tuple[float, float] = (2.0, 1.5), width_median: float = 200.0,
                  width_sigma: float = 0.5) -> Curves:
    """Random curves as in the issue's benchmark: tau lognormal, p Beta, 1/k lognormal."""
    rng = np.random.default_rng(seed)
    tau = rng.lognormal(np.log(tau_median), tau_sigma, n)
    p = rng.beta(*p_beta, n)
    k = 1.0 / rng.lognormal(np.log(width_median), width_sigma, n)
    return Curves(tau, p, k)


def sample_rollouts(curves: Curves, n_rollouts: int, max_new_tokens: int, seed: int = 0,
                    *, texts: list[str] | None = None, tasks: list[str] | None = None,
                    ids: list[str] | None = None) -> list[dict]:
    """Sample rollouts from each curve by its generative reading (docs/METHOD.md, "The
    curve of one query").

    Solvable responses (probability ``p``) have length ``tau + Gamma(2, k)``; the others have
    the same length law but a wrong answer. Responses longer than the cap are cut off at it
    (incorrect, ``finished: false``).
    """
    rng = np.random.default_rng(seed)
    n = len(curves)
    shape = (n, n_rollouts)
    solvable = rng.random(shape) < curves.p[:, None]
    length = curves.tau[:, None] + rng.gamma(2.0, 1.0, shape) / curves.k[:, None]
    length = np.ceil(length).astype(np.int64)
    finished = length <= max_new_tokens
    tokens = np.minimum(length, max_new_tokens)
    correct = solvable & finished
    records = []
    for i in range(n):
        records.append({
            "id": ids[i] if ids else f"sim-{i}",
            "text": texts[i] if texts else f"simulated query {i}",
            "task": tasks[i] if tasks else "simulated",
            "max_new_tokens": int(max_new_tokens),
            "simulated": True,
            "true_curve": {"tau": float(curves.tau[i]), "p": float(curves.p[i]),
                           "k": float(curves.k[i])},
            "rollouts": [{"tokens": int(t), "correct": bool(c), "finished": bool(f)}
                         for t, c, f in zip(tokens[i], correct[i], finished[i])],
        })
    return records


#: Task families of the simulated demo: (name, tau median, p Beta, width median, text length).
SIM_TASKS = (
    ("sim-easy", 60.0, (6.0, 1.5), 40.0, 12),
    ("sim-medium", 180.0, (3.0, 2.0), 80.0, 30),
    ("sim-hard", 380.0, (1.5, 3.0), 120.0, 60),
)


def simulated_dataset(n_per_task: int = 150, n_rollouts: int = 8, max_new_tokens: int = 512,
                      seed: int = 0) -> list[dict]:
    """A simulated, labeled data set of three task families (easy, medium, hard)."""
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    for t, (name, tau_med, beta, width_med, words) in enumerate(SIM_TASKS):
        c = Curves(rng.lognormal(np.log(tau_med), 0.4, n_per_task),
                   rng.beta(*beta, n_per_task),
                   1.0 / rng.lognormal(np.log(width_med), 0.4, n_per_task))
        texts = [" ".join(["word"] * int(words * (1 + 0.3 * rng.standard_normal())) or ["w"])
                 + f" [{name} {i}]" for i in range(n_per_task)]
        records += sample_rollouts(c, n_rollouts, max_new_tokens, seed=seed * 100 + t,
                                   texts=texts, tasks=[name] * n_per_task,
                                   ids=[f"{name}-{i}" for i in range(n_per_task)])
    return records
