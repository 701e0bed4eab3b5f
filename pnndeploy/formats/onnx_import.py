"""Read someone else's plain digital ONNX model (`train --init-from`): what our front end and chip layers can hold.

The file is hostile input (DESIGN.md, "Trust boundaries"): it is read bounded, decoded with onnx only (never
run before every node is known), and each node must be one of the few operators a small classifier exported by
``torch.onnx.export`` or tf2onnx uses, with attributes our front end can express:

* at the input, ``Sub`` / ``Add`` / ``Mul`` / ``Div`` by constants (a normalisation), ``Reshape`` to an image;
* conv stages: ``Conv`` (odd square kernel, stride 1, 'same' zero padding, no groups or dilation), optional
  ``BatchNormalization``, ``Relu`` and a 2x2 stride-2 ``MaxPool`` (in either order: they commute);
* ``Flatten`` / ``Reshape`` to (batch, features);
* linear layers: ``Gemm`` or ``MatMul`` + ``Add``, optional ``BatchNormalization``, ``Relu`` but after the last.

The graph must be that one chain; anything else is one line naming the node.  Batch norms are folded into the
layer before them (float64, exact up to float32 rounding), the input normalisation is kept as one per-feature
affine map, ``x * scale + shift``, for the caller to fold or keep.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.formats.digital import MAX_KERNEL, POOL, same_padding
from pnndeploy.formats.onnx_io import ModelSource, decode_model, read_model_bytes
from pnndeploy.untrusted import brief

#: Most nodes an imported graph may have (a LeNet exports about 20), most values one tensor may hold (a
#: 4096 x 4096 dense layer), most bytes the file may have: a classifier for the chip is small.
MAX_IMPORT_NODES = 1000
MAX_TENSOR_VALUES = 1 << 24
MAX_IMPORT_BYTES = 1 << 30
#: How a model a lab brings is read (bounded, bytes only) and what its refusals ask for.
IMPORTED_MODEL = ModelSource(MAX_IMPORT_BYTES, "export your model with torch.onnx.export or tf2onnx and pass its path",
                             "export the model again with torch.onnx.export or tf2onnx (one file)",
                             nodes_required=True)
#: Operators read; a node of any other type is refused.
OPERATORS = ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Conv", "Relu", "MaxPool", "Flatten", "Reshape",
             "BatchNormalization", "Constant", "Identity", "Dropout")


@dataclass
class ImportedNetwork:
    """The network a file holds, in our terms (float64 arrays, batch norms folded)."""

    path: Path
    sha256: str
    data: bytes
    input_name: str
    #: Per sample, what the graph's input is: (features,) or (channels, rows, cols).
    input_shape: tuple[int, ...]
    #: The image the convolutions see (None: no convolution).
    image_shape: tuple[int, int, int] | None = None
    #: The input normalisation per flattened feature: x * scale + shift (identity: ones, zeros).
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    convs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: Every linear layer, the output layer last: (weight (out, in), bias (out,)).
    linears: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    batch_norms: int = 0

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def kernel(self) -> int | None:
        return int(self.convs[0][0].shape[2]) if self.convs else None

    def architecture(self) -> dict[str, Any]:
        """The train settings this network has: conv widths, hidden widths (every linear layer but the output)."""
        return {"conv": [int(w.shape[0]) for w, _ in self.convs],
                "hidden": [int(w.shape[0]) for w, _ in self.linears[:-1]],
                "kernel": self.kernel, "batch_norm": self.batch_norms > 0}


def read_network(path: str | Path) -> ImportedNetwork:
    """The network of a plain ONNX file; every problem is one :class:`ModelFileError` line naming the node."""
    path = Path(path)
    where = f"--init-from {path}"
    data = read_model_bytes(path, where, IMPORTED_MODEL)
    proto = decode_model(data, where, IMPORTED_MODEL)
    graph = proto.graph
    if len(graph.node) > MAX_IMPORT_NODES:
        raise ModelFileError(f"{where}: {len(graph.node)} nodes, more than the {MAX_IMPORT_NODES} an imported "
                             "model may have")
    for opset in proto.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            raise ModelFileError(f"{where}: uses operator set {brief(opset.domain)}; only the standard ONNX "
                                 "operators are read")
    reader = _GraphReader(where, {t.name: _tensor(where, t) for t in graph.initializer})
    input_name, shape = _graph_input(where, graph, reader.constants)
    net = ImportedNetwork(path=path, sha256=hashlib.sha256(data).hexdigest(), data=data, input_name=input_name,
                          input_shape=shape)
    reader.read(graph.node, input_name, shape, net)
    if len(graph.output) != 1 or graph.output[0].name != reader.current:
        raise ModelFileError(f"{where}: the graph's output is not the end of its chain of layers; export one "
                             "output, the logits")
    return net


def _tensor(where: str, tensor: Any) -> np.ndarray:
    """A tensor's values, its declared size bounded before anything is allocated, finite if floating point."""
    from onnx import numpy_helper

    dims = list(tensor.dims)
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > MAX_TENSOR_VALUES:
        raise ModelFileError(f"{where}: tensor {brief(tensor.name)} declares shape {brief(dims)}, beyond the "
                             f"{MAX_TENSOR_VALUES} values a tensor may hold")
    try:
        value = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - a damaged tensor raises ValueError, TypeError, ...
        raise ModelFileError(f"{where}: tensor {brief(tensor.name)} cannot be decoded ({type(exc).__name__}); "
                             "the file is corrupted") from None
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ModelFileError(f"{where}: tensor {brief(tensor.name)} holds NaN or infinite values")
    if value.dtype.kind not in "fiu":
        raise ModelFileError(f"{where}: tensor {brief(tensor.name)} has dtype {value.dtype}, expected numbers")
    return value


def _graph_input(where: str, graph: Any, constants: dict[str, np.ndarray]) -> tuple[str, tuple[int, ...]]:
    """The one input that is not an initializer, (batch, features) or (batch, channels, rows, cols)."""
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1:
        raise ModelFileError(f"{where}: the graph has {len(inputs)} inputs; a classifier takes one, the samples")
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.WhichOneof("value") == "dim_value" else None for d in tensor.shape.dim] \
        if kind == "tensor_type" else []
    if kind != "tensor_type" or tensor.elem_type != 1 or len(dims) not in (2, 4) \
            or any(d is None or d < 1 for d in dims[1:]):
        raise ModelFileError(f"{where}: input {brief(value.name)} is not a float tensor of shape (batch, features) "
                             "or (batch, channels, rows, cols) with fixed sizes")
    return value.name, tuple(int(d) for d in dims[1:])


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Step:
    """One node read: what it does (affine, conv, bn, relu, pool, dense) and its arrays."""

    kind: str
    node: Any
    arrays: tuple[np.ndarray, ...] = ()


class _GraphReader:
    """Walks the chain of nodes (pass 1: each node checked and turned into a step, the per-sample shape of the one
    tensor that flows tracked), then assembles the steps into layers (pass 2: :func:`_assemble`)."""

    def __init__(self, where: str, constants: dict[str, np.ndarray]) -> None:
        self.where = where
        self.constants = constants
        self.current = ""
        self.shape: tuple[int, ...] = ()
        self.image_shape: tuple[int, ...] | None = None

    def bad(self, node: Any, what: str) -> ModelFileError:
        return node_error(self.where, node, what)

    def read(self, nodes: Any, input_name: str, shape: tuple[int, ...], net: ImportedNetwork) -> None:
        self.current, self.shape = input_name, shape
        steps: list[_Step] = []
        for node in nodes:
            if node.op_type not in OPERATORS or node.domain not in ("", "ai.onnx"):
                raise self.bad(node, f"operator not supported (an imported model may use {', '.join(OPERATORS)})")
            if node.op_type == "Constant":
                self._constant(node)
                continue
            if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]      # a renamed constant
                continue
            flowing = [k for k, name in enumerate(node.input) if name == self.current]
            if flowing not in ([0], [1] if node.op_type in ("Add", "Mul") else [0]) or \
                    len([o for o in node.output if o]) != 1 or len(node.output) > (2 if node.op_type == "Dropout"
                                                                               else 1):
                raise self.bad(node, "does not continue the one chain of layers from the input to the output (a "
                                     "branch, a second input or output)")
            step = getattr(self, "_" + node.op_type.lower())(node, _attributes(node))
            if step is not None:
                steps.append(step)
            self.current = node.output[0]
        net.image_shape = self.image_shape
        _assemble(self.where, steps, net)

    # -- constants ----------------------------------------------------------------------------------------
    def _const(self, node: Any, name: str) -> np.ndarray:
        if name not in self.constants:
            raise self.bad(node, f"input {brief(name)} is neither a constant nor the layer's input")
        return self.constants[name]

    def _constant(self, node: Any) -> None:
        attributes = {a.name: a for a in node.attribute}
        if set(attributes) != {"value"} or len(node.output) != 1:
            raise self.bad(node, "only a Constant with a tensor 'value' is read")
        self.constants[node.output[0]] = _tensor(self.where, attributes["value"].t)

    def _floats(self, node: Any, name: str) -> np.ndarray:
        value = self._const(node, name)
        if value.dtype.kind != "f":
            raise self.bad(node, f"constant {brief(name)} has dtype {value.dtype}, expected floating point")
        return value.astype(np.float64)

    def _check(self, node: Any, attributes: dict[str, Any], allowed: dict[str, Any]) -> None:
        """Every attribute is one this node may have, at a value the front end can express."""
        for key, value in attributes.items():
            if key not in allowed:
                raise self.bad(node, f"attribute {brief(key)} is not supported")
            ok = allowed[key]
            if not (ok(value) if callable(ok) else value == ok):
                raise self.bad(node, f"{key}={brief(value)} cannot be expressed by the front end"
                                     + ("" if callable(ok) else f" (it needs {key}={ok})"))

    # -- operators ----------------------------------------------------------------------------------------
    def _identity(self, node: Any, attributes: dict[str, Any]) -> None:
        self._check(node, attributes, {})

    def _dropout(self, node: Any, attributes: dict[str, Any]) -> None:
        if len(node.input) > 2:
            raise self.bad(node, "a training_mode input is not supported (export in evaluation mode)")
        self._check(node, attributes, {"seed": lambda v: True, "ratio": lambda v: True})

    def _relu(self, node: Any, attributes: dict[str, Any]) -> _Step:
        self._check(node, attributes, {})
        return _Step("relu", node)

    def _binary(self, node: Any, attributes: dict[str, Any]) -> _Step:
        """Add / Sub / Mul / Div by a constant: x * mul + add per flattened feature."""
        self._check(node, attributes, {})
        if len(node.input) != 2:
            raise self.bad(node, "expected two inputs")
        c = self._floats(node, node.input[1] if node.input[0] == self.current else node.input[0])
        try:
            c = np.broadcast_to(c, (1, *self.shape))
        except ValueError:
            raise self.bad(node, f"constant of shape {c.shape} does not broadcast over the samples' shape "
                                 f"{self.shape}") from None
        c = c.reshape(-1)
        ones, zeros = np.ones_like(c), np.zeros_like(c)
        if node.op_type == "Div" and np.any(c == 0):
            raise self.bad(node, "divides by zero")
        mul, add = {"Add": (ones, c), "Sub": (ones, -c), "Mul": (c, zeros),
                    "Div": (1.0 / np.where(c == 0, 1.0, c), zeros)}[node.op_type]
        return _Step("affine", node, (mul, add))

    _add = _sub = _mul = _div = _binary

    def _reshape(self, node: Any, attributes: dict[str, Any]) -> None:
        """(batch, F) to (batch, C, H, W) with C H W = F, or anything to (batch, F)."""
        self._check(node, attributes, {"allowzero": 0})
        target = [int(v) for v in self._const(node, node.input[1]).reshape(-1)] if len(node.input) == 2 else []
        size = int(np.prod(self.shape))
        if len(target) not in (2, 4) or target[0] not in (-1, 0) or any(v < -1 or v == 0 for v in target[1:]):
            raise self.bad(node, f"reshapes to {brief(target)}; only (batch, features) and (batch, channels, rows, "
                                 "cols) are read")
        rest = target[1:]
        if rest.count(-1) == 1 and len(rest) == 1:
            rest = [size]
        if -1 in rest or int(np.prod(rest)) != size or (len(rest) == 3 and len(self.shape) == 3
                                                          and tuple(rest) != self.shape):
            raise self.bad(node, f"reshapes {self.shape} per sample to {brief(target[1:])}")
        self.shape = tuple(rest)

    def _flatten(self, node: Any, attributes: dict[str, Any]) -> None:
        self._check(node, attributes, {"axis": 1})
        self.shape = (int(np.prod(self.shape)),)

    def _maxpool(self, node: Any, attributes: dict[str, Any]) -> _Step:
        if len(self.shape) != 3:
            raise self.bad(node, f"pools a (batch, {self.shape[0]}) tensor, not an image")
        self._check(node, attributes, {"kernel_shape": [POOL, POOL], "strides": [POOL, POOL], "pads": [0, 0, 0, 0],
                                       "dilations": [1, 1], "ceil_mode": 0, "storage_order": 0,
                                       "auto_pad": lambda v: v in (b"NOTSET", b"VALID")})
        if "strides" not in attributes or "kernel_shape" not in attributes:
            raise self.bad(node, f"the front end pools {POOL}x{POOL} with stride {POOL}; give both")
        c, rows, cols = self.shape
        self.shape = (c, rows // POOL, cols // POOL)
        return _Step("pool", node)

    def _conv(self, node: Any, attributes: dict[str, Any]) -> _Step:
        if len(self.shape) != 3:
            raise self.bad(node, f"convolves a (batch, {self.shape[0]}) tensor; reshape the input to an image first")
        w = self._floats(node, node.input[1]) if len(node.input) > 1 else np.zeros(0)
        k = int(w.shape[2]) if w.ndim == 4 else 0
        if self.image_shape is None:
            self.image_shape = self.shape
        if w.ndim != 4 or w.shape[1] != self.shape[0] or w.shape[2:] != (k, k) or k % 2 == 0 or k > MAX_KERNEL:
            raise self.bad(node, f"weights of shape {w.shape} on {self.shape[0]} channels; the front end takes "
                                 f"square odd kernels up to {MAX_KERNEL} (stride 1, 'same' zero padding)")
        self._check(node, attributes, {"kernel_shape": [k, k], "strides": [1, 1], "dilations": [1, 1], "group": 1,
                                       "pads": [same_padding(k)] * 4,
                                       "auto_pad": lambda v: v in (b"NOTSET", b"SAME_UPPER", b"SAME_LOWER")})
        if attributes.get("auto_pad", b"NOTSET") == b"NOTSET" and k > 1 and "pads" not in attributes:
            raise self.bad(node, f"no padding; the front end pads 'same' ({same_padding(k)} for a {k}x{k} kernel)")
        b = self._floats(node, node.input[2]) if len(node.input) > 2 else np.zeros(w.shape[0])
        if b.shape != (w.shape[0],):
            raise self.bad(node, f"bias of shape {b.shape} for {w.shape[0]} output channels")
        self.shape = (int(w.shape[0]), *self.shape[1:])
        return _Step("conv", node, (w, b))

    def _gemm(self, node: Any, attributes: dict[str, Any]) -> _Step:
        self._check(node, attributes, {"transA": 0, "transB": lambda v: v in (0, 1), "alpha": lambda v: True,
                                       "beta": lambda v: True})
        b = self._floats(node, node.input[1])
        w = b if attributes.get("transB", 0) else b.T
        c = self._floats(node, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(0)
        w = w * float(attributes.get("alpha", 1.0))
        bias = np.zeros(w.shape[0]) if c.size == 0 else c.reshape(-1) * float(attributes.get("beta", 1.0))
        return self._dense(node, w, bias)

    def _matmul(self, node: Any, attributes: dict[str, Any]) -> _Step:
        self._check(node, attributes, {})
        return self._dense(node, self._floats(node, node.input[1]).T, None)

    def _dense(self, node: Any, w: np.ndarray, bias: np.ndarray | None) -> _Step:
        if len(self.shape) != 1:
            raise self.bad(node, f"multiplies a {self.shape} tensor per sample; flatten it first")
        if w.ndim != 2 or w.shape[1] != self.shape[0]:
            raise self.bad(node, f"weights of shape {w.shape} do not take the {self.shape[0]} features it receives")
        bias = np.zeros(w.shape[0]) if bias is None else bias
        if bias.shape != (w.shape[0],):
            raise self.bad(node, f"bias of shape {bias.shape} for {w.shape[0]} outputs")
        self.shape = (int(w.shape[0]),)
        return _Step("dense", node, (w, bias))

    def _batchnormalization(self, node: Any, attributes: dict[str, Any]) -> _Step:
        self._check(node, attributes, {"epsilon": lambda v: v >= 0, "momentum": lambda v: True, "training_mode": 0,
                                       "spatial": 1})
        if len(node.input) != 5:
            raise self.bad(node, "expected inputs x, scale, B, mean, var")
        gamma, beta, mean, var = (self._floats(node, name) for name in node.input[1:])
        channels = self.shape[0]
        if any(a.shape != (channels,) for a in (gamma, beta, mean, var)):
            raise self.bad(node, f"parameters are not {channels} values, one per channel")
        if np.any(var + attributes.get("epsilon", 1e-5) <= 0):
            raise self.bad(node, "variance plus epsilon is not positive")
        s = gamma / np.sqrt(var + attributes.get("epsilon", 1e-5))
        return _Step("bn", node, (s, beta - mean * s))


def node_error(where: str, node: Any, what: str) -> ModelFileError:
    """One line naming the node (its name, else its output) and its operator."""
    name = node.name or (node.output[0] if node.output else "")
    return ModelFileError(f"{where}: node {brief(name)} ({node.op_type}): {what}")


def _assemble(where: str, steps: list[_Step], net: ImportedNetwork) -> None:
    """Pass 2: the steps as input normalisation, conv stages, linear layers (the only order the front end has)."""
    i = 0
    net.scale, net.shift = np.ones(net.n_features), np.zeros(net.n_features)
    while i < len(steps) and steps[i].kind == "affine":
        mul, add = steps[i].arrays
        net.scale, net.shift = net.scale * mul, net.shift * mul + add
        i += 1
    while i < len(steps) and steps[i].kind == "conv":
        w, b, i = _fold_after(where, steps, i, net)
        if net.convs and w.shape[2] != net.kernel:
            raise node_error(where, steps[i - 1].node, f"a {w.shape[2]}x{w.shape[2]} kernel after "
                             f"{net.kernel}x{net.kernel} ones; the front end uses one kernel size")
        if sorted(s.kind for s in steps[i:i + 2]) != ["pool", "relu"]:
            at = steps[i].node if i < len(steps) else None
            what = "a conv stage is Conv, optional BatchNormalization, then Relu and a 2x2 MaxPool"
            raise node_error(where, at, what) if at is not None else ModelFileError(f"{where}: the graph ends "
                                                                                      f"inside a conv stage; {what}")
        net.convs.append((w, b))
        i += 2
    while i < len(steps) and steps[i].kind == "dense":
        w, b, i = _fold_after(where, steps, i, net)
        net.linears.append((w, b))
        if i < len(steps) and steps[i].kind == "relu":
            if i == len(steps) - 1:
                raise node_error(where, steps[i].node, "a Relu after the output layer; export the logits")
            i += 1
        elif i < len(steps):
            break
    if i < len(steps):
        raise node_error(where, steps[i].node, "cannot come here: an imported model is an input normalisation, "
                                               "conv stages (conv, Relu, MaxPool), then linear layers with a Relu "
                                               "between each two")
    if not net.linears:
        raise ModelFileError(f"{where}: no linear layer (Gemm or MatMul); the chip needs at least one")


def _fold_after(where: str, steps: list[_Step], i: int, net: ImportedNetwork) -> tuple[np.ndarray, np.ndarray, int]:
    """Layer ``i``'s (weight, bias) with the batch norms and constant Add / Mul right after it folded in (exact: an
    affine map per output of an affine layer); returns them and the index of the next step."""
    w, b = steps[i].arrays
    conv = steps[i].kind == "conv"
    i += 1
    while i < len(steps) and steps[i].kind in ("bn", "affine"):
        mul, add = steps[i].arrays
        if steps[i].kind == "bn":
            net.batch_norms += 1
        elif conv:
            mul, add = mul.reshape(w.shape[0], -1), add.reshape(w.shape[0], -1)
            if np.ptp(mul, axis=1).any() or np.ptp(add, axis=1).any():
                raise node_error(where, steps[i].node, "varies within a channel after a conv; only a per-channel "
                                                       "constant folds into it")
            mul, add = mul[:, 0], add[:, 0]
        w = w * mul.reshape(-1, *([1] * (w.ndim - 1)))
        b = b * mul + add
        i += 1
    return w, b, i
