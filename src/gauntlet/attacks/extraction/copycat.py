"""Copycat CNN: steal a network from its hard labels on (possibly out-of-domain) natural inputs.

Correia-Silva et al. (IJCNN 2018) label a large set of natural images, even ones from other
problems, with the target's predicted class only (no scores) and train a copy on that "fake
dataset" with cross-entropy.  This is the labels-only counterpart of
:class:`~gauntlet.attacks.extraction.knockoff.Knockoff` and shares its machinery
(:class:`~gauntlet.attacks.extraction.knockoff.SurrogateExtraction`): the same query budget,
query strategies (``"natural"``, ``"random"``, ``"jacobian"`` — Papernot et al.'s augmentation
was itself labels-only), selection, surrogate and training hyperparameters, and the same
``info`` (per-round history, queried pool rows).
"""

from __future__ import annotations

from typing import ClassVar

from gauntlet.attacks.extraction.knockoff import SurrogateExtraction
from gauntlet.attacks.registry import register

__all__ = ["Copycat"]


@register
class Copycat(SurrogateExtraction):
    """Copycat CNN (Correia-Silva et al. 2018): a surrogate trained with cross-entropy on the
    target's hard labels for the attacker's queries; works on labels-only targets.

    Args: ``max_queries``, ``query_set``, ``query_strategy``, ``selection``, ``surrogate``,
    ``epochs``, ``batch_size``, ``lr``, ``rounds``, ``jacobian_step``, as in
    :class:`~gauntlet.attacks.extraction.knockoff.SurrogateExtraction`.
    """

    name: ClassVar[str] = "copycat"
    description: ClassVar[str] = (
        "Copycat CNN: a surrogate trained on the target's hard labels for natural (even out-of-domain), "
        "random or Jacobian-augmented queries under a query budget (Correia-Silva et al. 2018)"
    )
    reference: ClassVar[str] = (
        'Correia-Silva, Berriel, Badue, de Souza and Oliveira-Santos, "Copycat CNN: Stealing Knowledge by '
        'Persuading Confession with Random Non-Labeled Data", IJCNN 2018, https://arxiv.org/abs/1806.05476'
    )
    needs: ClassVar[str] = "labels"
    labels_alternative: ClassVar[str] = "copycat"
