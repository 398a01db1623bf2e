"""FLTrust: client updates weighted by their cosine agreement with the server's own update."""

from __future__ import annotations

import torch
from torch import Tensor

from gauntlet.defenses.federated._base import Aggregation, Aggregator
from gauntlet.defenses.registry import register


@register
class FLTrust(Aggregator):
    """Cao et al.'s FLTrust.  The server trains on a small clean root dataset each round; that
    update ``g0`` is the ``reference``.  A client's trust score is ReLU(cos(g_i, g0)); each update
    is rescaled to ‖g0‖ and the aggregate is their trust-weighted mean.  Clients pointing away
    from the server's direction get weight 0 (reported as rejected); no update, however large,
    weighs more than the server's own norm.
    """

    name = "fltrust"
    description = "FLTrust: updates rescaled to the server's root-data update and weighted by ReLU(cosine) with it"
    reference = (
        "Cao, Fang, Liu, Gong, 'FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping', NDSS 2021, "
        "https://arxiv.org/abs/2012.13995"
    )
    needs_reference = True

    def __init__(self) -> None:
        self._validate()

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        assert reference is not None  # the base class insists
        g0 = reference
        n0 = g0.norm()
        norms = u.norm(dim=1).clamp_min(1e-12)
        trust = torch.relu((u @ g0) / (norms * n0.clamp_min(1e-12)))
        keep = trust > 0
        if not bool(keep.any()):
            return Aggregation(torch.zeros_like(g0), keep, trust, {"trust": trust.tolist()})
        share = trust / trust.sum()
        update = share @ (u * (n0 / norms)[:, None])
        return Aggregation(update, keep, share, {"trust": trust.tolist()})
