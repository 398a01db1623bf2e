"""Adapter for an ONNX model file, run with onnxruntime (black box: scores and labels)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Interval, IsNone, Options, validate_params
from gauntlet.errors import ConfigError, DataError, ModelLoadError, first_line
from gauntlet.models.base import InputSpec, Model
from gauntlet.models.callable_model import parse_bounds, parse_shape

_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}




def import_onnxruntime() -> Any:
    """``onnxruntime``, or a :class:`ModelLoadError` saying how to install it."""
    try:
        import onnxruntime  # type: ignore[import-untyped]  # onnxruntime ships no type information
    except ImportError:
        raise ModelLoadError(
            "ONNX models need onnxruntime, which is not installed; pip install gauntlet[onnx]"
        ) from None
    return onnxruntime


class OnnxModel(Model):
    """An ONNX classifier run on onnxruntime's CPU provider (capabilities: scores, labels).

    The graph must have one input (a float tensor whose first dimension is the batch) and its
    first output must be the scores ``(N, C)`` (or labels ``(N,)`` with ``output="labels"``).
    The per-sample input shape is read from the graph; a dynamic non-batch dimension leaves it
    unchecked unless ``input_shape`` is given.  A graph exported with a fixed batch size is fed
    in chunks of that size.  Inputs are converted to NumPy once per call, at the edge.

    Args:
        path: the ``.onnx`` file.
        bounds: the valid input range.
        num_classes: number of classes; read from the graph's output when static, else checked
            against the output with one run when the input shape is known, or on the first query.
        output: ``"logits"`` (default), ``"probabilities"`` or ``"labels"``.
        providers: onnxruntime execution providers; default ``["CPUExecutionProvider"]``.
        input_shape: per-sample shape, for graphs whose non-batch dimensions are dynamic.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        num_classes: int | None = None,
        output: str = "logits",
        providers: Sequence[str] | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        validate_params(
            "OnnxModel",
            {"num_classes": num_classes, "output": output},
            {
                "num_classes": [Interval(int, 2, None), IsNone()],
                "output": [Options(("logits", "probabilities", "labels"))],
            },
        )
        lo_hi = parse_bounds("OnnxModel", bounds)
        shape = parse_shape("OnnxModel", input_shape)
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"OnnxModel: path must be a file path, got {type(path).__name__}")
        self.path = Path(path)
        if not self.path.exists():
            raise ModelLoadError(f"OnnxModel: model file {str(self.path)!r} does not exist; check the path")
        if not self.path.is_file():
            raise ModelLoadError(f"OnnxModel: {str(self.path)!r} is not a file; pass the .onnx file itself")
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"]
        if isinstance(providers, str) or not all(isinstance(p, str) for p in providers) or not providers:
            raise ConfigError(f"OnnxModel: providers must be a list of provider names, got {providers!r}")
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise ConfigError(
                f"OnnxModel: execution provider(s) {', '.join(unknown)} not available here; "
                f"choose from {', '.join(available)}"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            raise ModelLoadError(
                f"OnnxModel: cannot load {str(self.path)!r} as an ONNX model ({first_line(exc)}); "
                "the file is corrupt or not ONNX: re-export it (torch.onnx.export)"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"OnnxModel: {str(self.path)!r} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                "gauntlet needs a graph with a single input batch"
            )
        spec = inputs[0]
        if spec.type not in _NP_TYPES:
            raise ModelLoadError(
                f"OnnxModel: {str(self.path)!r} takes {spec.type}, not a float tensor; "
                "export the model with a float input"
            )
        self._in_name = spec.name
        self._in_dtype = _NP_TYPES[spec.type]
        dims = list(spec.shape or [])
        if not dims:
            raise ModelLoadError(
                f"OnnxModel: {str(self.path)!r} has a scalar input; its first dimension must be the batch"
            )
        self._batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        graph_shape = tuple(dims[1:])
        static = all(isinstance(d, int) and d > 0 for d in graph_shape)
        if shape is not None and len(shape) == len(graph_shape):
            clash = [(s, g) for s, g in zip(shape, graph_shape) if isinstance(g, int) and g > 0 and s != g]
            if clash:
                raise ConfigError(
                    f"OnnxModel: input_shape {shape} contradicts the graph's input shape "
                    f"{tuple(d if isinstance(d, int) else '?' for d in graph_shape)}; drop input_shape"
                )
        elif shape is not None:
            raise ConfigError(
                f"OnnxModel: input_shape {shape} has {len(shape)} dimensions but the graph's input has "
                f"{len(graph_shape)} per sample; drop input_shape"
            )
        elif static:
            shape = tuple(int(d) for d in graph_shape)
        out = self.session.get_outputs()[0]
        self._out_name = out.name
        out_dims = list(out.shape or [])
        static_c = out_dims[1] if len(out_dims) == 2 and isinstance(out_dims[1], int) and out_dims[1] > 0 else None
        if output != "labels" and static_c is not None:
            if num_classes is not None and num_classes != static_c:
                raise ConfigError(
                    f"OnnxModel: num_classes={num_classes} but the graph's output has {static_c} scores; "
                    "drop num_classes"
                )
            num_classes = static_c
        self.output = output  # type: ignore[assignment]
        self.capabilities = frozenset({"labels"} if output == "labels" else {"scores", "labels"})
        self.input_spec = InputSpec(shape, torch.float32, lo_hi)
        self._num_classes = num_classes
        if static_c is None:  # a dynamic output width: check num_classes with one run (or the first query)
            self._probe_outputs()

    def _run(self, arr: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.session.run([self._out_name], {self._in_name: arr})[0])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind exceptions
            raise DataError(
                f"OnnxModel: onnxruntime rejected a batch of shape {arr.shape} ({first_line(exc)}); "
                "pass inputs of the shape the model was exported with"
            ) from None

    def _forward(self, x: Tensor) -> Tensor:
        arr = np.ascontiguousarray(x.detach().to(device="cpu").numpy(), dtype=self._in_dtype)
        b = self._batch
        if b is None or arr.shape[0] == b:
            out = self._run(arr)
        else:
            parts = []
            for s in range(0, arr.shape[0], b):
                chunk = arr[s : s + b]
                m = chunk.shape[0]
                if m < b:  # pad the last chunk up to the graph's fixed batch size
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - m, axis=0)])
                parts.append(self._run(chunk)[:m])
            out = np.concatenate(parts)
        n = int(x.shape[0])
        if self.output == "labels":
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != 1 or out.shape[0] != n:
                raise DataError(
                    f"OnnxModel: the graph returned shape {out.shape} for a batch of {n}; output='labels' needs ({n},)"
                )
            return torch.from_numpy(out.astype(np.int64, copy=False)).to(x.device)
        if out.ndim != 2 or out.shape[0] != n:
            raise DataError(
                f"OnnxModel: the graph's first output has shape {out.shape} for a batch of {n}; "
                "gauntlet needs scores (N, num_classes), or pass output='labels'"
            )
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)
