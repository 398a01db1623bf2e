"""Safe loading of model files: the format is detected from the content, pickles need trust.

=======================  ==========================================  ===================
format                   detected by                                 becomes
=======================  ==========================================  ===================
TorchScript archive      zip holding ``code/`` / ``constants.pkl``   TorchModel
``torch.save`` weights   zip holding ``data.pkl``, or the legacy     TorchModel (with
                         (pre-1.6) pickle with torch's magic number  ``arch=``)
safetensors              8-byte header length + JSON header          TorchModel (``arch=``)
ONNX                     ``.onnx`` extension                         OnnxModel
pickle / joblib          pickle opcodes, ``.pkl/.pickle/.joblib``    needs ``trust=True``
=======================  ==========================================  ===================

A ``torch.save`` file is first read with ``weights_only=True`` (tensors and plain containers
only); one that needs full unpickling (a whole pickled module, a scikit-learn estimator) is
refused with :class:`UntrustedFileError` unless ``trust=True``, because unpickling runs
arbitrary code from the file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, validate_params
from gauntlet.errors import ConfigError, ModelLoadError, UnknownNameError, UntrustedFileError, first_line
from gauntlet.models.base import Model
from gauntlet.models.onnx_model import OnnxModel
from gauntlet.models.sklearn_model import SklearnModel
from gauntlet.models.torch_model import TorchModel
from gauntlet.models.zoo import ARCHITECTURES

__all__ = ["build_arch", "detect_format", "load", "resolve_arch"]

_TORCH_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # LONG1 opcode + torch's magic number
_PICKLE_EXTS = {".pkl", ".pickle", ".joblib", ".sav", ".dill"}
_COMPRESSED_EXTS = {".gz", ".z", ".bz2", ".xz", ".lzma"}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_ZOO_INPUT_SHAPES = {
    "digits_cnn": (1, 8, 8),
    "smallcnn": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "wong_kolter_small": (1, 28, 28),
}
_UNTRUSTED = (
    "loading it would run arbitrary code from the file; pass trust=True (CLI --trust) only for files "
    "from a source you trust, or re-save as safetensors/TorchScript/ONNX"
)


def _is_pickle_name(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED_EXTS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _PICKLE_EXTS


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a model file: ``"torchscript"``, ``"torch"`` (``torch.save`` zip),
    ``"torch_legacy"``, ``"safetensors"``, ``"onnx"`` or ``"pickle"``.

    Content wins over the extension (a pickle named ``.onnx`` is still a pickle); raises
    :class:`ModelLoadError` for a missing, empty or unrecognised file.
    """
    p = _check_path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{str(p)!r} is a damaged zip archive ({first_line(exc)}); "
                "the file is truncated or corrupt, re-save it"
            ) from None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        raise ModelLoadError(
            f"{str(p)!r} is a zip archive but not a TorchScript or torch.save file (no data.pkl inside); "
            "pass a TorchScript, torch.save, safetensors, ONNX or pickle model file"
        )
    if head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head[:32]:
        return "torch_legacy"
    if _is_safetensors(head, size):
        end = 8 + int.from_bytes(head[:8], "little")
        if p.suffix.lower() == ".safetensors" or end <= 100_000_000:
            with p.open("rb") as f:
                f.seek(8)
                header = f.read(min(end - 8, 100_000_000))
            try:
                if isinstance(json.loads(header), dict):
                    return "safetensors"
            except (ValueError, UnicodeDecodeError):
                if p.suffix.lower() == ".safetensors":
                    raise ModelLoadError(
                        f"{str(p)!r} has a damaged safetensors header; the file is corrupt, re-save it"
                    ) from None
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "pickle"
    if _is_pickle_name(p):
        return "pickle"
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.suffix.lower() == ".safetensors":
        raise ModelLoadError(
            f"{str(p)!r} is not a valid safetensors file (bad header); the file is corrupt, re-save it"
        )
    raise ModelLoadError(
        f"cannot tell the format of {str(p)!r} (not TorchScript, torch.save, safetensors or pickle); "
        "the file is corrupt, or rename an ONNX model to .onnx"
    )


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"load: path must be a file path (str or Path), got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise ModelLoadError(f"{str(p)!r} is a directory; pass the model file inside it")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model file {str(p)!r} is empty (0 bytes); it was not written completely, re-save it")
    return p


# ------------------------------------------------------------------------------------------------
# architectures
def resolve_arch(arch: Any) -> tuple[Callable[..., Any], str]:
    """The architecture ``arch`` names and a label for it: ``(class or factory, label)``.

    ``arch`` is a name from :data:`gauntlet.models.zoo.ARCHITECTURES` (``"digits_cnn"``, ...),
    ``"module.path:ClassName"`` (or ``"module.path.ClassName"``; the module is imported), or a
    class, factory or ``nn.Module`` instance (returned as it is).  Raises
    :class:`~gauntlet.errors.UnknownNameError` for an unknown zoo name and
    :class:`~gauntlet.errors.ConfigError` for a path that cannot be imported or is not callable.
    """
    if isinstance(arch, nn.Module) or (callable(arch) and not isinstance(arch, str)):
        return arch, getattr(arch, "__name__", type(arch).__name__)
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"load: arch must be an architecture name or 'module.path:ClassName', got {arch!r}")
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch], arch
    if ":" in arch:
        mod_name, _, attr = arch.partition(":")
    elif "." in arch:
        mod_name, _, attr = arch.rpartition(".")
    else:
        close = difflib.get_close_matches(arch, list(ARCHITECTURES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownNameError(
            f"load: unknown architecture {arch!r}; {hint}use one of {', '.join(sorted(ARCHITECTURES))} "
            "or 'module.path:ClassName'"
        )
    if not mod_name or not attr:
        raise ConfigError(f"load: arch {arch!r} must look like 'module.path:ClassName'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - the module's own import errors, whatever they are
        raise ConfigError(
            f"load: cannot import module {mod_name!r} for arch {arch!r} ({type(exc).__name__}: {first_line(exc)}); "
            "check the spelling and that it is importable (PYTHONPATH)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"load: module {mod_name!r} has no attribute {attr!r} (arch {arch!r}); check the class name"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"load: arch {arch!r} is a {type(obj).__name__}, not a class or factory of nn.Module")
    return obj, arch


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_arch(arch: Any, kwargs: Mapping[str, Any], num_classes: int | None) -> tuple[nn.Module, str]:
    """A fresh ``nn.Module`` of the architecture ``arch`` (see :func:`resolve_arch`) and its label.

    The class or factory is called with ``kwargs``, plus ``num_classes`` when given, not in
    ``kwargs`` and accepted by it; the global RNG is left untouched.  Raises
    :class:`~gauntlet.errors.ConfigError` when it cannot be built or builds no ``nn.Module``.
    """
    factory, label = resolve_arch(arch)
    if (
        num_classes is not None
        and "num_classes" not in kwargs
        and not isinstance(factory, nn.Module)
        and _accepts(factory, "num_classes")
    ):
        kwargs = {**kwargs, "num_classes": num_classes}
    if isinstance(factory, nn.Module):
        if kwargs:
            raise ConfigError(f"load: arch is a module instance; arguments {sorted(kwargs)} cannot be applied to it")
        return factory, label
    try:
        with torch.random.fork_rng(devices=[]):  # building must not disturb the caller's RNG
            module = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"load: cannot build arch {label!r} with {dict(kwargs)!r} ({first_line(exc)})") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"load: arch {label!r} built a {type(module).__name__}, not a torch.nn.Module")
    return module, label


_resolve_arch = resolve_arch  # the former private names, kept for callers that import them
_build_arch = build_arch


def _fmt_keys(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _extract_state_dict(obj: Mapping[Any, Any], where: str) -> dict[str, Tensor]:
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return {str(k): v for k, v in inner.items()}
    keys = _fmt_keys([str(k) for k in obj])
    raise ModelLoadError(
        f"{where} holds a dict without a state dict of tensors (keys: {keys or 'none'}); "
        "save model.state_dict() or a TorchScript/ONNX export"
    )


def _apply_state_dict(module: nn.Module, sd: dict[str, Tensor], label: str, where: str) -> None:
    want = module.state_dict()
    if not any(k in want for k in sd) and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from nn.DataParallel
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    mismatched = [
        f"{k} (file {tuple(sd[k].shape)} vs arch {tuple(want[k].shape)})"
        for k in want
        if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_fmt_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_fmt_keys(mismatched, 3)}")
    if problems:
        raise ModelLoadError(
            f"the weights in {where} do not fit arch {label!r}: {'; '.join(problems)}; "
            "check arch= and its arguments"
        )
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the weights in {where} do not fit arch {label!r} ({first_line(exc)})") from None


# ------------------------------------------------------------------------------------------------
# readers
def _torch_load(p: Path, fmt: str, trust: bool) -> Any:
    where = repr(str(p))
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise ModelLoadError(f"cannot read {where} ({first_line(exc)}); the file is corrupt, re-save it") from None
        if not trust:
            raise UntrustedFileError(
                f"{where} holds pickled Python objects beyond plain weights (e.g. a whole nn.Module); {_UNTRUSTED}"
            ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        kind = "legacy (pre-1.6) torch.save" if fmt == "torch_legacy" else "torch.save"
        raise ModelLoadError(
            f"cannot read {where} as a {kind} file ({type(exc).__name__}: {first_line(exc)}); "
            "the file is truncated or corrupt, re-save it"
        ) from None
    try:  # trust=True: the explicit, opted-in full unpickling path
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure becomes one ModelLoadError line
        raise ModelLoadError(
            f"cannot unpickle {where} ({type(exc).__name__}: {first_line(exc)}); "
            "import the module that defines the saved classes first, or re-save as a state dict"
        ) from None


def _pickle_load(p: Path, trust: bool) -> Any:
    where = repr(str(p))
    if not trust:
        raise UntrustedFileError(f"{where} is a pickle/joblib file; {_UNTRUSTED}")
    try:
        import joblib  # type: ignore[import-untyped]  # joblib ships no type information

        return joblib.load(p)
    except Exception as exc:  # noqa: BLE001 - unpickling can fail in arbitrary ways
        raise ModelLoadError(
            f"cannot unpickle {where} ({type(exc).__name__}: {first_line(exc)}); "
            "the file is corrupt, or the classes it refers to are not importable here"
        ) from None


def _safetensors_load(p: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(
            "safetensors files need the safetensors package; pip install gauntlet[safetensors]"
        ) from None
    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise ModelLoadError(
            f"cannot read {str(p)!r} as safetensors ({first_line(exc)}); the file is truncated or corrupt, re-save it"
        ) from None


def _is_estimator(obj: Any) -> bool:
    return callable(getattr(obj, "predict", None)) and callable(getattr(obj, "fit", None))


# ------------------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    *,
    arch: str | Callable[..., nn.Module] | nn.Module | None = None,
    trust: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    num_classes: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    **arch_kwargs: Any,
) -> Model:
    """Load a model file into a :class:`Model`, detecting its format from the content.

    Args:
        path: a TorchScript archive, a ``torch.save`` state dict (zip or legacy format), a
            ``.safetensors`` file, an ``.onnx`` file, or (with ``trust=True``) a pickle/joblib
            file holding an ``nn.Module`` or a fitted scikit-learn classifier.
        arch: for weights-only files, the architecture to load them into: a name from
            ``gauntlet.models.zoo.ARCHITECTURES`` (``"smallcnn"``, ``"lenet5"``,
            ``"wong_kolter_small"``, ``"digits_cnn"``), ``"module.path:ClassName"``, or a
            class/factory; built with ``**arch_kwargs`` (plus ``num_classes`` when the arch takes
            it) and loaded with ``strict=True``.
        trust: allow full unpickling, which runs arbitrary code from the file; only for files
            from a source you trust.
        bounds, num_classes, mean, std, input_shape: passed to the adapter (``mean``/``std``
            only to torch models). For zoo architectures ``input_shape`` defaults to theirs.

    Raises:
        ModelLoadError: missing, empty, corrupt or unrecognised file; weights that do not fit.
        UntrustedFileError: the file needs unpickling and ``trust`` is not ``True``.
        ConfigError: bad arguments, an ``arch`` that cannot be imported or built.
    """
    validate_params("load", {"trust": trust}, {"trust": [Boolean()]})
    p = _check_path(path)
    fmt = detect_format(p)
    where = repr(str(p))
    if arch_kwargs and arch is None:
        raise ConfigError(
            f"load: unexpected keyword argument(s) {', '.join(sorted(arch_kwargs))}; "
            "extra keywords are passed to arch=, which was not given"
        )
    if arch is not None and fmt in ("torchscript", "onnx"):
        raise ConfigError(
            f"load: {where} is {'a TorchScript archive' if fmt == 'torchscript' else 'an ONNX model'}, "
            "which holds its own architecture; drop arch="
        )
    if fmt == "onnx":
        _no_normalisation(mean, std, "an ONNX model (bake the normalisation into the exported graph)")
        return OnnxModel(p, bounds=bounds, num_classes=num_classes, input_shape=input_shape)
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; the file is still valid
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
                )
                module = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError and others on damaged archives
            raise ModelLoadError(
                f"cannot read {where} as a TorchScript archive ({first_line(exc)}); the file is corrupt, re-save it"
            ) from None
        return _torch_model(module.eval(), bounds, num_classes, mean, std, input_shape)
    if fmt == "safetensors":
        obj: Any = _safetensors_load(p)
    elif fmt in ("torch", "torch_legacy"):
        obj = _torch_load(p, fmt, trust)
    else:
        obj = _pickle_load(p, trust)

    if isinstance(obj, nn.Module):
        if arch is not None:
            raise ConfigError(f"load: {where} holds a whole {type(obj).__name__} module; drop arch=")
        return _torch_model(obj.eval(), bounds, num_classes, mean, std, input_shape)
    if isinstance(obj, Mapping):
        sd = _extract_state_dict(obj, where)
        if arch is None:
            raise ConfigError(
                f"load: {where} holds only weights (a state dict); pass arch= one of "
                f"{', '.join(sorted(ARCHITECTURES))} or 'module.path:ClassName'"
            )
        module, label = build_arch(arch, arch_kwargs, num_classes)
        _apply_state_dict(module, sd, label, where)
        if input_shape is None and isinstance(arch, str):
            input_shape = _ZOO_INPUT_SHAPES.get(arch)
        return _torch_model(module.eval(), bounds, num_classes, mean, std, input_shape)
    if _is_estimator(obj):
        if arch is not None:
            raise ConfigError(f"load: {where} holds a scikit-learn {type(obj).__name__}; drop arch=")
        _no_normalisation(mean, std, "a scikit-learn model (put the scaling in a Pipeline)")
        return SklearnModel(obj, bounds=bounds, num_classes=num_classes, input_shape=input_shape)
    raise ModelLoadError(
        f"{where} holds a {type(obj).__name__}, not a model; save an nn.Module, a state dict, "
        "or a fitted scikit-learn classifier"
    )


def _no_normalisation(mean: Any, std: Any, what: str) -> None:
    if mean is not None or std is not None:
        raise ConfigError(f"load: mean/std apply to torch models only, not to {what}")


def _torch_model(
    module: nn.Module,
    bounds: tuple[float, float],
    num_classes: int | None,
    mean: Any,
    std: Any,
    input_shape: Sequence[int] | None,
) -> TorchModel:
    return TorchModel(module, bounds=bounds, num_classes=num_classes, mean=mean, std=std, input_shape=input_shape)
