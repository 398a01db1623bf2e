"""The typed result every attack returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one ``attack.run`` call.

    With a single ε (or a minimal-norm attack run without ε) ``x_adv`` has the input's shape
    ``(N, ...)`` and ``success``/``norms`` have shape ``(N,)``.  When ε was given as a list,
    every per-sample field gains a leading ε axis: ``x_adv`` is ``(E, N, ...)``, ``success`` and
    ``norms`` are ``(E, N)``; :meth:`at` picks one ε.

    ``success`` is recomputed with the model after projection into the ε-ball and the input
    bounds; for an untargeted attack it is ``prediction != y`` (a clean mistake counts as a
    success), for a targeted one ``prediction == target``.
    """

    attack: str
    x_adv: Tensor
    success: Tensor
    norms: Tensor
    norm: str
    eps: float | tuple[float, ...] | None
    targeted: bool
    y: Tensor
    target: Tensor | None
    clean_correct: Tensor
    queries: int
    grad_evals: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # attack-specific extras (e.g. per-attack breakdown)

    @property
    def multi_eps(self) -> bool:
        return isinstance(self.eps, tuple)

    @property
    def robust_accuracy(self) -> float | Tensor:
        """Share of samples the attack did not fool (per ε when several were given)."""
        if self.targeted:
            # robust = still classified correctly
            raise AttributeError("robust_accuracy is defined for untargeted attacks; use success_rate")
        r = (~self.success).float().mean(dim=-1)
        return r if self.multi_eps else float(r)

    @property
    def success_rate(self) -> float | Tensor:
        r = self.success.float().mean(dim=-1)
        return r if self.multi_eps else float(r)

    def median_norm(self) -> float | Tensor:
        """Median perturbation norm over successful samples (NaN where there is none)."""

        def med(s: Tensor, n: Tensor) -> float:
            return float(n[s].median()) if bool(s.any()) else float("nan")

        if self.multi_eps:
            return torch.tensor([med(s, n) for s, n in zip(self.success, self.norms)])
        return med(self.success, self.norms)

    def at(self, index: int) -> AttackResult:
        """The single-ε result for ``self.eps[index]``."""
        if not self.multi_eps:
            raise IndexError("this result holds a single ε")
        assert isinstance(self.eps, tuple)
        return replace(
            self,
            x_adv=self.x_adv[index],
            success=self.success[index],
            norms=self.norms[index],
            eps=self.eps[index],
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        out: dict[str, Any] = {
            "attack": self.attack,
            "norm": self.norm,
            "eps": list(self.eps) if isinstance(self.eps, tuple) else self.eps,
            "targeted": self.targeted,
            "n": int(self.y.shape[0]),
            "clean_accuracy": float(self.clean_correct.float().mean()),
            "success_rate": _plain(self.success_rate),
            "median_norm": _plain(self.median_norm()),
            "queries": self.queries,
            "grad_evals": self.grad_evals,
            "seed": self.seed,
            "seconds": round(self.seconds, 4),
            "params": self.params,
        }
        if not self.targeted:
            out["robust_accuracy"] = _plain(self.robust_accuracy)
        return out


def _plain(v: float | Tensor) -> float | list[float]:
    return v.tolist() if isinstance(v, Tensor) else v
