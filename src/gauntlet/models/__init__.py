"""Model adapters behind one protocol (:class:`Model`)."""

from gauntlet.models.base import InputSpec, Model
from gauntlet.models.torch_model import TorchModel

__all__ = ["InputSpec", "Model", "TorchModel"]
