"""Model adapters behind one protocol (:class:`Model`), and safe loading of model files (:func:`load`)."""

from gauntlet.models.base import InputSpec, Model
from gauntlet.models.callable_model import CallableModel
from gauntlet.models.estimated_gradients import EstimatedGradients
from gauntlet.models.loading import build_arch, detect_format, load, resolve_arch
from gauntlet.models.onnx_model import OnnxModel
from gauntlet.models.remote import RemoteModel
from gauntlet.models.sklearn_model import SklearnModel
from gauntlet.models.torch_model import TorchModel
from gauntlet.models.wrapped import WrappedModel

__all__ = [
    "CallableModel",
    "EstimatedGradients",
    "InputSpec",
    "Model",
    "OnnxModel",
    "RemoteModel",
    "SklearnModel",
    "TorchModel",
    "WrappedModel",
    "build_arch",
    "detect_format",
    "load",
    "resolve_arch",
]
