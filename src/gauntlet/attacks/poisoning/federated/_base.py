"""The malicious-client base class (kind ``"federated"``): what a colluding set of federated
clients sends instead of its honest updates.

``craft(honest_updates, n_malicious=..., own=..., n_clients=...)`` returns a
``(n_malicious, d)`` tensor of updates (deltas from the global model), one per malicious client.
``honest_updates`` ``(k, d)`` is what the attacker knows of the benign updates this round: every
honest client's in the omniscient setting of Xie et al. and Fang et al., or only the updates its
own clients computed honestly on their own data (Baruch et al.'s estimate).  ``own``
``(n_malicious, d)`` are the malicious clients' own trained updates (honest, or trained on
backdoored data when the federation gives them a backdoor); attacks that scale or flip what a
client trained read them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Hyperparameters, validate_params
from gauntlet.errors import ConfigError, DataError

__all__ = ["FederatedAttack", "craft"]


def _check_stack(owner: str, what: str, t: object, d: int | None = None) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] == 0 or not t.dtype.is_floating_point:
        got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
        raise DataError(f"{owner}: {what} must be a floating (n, d) tensor of flattened updates with n >= 1, got {got}")
    if d is not None and t.shape[1] != d:
        raise DataError(f"{owner}: {what} has {t.shape[1]} coordinates per update but honest_updates {d}; flatten them alike")
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{owner}: {what} hold NaN or inf")
    return t


class FederatedAttack(Hyperparameters):
    """Base class of the malicious-client attacks.  Subclasses implement :meth:`_craft`.

    ``needs_own`` attacks transform what each malicious client trained (``own``); the others
    compute from the honest statistics alone.  ``targeted`` attacks (a backdoor carried by the
    malicious clients' own training) report backdoor success in the federation.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kind: ClassVar[str] = "federated"
    needs_own: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def craft(
        self,
        honest_updates: Tensor,
        *,
        n_malicious: int,
        own: Tensor | None = None,
        n_clients: int | None = None,
        seed: int = 0,
    ) -> Tensor:
        """The ``(n_malicious, d)`` updates the malicious clients send this round.

        Args:
            honest_updates: ``(k, d)``, the benign updates the attacker knows.
            n_malicious: how many malicious clients send an update.
            own: ``(n_malicious, d)``, what each malicious client trained itself (``needs_own``
                attacks fall back to the mean of ``honest_updates`` when absent).
            n_clients: the clients aggregated this round (default ``k + n_malicious``).
            seed: seeds an explicit generator for randomised attacks.
        """
        h = _check_stack(self.name, "honest_updates", honest_updates)
        if isinstance(n_malicious, bool) or not isinstance(n_malicious, int) or n_malicious < 1:
            raise ConfigError(f"{self.name}: n_malicious must be an int >= 1, got {n_malicious!r}")
        n = h.shape[0] + n_malicious if n_clients is None else n_clients
        if isinstance(n, bool) or not isinstance(n, int) or n <= n_malicious:
            raise ConfigError(f"{self.name}: n_clients must be an int > n_malicious ({n_malicious}), got {n_clients!r}")
        if own is not None:
            own = _check_stack(self.name, "own", own, h.shape[1])
            if own.shape[0] != n_malicious:
                raise DataError(f"{self.name}: own must hold one update per malicious client ({n_malicious}), got {own.shape[0]}")
        elif self.needs_own:
            own = h.mean(dim=0, keepdim=True).expand(n_malicious, -1)
        gen = torch.Generator(device=h.device).manual_seed(int(seed))
        out = self._craft(h, own, n_malicious, n, gen)
        if out.shape != (n_malicious, h.shape[1]) or not bool(torch.isfinite(out).all()):
            raise AssertionError(f"{self.name} crafted {tuple(out.shape)} updates, expected ({n_malicious}, {h.shape[1]}) finite")
        return out

    def _craft(self, honest: Tensor, own: Tensor | None, m: int, n: int, gen: torch.Generator) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def craft(name: str, honest_updates: Tensor, *, n_malicious: int, own: Tensor | None = None,
          n_clients: int | None = None, seed: int = 0, **params: Any) -> Tensor:
    """``craft("alie", honest_updates, n_malicious=2)``: the registered federated attack ``name``
    built with ``params``; returns the ``(n_malicious, d)`` malicious updates."""
    from gauntlet.attacks.registry import create

    attack = create(name, **params)
    if not isinstance(attack, FederatedAttack):
        raise ConfigError(f"{name!r} is a {attack.kind} attack, not a federated one (gauntlet attacks --kind federated)")
    return attack.craft(honest_updates, n_malicious=n_malicious, own=own, n_clients=n_clients, seed=seed)
