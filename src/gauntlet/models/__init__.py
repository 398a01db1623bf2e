"""Model adapters behind one protocol (:class:`Model`), and safe loading of model files (:func:`load`)."""

from gauntlet.models.base import InputSpec, Model
from gauntlet.models.callable_model import CallableModel
from gauntlet.models.loading import detect_format, load
from gauntlet.models.onnx_model import OnnxModel
from gauntlet.models.sklearn_model import SklearnModel
from gauntlet.models.torch_model import TorchModel

__all__ = ["CallableModel", "InputSpec", "Model", "OnnxModel", "SklearnModel", "TorchModel", "detect_format", "load"]
