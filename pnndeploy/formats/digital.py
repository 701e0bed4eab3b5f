"""The digital front end of a model: electronic layers that run before the on-chip ones.

The paper puts only its last fully connected layers on the chip, behind a
digital front end.  A front end is a list of layers, each followed by a ReLU:

* ``conv``: a KxK convolution (K odd, 3 by default; stride 1, zero padding K // 2, so
  the image keeps its size), ReLU, then a 2x2 max-pool, on images of (channels, rows,
  cols); the first dense or on-chip layer after the stack sees it flattened in
  (channel, row, col) order;
* ``dense``: ``h @ W.T + b``, ReLU.

Before them, a front end may hold an input normalisation, ``x * scale + shift`` per input feature (a model
imported with ``train --init-from`` whose normalisation cannot be folded into its first convolution exactly: a
shift before a zero-padded conv changes the border).  Files that hold one say format version 2.

Digital layers are the same on every chip, so the fleet computes them once and
only the on-chip layers per chip.  This module holds their file form: the ONNX
nodes, the ``pnndeploy.digital`` metadata, and a numpy forward pass that the
simulated fleet and the nominal check use (onnxruntime agrees with it, tested).
A batch norm the front end trained with is folded into these layers' weights at
export, so a file holds plain convolutions and dense layers whatever trained them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.untrusted import brief

KINDS = ("conv", "dense")
#: The default conv kernel (K x K), the largest a model file may hold, and the max-pool's size and stride.
KERNEL, MAX_KERNEL, POOL = 3, 11, 2


def same_padding(kernel: int) -> int:
    """The zero padding that keeps an image's size under an odd kernel (1 for 3x3, 2 for 5x5)."""
    return kernel // 2


@dataclass
class DigitalLayer:
    """One electronic layer of the front end."""

    name: str
    kind: str              # "conv" or "dense"
    weight: np.ndarray     # conv: (out_ch, in_ch, K, K); dense: (out, in); float32
    bias: np.ndarray       # (out,) float32

    @property
    def kernel(self) -> int:
        """A conv layer's kernel size K (its weights are K x K)."""
        return int(self.weight.shape[2])

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "in": int(self.weight.shape[1]),
                                "out": int(self.weight.shape[0])}
        if self.kind == "conv":
            info.update(kernel=self.kernel, padding=same_padding(self.kernel), pool=POOL)
        return info


@dataclass
class DigitalFrontEnd:
    """The front end's layers and the image shape it takes ((channels, rows, cols); None for dense only)."""

    layers: list[DigitalLayer]
    input_shape: tuple[int, int, int] | None = None
    #: (scale, shift), float32 per input feature: the input normalisation before the first layer (None: none).
    input_affine: tuple[np.ndarray, np.ndarray] | None = None

    def output_size(self) -> int:
        """Features the first on-chip layer receives."""
        size = self.input_size() if self.input_shape is None else int(np.prod(self.conv_output_shape()))
        for layer in self.layers:
            if layer.kind == "dense":
                size = int(layer.weight.shape[0])
        return size

    def conv_output_shape(self) -> tuple[int, int, int]:
        """(channels, rows, cols) after the conv stages (each 2x2 max-pool floors the size)."""
        assert self.input_shape is not None
        c, rows, cols = self.input_shape
        for layer in self.layers:
            if layer.kind == "conv":
                c, rows, cols = int(layer.weight.shape[0]), rows // POOL, cols // POOL
        return c, rows, cols

    def input_size(self) -> int:
        if self.input_shape is not None:
            return int(np.prod(self.input_shape))
        return int(self.layers[0].weight.shape[1])

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"input_shape": list(self.input_shape) if self.input_shape else None,
                               "layers": [layer.describe() for layer in self.layers]}
        if self.input_affine is not None:
            doc["input_affine"] = {"features": self.input_size()}
        return doc

    def forward(self, X_scaled: np.ndarray) -> np.ndarray:
        """The front end's output, (samples, features) float32, from scaled inputs (samples, input_size)."""
        h = np.asarray(X_scaled, dtype=np.float32)
        if self.input_affine is not None:
            h = h * self.input_affine[0] + self.input_affine[1]
        if self.input_shape is not None:
            h = h.reshape(h.shape[0], *self.input_shape)
        for layer in self.layers:
            if layer.kind == "conv":
                h = _max_pool(np.maximum(_conv(h, layer.weight, layer.bias), 0.0))
            else:
                h = np.maximum(h.reshape(h.shape[0], -1) @ layer.weight.T + layer.bias, 0.0)
        return np.ascontiguousarray(h.reshape(h.shape[0], -1), dtype=np.float32)


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(n, c, r, q) -> (n, o, r, q): KxK convolution, zero padding K // 2, as K^2 shifted products."""
    n, c, rows, cols = x.shape
    kernel = int(weight.shape[2])
    pad = same_padding(kernel)
    padded = np.zeros((n, c, rows + 2 * pad, cols + 2 * pad), dtype=np.float32)
    padded[:, :, pad:pad + rows, pad:pad + cols] = x
    out = np.zeros((n, weight.shape[0], rows, cols), dtype=np.float32)
    for i in range(kernel):
        for j in range(kernel):
            patch = padded[:, :, i:i + rows, j:j + cols]                     # (n, c, r, q)
            out += np.einsum("ncrq,oc->norq", patch, weight[:, :, i, j], optimize=True)
    return out + bias[None, :, None, None]


def _max_pool(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2 (an odd last row or column is dropped, as ONNX MaxPool does)."""
    n, c, rows, cols = x.shape
    r, q = rows // POOL, cols // POOL
    x = x[:, :, :r * POOL, :q * POOL].reshape(n, c, r, POOL, q, POOL)
    return x.max(axis=(3, 5))


def onnx_nodes(front: DigitalFrontEnd, source: str) -> tuple[list[Any], list[Any], str]:
    """ONNX nodes and initializers of the front end, reading ``source``; returns (nodes, inits, output name)."""
    from onnx import helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    h = source
    if front.input_affine is not None:
        inits += [numpy_helper.from_array(front.input_affine[0].astype(np.float32), "digital.input_scale"),
                  numpy_helper.from_array(front.input_affine[1].astype(np.float32), "digital.input_shift")]
        nodes += [helper.make_node("Mul", [h, "digital.input_scale"], ["digital.normalised"], name="digital.scale"),
                  helper.make_node("Add", ["digital.normalised", "digital.input_shift"], ["digital.input"],
                                   name="digital.shift")]
        h = "digital.input"
    if front.input_shape is not None:
        inits.append(numpy_helper.from_array(np.array([-1, *front.input_shape], dtype=np.int64),
                                             "digital.image_shape"))
        nodes.append(helper.make_node("Reshape", [h, "digital.image_shape"], ["digital.image"],
                                      name="digital.image"))
        h = "digital.image"
    flat = front.input_shape is None
    for layer in front.layers:
        w, b = f"{layer.name}.weight", f"{layer.name}.bias"
        inits += [numpy_helper.from_array(layer.weight.astype(np.float32), w),
                  numpy_helper.from_array(layer.bias.astype(np.float32), b)]
        if layer.kind == "conv":
            nodes += [helper.make_node("Conv", [h, w, b], [f"{layer.name}.conv"],
                                       kernel_shape=[layer.kernel, layer.kernel],
                                       pads=[same_padding(layer.kernel)] * 4, name=f"{layer.name}.conv"),
                      helper.make_node("Relu", [f"{layer.name}.conv"], [f"{layer.name}.relu"],
                                       name=f"{layer.name}.relu"),
                      helper.make_node("MaxPool", [f"{layer.name}.relu"], [f"{layer.name}.out"],
                                       kernel_shape=[POOL, POOL], strides=[POOL, POOL], name=f"{layer.name}.pool")]
        else:
            if not flat:
                nodes.append(helper.make_node("Flatten", [h], [f"{layer.name}.flat"], axis=1,
                                              name=f"{layer.name}.flatten"))
                h, flat = f"{layer.name}.flat", True
            nodes += [helper.make_node("Gemm", [h, w, b], [f"{layer.name}.gemm"], transB=1,
                                       name=f"{layer.name}.gemm"),
                      helper.make_node("Relu", [f"{layer.name}.gemm"], [f"{layer.name}.out"],
                                       name=f"{layer.name}.relu")]
        h = f"{layer.name}.out"
    if not flat:
        nodes.append(helper.make_node("Flatten", [h], ["digital.features"], axis=1, name="digital.flatten"))
        h = "digital.features"
    return nodes, inits, h


def front_end_from(where: str, meta: Any, inits: dict[str, np.ndarray]) -> DigitalFrontEnd | None:
    """The front end a model file describes (None when it has none); one-line errors for a damaged one."""
    if meta is None:
        return None

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{where}: metadata pnndeploy.digital {what}; the file was edited or corrupted, "
                              "re-export it with `pnndeploy train`")

    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list) or not meta["layers"]:
        raise bad("must hold a non-empty list of layers")
    shape = meta.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 3
                              or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
        raise bad(f"has input_shape {brief(shape)}, expected [channels, rows, cols]")
    layers: list[DigitalLayer] = []
    channels = shape[0] if shape else None
    for info in meta["layers"]:
        if not isinstance(info, dict) or info.get("kind") not in KINDS or not isinstance(info.get("name"), str):
            raise bad(f"has a layer {brief(info)}, expected {{'name': ..., 'kind': 'conv' or 'dense', ...}}")
        arrays = {}
        for part in ("weight", "bias"):
            key = f"{info['name']}.{part}"
            if key not in inits or inits[key].dtype.kind != "f" or not np.all(np.isfinite(inits[key])):
                raise bad(f"names {brief(key)}, which is missing or not finite numbers")
            arrays[part] = inits[key].astype(np.float32)
        w = arrays["weight"]
        if info["kind"] == "conv":
            ok = shape is not None and _conv_fits(info, w, channels, bad) \
                and not any(lay.kind == "dense" for lay in layers)      # convolutions come first
            channels = int(w.shape[0]) if w.ndim == 4 else channels
        else:
            ok = w.ndim == 2
        layer = DigitalLayer(info["name"], info["kind"], w, arrays["bias"])
        if not ok or arrays["bias"].shape != (w.shape[0],) or not _same_description(info, layer.describe()):
            raise bad(f"layer {brief(info['name'])} has weights {w.shape} that contradict its description {brief(info)}")
        layers.append(layer)
    front = DigitalFrontEnd(layers, tuple(shape) if shape else None)
    _check_chain(front, bad)
    if "input_affine" in meta:
        front.input_affine = _input_affine(meta["input_affine"], front.input_size(), inits, bad)
    return front


def _input_affine(info: Any, features: int, inits: dict[str, np.ndarray],
                  bad: Any) -> tuple[np.ndarray, np.ndarray]:
    """The input normalisation's (scale, shift): finite floats, one per input feature, as the metadata says."""
    if not isinstance(info, dict) or set(info) != {"features"} or info["features"] != features \
            or isinstance(info["features"], bool):
        raise bad(f"has input_affine {brief(info)}, expected {{'features': {features}}}")
    arrays = []
    for key in ("digital.input_scale", "digital.input_shift"):
        value = inits.get(key)
        if value is None or value.dtype.kind != "f" or value.shape != (features,) or not np.all(np.isfinite(value)):
            raise bad(f"input_affine needs initializer {key} of {features} finite numbers")
        arrays.append(value.astype(np.float32))
    return arrays[0], arrays[1]


def _conv_fits(info: dict[str, Any], w: np.ndarray, channels: int | None, bad: Any) -> bool:
    """A conv layer's kernel is an odd size 1..MAX_KERNEL (refused with its own line, so a hostile size never
    reaches the numpy forward pass), and its weights are square kernels of that size on the channels it receives,
    with the padding and pool this version writes."""
    kernel = info.get("kernel")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or not 1 <= kernel <= MAX_KERNEL or kernel % 2 == 0:
        raise bad(f"layer {brief(info.get('name'))} has kernel {brief(kernel)}, expected an odd size from 1 to "
                  f"{MAX_KERNEL}")
    return w.ndim == 4 and w.shape[2:] == (kernel, kernel) and w.shape[1] == channels \
        and info.get("padding") == same_padding(kernel) and info.get("pool") == POOL


def _same_description(info: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The metadata says exactly what the weights are (integers as integers: ``true`` is not 1)."""
    return set(info) == set(expected) and all(
        type(info[k]) is type(v) and info[k] == v for k, v in expected.items())


def _check_chain(front: DigitalFrontEnd, bad: Any) -> None:
    """Each dense layer must take what the layer before it gives."""
    size = None
    if front.input_shape is not None:
        c, rows, cols = front.conv_output_shape()
        if rows < 1 or cols < 1:
            raise bad(f"pools {front.input_shape} down to nothing")
        size = c * rows * cols
    for layer in front.layers:
        if layer.kind != "dense":
            continue
        if size is not None and layer.weight.shape[1] != size:
            raise bad(f"layer {layer.name!r} takes {layer.weight.shape[1]} inputs but receives {size}")
        size = int(layer.weight.shape[0])
