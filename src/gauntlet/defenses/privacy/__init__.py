"""Privacy and model-stealing defenses: output hardening (kind ``"output"``: ``top_k``,
``rounding``, ``labels_only``, ``output_noise``; ``wrap(model)`` returns the hardened black
box), query monitoring (kind ``"monitor"``: ``prada``) and ownership watermarking (kind
``"watermark"``: ``watermark``).  See ``docs/privacy.md``."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.defenses.privacy._base import HardenedModel, OutputDefense, probabilities

__all__ = ["HardenedModel", "OutputDefense", "probabilities"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
