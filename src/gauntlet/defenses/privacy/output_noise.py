"""Release probabilities with calibrated random noise that never changes the label."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.privacy._base import OutputDefense
from gauntlet.defenses.registry import register


@register
class OutputNoise(OutputDefense):
    """Noise on the log-probabilities, renormalised, with the label kept.

    Each query's log-probabilities get i.i.d. noise of scale ``sigma`` (``"gaussian"``: standard
    deviation; ``"laplace"``: the Laplace scale ``b``) and are renormalised with a softmax.
    Where the noise would move the top class, the values of the true top class and the new one
    are swapped, so the label — and top-1 accuracy — never changes while the confidences an
    extraction or membership attack reads are perturbed.  Noise comes from the wrapper's
    seeded generator: the same query asked twice gets two different answers (averaging
    repeated queries lowers the noise by √n, which a monitor can watch for).

    Args:
        sigma: noise scale on the log-probabilities (0.5 leaves confidences readable but noisy).
        distribution: ``"gaussian"`` or ``"laplace"``.
    """

    name = "output_noise"
    description = "output hardening: label-preserving random noise on the released probabilities"
    reference = "Lee et al., 'Defending Against NN Model Stealing Attacks Using Deceptive Perturbations', IEEE S&P Workshops 2019"
    randomized = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "sigma": [Interval(float, 0, None, closed="neither")],
        "distribution": [Options(("gaussian", "laplace"))],
    }

    def __init__(self, *, sigma: float = 0.5, distribution: str = "gaussian") -> None:
        self.sigma = sigma
        self.distribution = distribution
        self._validate()

    def release(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        logp = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        if self.distribution == "gaussian":
            noise = torch.randn(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        else:
            u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype) - 0.5
            noise = -torch.sign(u) * torch.log1p(-2 * u.abs())
        out = torch.softmax(logp + self.sigma * noise, dim=1)
        label = probs.argmax(dim=1, keepdim=True)
        moved = out.argmax(dim=1, keepdim=True)
        top, at_label = out.gather(1, moved), out.gather(1, label)
        return out.scatter(1, moved, at_label).scatter(1, label, top)
