"""Export a trained PNN as one self-contained ONNX file, and read it back safely.

The graph computes the model's nominal (ideal-chip) logits from raw inputs:
``clip((raw - offset) * scale, 0, 1)``, then per layer the platform's own
on-chip operator (:meth:`~pnndeploy.platforms.base.Platform.onnx_layer`) times
a digital gain plus a bias, with ReLU between layers.  For a linear platform
the operator is ``Gemm(h, W, transB=1)`` and the logical on-chip weights ``W``
are initializers, so any ONNX runtime can run the model and any platform can
map it; a non-linear one (an intensity readout, a propagation by DFT) writes
its own standard operators.  The controls training chose (ring detunings)
travel in the metadata (``pnndeploy.controls``, exact float32 values), so
mapping a chip starts from them; they are not initializers because an unused
initializer makes onnxruntime warn.

The graph is written with ``onnx.helper`` directly: it is small, and this keeps
the export free of the torch exporter's extra dependencies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnndeploy import __version__
from pnndeploy.atomic import write_bytes_atomic
from pnndeploy.data.scaling import InputScaling
from pnndeploy.errors import ModelFileError
from pnndeploy.formats.digital import DigitalFrontEnd, front_end_from, onnx_nodes
from pnndeploy.formats.input_moments import parse_input_moments
from pnndeploy.untrusted import MAX_JSON_DEPTH, FileProblem, brief, control_text, loads_json, read_bounded

#: The newest format this version reads; a file is written as 1 unless it needs 2 (a front end's input
#: normalisation, which an older reader would skip), so files without one stay readable by older versions.
FORMAT_VERSION = 2
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PREFIX = "pnndeploy."
#: Largest model file read (protobuf's own limit for one message).
MAX_MODEL_BYTES = 2**31 - 1
REQUIRED_KEYS = ("format_version", "platform", "platform_params", "method", "rho", "dataset",
                 "input_scaling", "onchip", "controls", "layers", "metrics", "version", "seed")


@dataclass
class ModelLayer:
    """One on-chip layer of an exported model."""

    name: str
    weight: np.ndarray | None   # (out, in) float32 logical weights (linear platforms; None otherwise)
    controls: np.ndarray        # float32, what training chose (control units), the platform's control shape
    gain: np.ndarray            # (out,) float32
    bias: np.ndarray            # (out,) float32
    #: (out, in) of the layer; taken from ``weight`` when not given.
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.shape is None:
            if self.weight is None:
                raise ValueError(f"layer {self.name}: give its shape when it has no weight matrix")
            self.shape = (int(self.weight.shape[0]), int(self.weight.shape[1]))
        self.shape = (int(self.shape[0]), int(self.shape[1]))

    @property
    def weight_shape(self) -> tuple[int, int]:
        """(out, in): the layer's outputs and inputs, whatever the platform (the backend interface's name)."""
        return self.shape


@dataclass
class ExportedModel:
    """What pnndeploy needs from a model file: layers, scaling and metadata."""

    path: Path | None
    layers: list[ModelLayer]
    scaling: InputScaling
    platform: str
    platform_params: dict[str, Any]
    method: str
    dataset: str
    metrics: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    #: Electronic layers before the on-chip ones (None: every layer is on chip).
    digital: DigitalFrontEnd | None = None
    #: E[x x^T] of each on-chip layer's inputs on the training set, by layer name ({}: not recorded), for mapping
    #: around faulty devices (:mod:`pnndeploy.formats.input_moments`).
    input_moments: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        """Inputs the model takes (the front end's, when it has one)."""
        return self.digital.input_size() if self.digital else self.layers[0].shape[1]

    def features(self, X_scaled: np.ndarray) -> np.ndarray:
        """What the first on-chip layer receives: the scaled inputs, through the digital front end if any."""
        return self.digital.forward(X_scaled) if self.digital else X_scaled

    @property
    def n_classes(self) -> int:
        return self.layers[-1].shape[0]

    def logits(self, X_scaled: np.ndarray) -> np.ndarray:
        """Nominal logits in numpy (float64), for checks without a runtime (the platform's nominal outputs)."""
        from pnndeploy.platforms import platform_for

        platform = platform_for(self.platform, self.platform_params)
        h = np.asarray(self.features(X_scaled), dtype=np.float64)
        for k, layer in enumerate(self.layers):
            h = platform.nominal_outputs(layer.weight, layer.controls, layer.shape, h, self.platform_params) \
                * layer.gain + layer.bias
            if k < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h


def _floats(a: np.ndarray) -> list:
    """float32 array -> nested lists of Python floats that convert back to float32 exactly."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()


def build_onnx(layers: list[ModelLayer], scaling: InputScaling, metadata: dict[str, Any],
               digital: DigitalFrontEnd | None = None):
    """The ONNX ModelProto for these layers, front end, scaling and (already JSON-able) metadata (whose
    ``platform`` and ``platform_params`` say how each on-chip layer is written)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pnndeploy.platforms import platform_for

    params = metadata["platform_params"]
    params = json.loads(params) if isinstance(params, str) else params
    platform = platform_for(metadata["platform"], params)
    n_in = digital.input_size() if digital else layers[0].shape[1]
    n_out = layers[-1].shape[0]
    init = [
        numpy_helper.from_array(np.asarray(scaling.offset, dtype=np.float32), "input_offset"),
        numpy_helper.from_array(np.asarray(scaling.scale, dtype=np.float32), "input_scale"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "power_min"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "power_max"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "input_offset"], ["shifted"], name="scale_sub"),
        helper.make_node("Mul", ["shifted", "input_scale"], ["scaled"], name="scale_mul"),
        helper.make_node("Clip", ["scaled", "power_min", "power_max"], ["optical_power"],
                         name="optical_power"),
    ]
    h = "optical_power"
    if digital is not None:
        front_nodes, front_inits, h = onnx_nodes(digital, h)
        nodes += front_nodes
        init += front_inits
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        onchip_nodes, onchip_inits = platform.onnx_layer(layer.name, layer.weight, layer.controls, layer.shape, h,
                                                         f"{layer.name}.onchip", params)
        init += [*onchip_inits, numpy_helper.from_array(layer.gain.astype(np.float32), f"{layer.name}.gain"),
                 numpy_helper.from_array(layer.bias.astype(np.float32), f"{layer.name}.bias")]
        nodes += [
            *onchip_nodes,
            helper.make_node("Mul", [f"{layer.name}.onchip", f"{layer.name}.gain"],
                             [f"{layer.name}.gained"], name=f"{layer.name}.gain"),
            helper.make_node("Add", [f"{layer.name}.gained", f"{layer.name}.bias"],
                             [OUTPUT_NAME if last else f"{layer.name}.pre"], name=f"{layer.name}.bias"),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"{layer.name}.pre"], [f"{layer.name}.out"],
                                          name=f"{layer.name}.relu"))
            h = f"{layer.name}.out"
    graph = helper.make_graph(
        nodes, "pnndeploy_pnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pnndeploy", producer_version=__version__)
    model.ir_version = IR_VERSION
    model.doc_string = ("Physical neural network exported by pnndeploy: nominal logits from raw inputs; "
                        "on-chip layers are the initializers listed in pnndeploy.onchip (a linear platform's "
                        "*.weight matrices).")
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    return model


def save_model(path: str | Path, layers: list[ModelLayer], scaling: InputScaling, *,
               platform: str, platform_params: dict[str, Any], method: str, rho: float,
               dataset: str, metrics: dict[str, Any], seed: int,
               extra: dict[str, Any] | None = None, digital: DigitalFrontEnd | None = None) -> str:
    """Write the model atomically; returns the file's sha256."""
    metadata: dict[str, Any] = {
        "format_version": 2 if digital is not None and digital.input_affine is not None else 1,
        "platform": platform,
        "platform_params": platform_params,
        "method": method,
        "rho": rho,
        "dataset": dataset,
        "input_scaling": scaling.to_json(),
        "onchip": [onchip_key(layer.name, layer.weight is not None) for layer in layers],
        "controls": {onchip_key(layer.name, layer.weight is not None): {"shape": list(layer.controls.shape),
                                                                        "values": _floats(layer.controls)}
                     for layer in layers},
        "layers": [{"name": layer.name, "in": layer.shape[1], "out": layer.shape[0],
                    "activation": "relu" if k < len(layers) - 1 else "none"}
                   for k, layer in enumerate(layers)],
        "metrics": metrics,
        "version": __version__,
        "seed": seed,
        **(extra or {}),
    }
    if digital is not None:
        metadata["digital"] = digital.to_json()
        for d in digital.layers:
            if not (np.all(np.isfinite(d.weight)) and np.all(np.isfinite(d.bias))):
                raise ModelFileError(f"model {path}: digital layer {d.name} holds non-finite values; "
                                     "nothing was written (lower --lr and train again)")
    for layer in layers:
        for part in (layer.weight, layer.controls, layer.gain, layer.bias):
            if part is not None and not np.all(np.isfinite(part)):
                raise ModelFileError(f"model {path}: layer {layer.name} holds non-finite values; "
                                     "nothing was written (lower --lr and train again)")
    metadata = {k: (v if isinstance(v, str) else json.dumps(v, allow_nan=False)) for k, v in metadata.items()}
    data = build_onnx(layers, scaling, metadata, digital).SerializeToString()
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise ModelFileError(f"cannot write model {path}: {exc.strerror or exc}; pass --out with a "
                             "writable file path") from None
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """How one kind of ONNX file is read (its size limit, whether a graph without nodes may still be one) and
    what a refusal tells its user to do: a pnndeploy model and a model a lab brings (`train --init-from`) are read
    by the same bounded, bytes-only code and differ only in these."""

    limit: int
    missing: str            # the fix when the file does not exist ({path}: the path given)
    fix: str                # the fix when it is not a usable file
    nodes_required: bool    # False: a graph without nodes is accepted when the file carries metadata


PNNDEPLOY_MODEL = ModelSource(MAX_MODEL_BYTES, "train one with `pnndeploy train --out {path}` or pass --model",
                              "pass a .onnx written by `pnndeploy train`", nodes_required=False)


def read_model_bytes(path: Path, where: str, source: ModelSource = PNNDEPLOY_MODEL) -> bytes:
    """The file's bytes, bounded in size; a missing, special, oversized, unreadable or empty file is one line."""
    try:
        data = read_bounded(path, source.limit)
    except FileNotFoundError:
        raise ModelFileError(f"{where}: file not found; {source.missing.format(path=path)}") from None
    except FileProblem as exc:
        raise ModelFileError(f"{where}: {exc.text}; {source.fix}") from None
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read it ({exc.strerror or exc}); check the file's permissions or "
                             f"{source.fix}") from None
    if not data:
        raise ModelFileError(f"{where}: the file is empty (0 bytes), e.g. an interrupted copy; {source.fix}")
    return data


def decode_model(data: bytes, where: str, source: ModelSource = PNNDEPLOY_MODEL) -> Any:
    """The ONNX ModelProto of ``data``, from bytes only; refused if it is no ONNX file, has no graph, or any tensor
    points at external data (never followed)."""
    import onnx

    try:
        # bytes only: onnx.load_from_string never opens the external-data files a model may name
        proto = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelFileError(f"{where}: not an ONNX file ({type(exc).__name__}), e.g. truncated; "
                             f"{source.fix}") from None
    if not proto.graph.node and (source.nodes_required or not proto.metadata_props):
        raise ModelFileError(f"{where}: not an ONNX model (the graph has no nodes); {source.fix}")
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ModelFileError(f"{where}: tensor {brief(tensor.name)} refers to external data; pnndeploy "
                                 "never reads files a model points at: re-export it as one file")
    return proto


def _model_metadata(proto: Any, where: str) -> dict[str, Any]:
    """The pnndeploy.* metadata, parsed and type-checked, of a format version this pnndeploy reads."""
    meta: dict[str, str] = {}
    for prop in proto.metadata_props:
        # protobuf hands back bytes for a string field that is not valid UTF-8
        if not isinstance(prop.key, str) or not isinstance(prop.value, str):
            raise ModelFileError(f"{where}: its metadata holds text that is not valid UTF-8; the file is "
                                 "corrupted, re-export it with `pnndeploy train`")
        if prop.key.startswith(PREFIX):
            meta[prop.key[len(PREFIX):]] = prop.value
    if not meta:
        raise ModelFileError(f"{where}: valid ONNX but not written by pnndeploy (no pnndeploy.* metadata); "
                             "train it with `pnndeploy train`")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{where}: metadata lacks {', '.join(PREFIX + k for k in missing)}; "
                             "re-export it with `pnndeploy train`")
    parsed = _parse_metadata(where, meta)
    for key in ("platform", "method", "dataset", "version"):
        parsed[key] = meta[key]
    fmt = parsed["format_version"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ModelFileError(f"{where}: metadata {PREFIX}format_version is {fmt!r}, not a version number "
                             f"(1..{FORMAT_VERSION}); the file was edited or corrupted, re-export it")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(f"{where}: format_version {fmt} is newer than this pnndeploy reads "
                             f"({FORMAT_VERSION}); upgrade pnndeploy")
    _check_metadata_types(where, parsed)
    return parsed


def _initializers(proto: Any, where: str) -> dict[str, np.ndarray]:
    """The graph's initializers by name; a tensor that cannot be decoded is a one-line error."""
    from onnx import numpy_helper

    inits = {}
    for tensor in proto.graph.initializer:
        try:
            inits[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001 - a damaged tensor raises ValueError, TypeError, ...
            raise ModelFileError(f"{where}: initializer {tensor.name!r} cannot be decoded "
                                 f"({type(exc).__name__}); the file is corrupted, re-export it") from None
    return inits


def load_model(path: str | Path) -> ExportedModel:
    """Read a pnndeploy ONNX file; every problem is a one-line :class:`ModelFileError`."""
    path = Path(path)
    where = f"model {path}"
    data = read_model_bytes(path, where)
    proto = decode_model(data, where)
    parsed = _model_metadata(proto, where)
    inits = _initializers(proto, where)
    layers = _layers_from(where, parsed, inits)
    digital = front_end_from(where, parsed.get("digital"), inits)
    if digital is not None and digital.output_size() != layers[0].shape[1]:
        raise ModelFileError(f"{where}: the digital front end gives {digital.output_size()} features but layer "
                             f"{layers[0].name!r} takes {layers[0].shape[1]}; the file was edited or "
                             "corrupted, re-export it")
    try:
        scaling = InputScaling.from_json(parsed["input_scaling"])
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    n_in = digital.input_size() if digital else layers[0].shape[1]
    if scaling.n_features is not None and scaling.n_features != n_in:
        raise ModelFileError(f"{where}: input_scaling has {scaling.n_features} features but the model "
                             f"takes {n_in} inputs; the file was edited or corrupted, re-export it")
    metrics = parsed["metrics"]
    moments = parse_input_moments(where, parsed.get("input_moments"), layers)
    return ExportedModel(path=path, layers=layers, scaling=scaling, platform=parsed["platform"],
                         platform_params=parsed["platform_params"], method=parsed["method"],
                         dataset=parsed["dataset"], metrics=metrics, metadata=parsed,
                         sha256=hashlib.sha256(data).hexdigest(), digital=digital, input_moments=moments)


def _parse_metadata(where: str, meta: dict[str, str]) -> dict[str, Any]:
    """Each metadata value parsed as bounded JSON (NaN and Infinity refused: pnndeploy never writes them).

    A value nested near Python's recursion limit would parse and then crash whatever walks it
    (``inspect --json``), so JSON deeper than MAX_JSON_DEPTH is refused, also where a value that
    is not JSON would be kept as text; text with control characters (which `inspect` would print
    into the terminal) is refused too.
    """
    parsed: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            parsed[key] = loads_json(value, MAX_JSON_DEPTH)
        except ValueError as exc:
            deep = "levels deep" in str(exc)
            if deep or (key in REQUIRED_KEYS and key not in ("platform", "method", "dataset", "version")):
                what = str(exc) if deep else "is not valid JSON"
                raise ModelFileError(f"{where}: metadata {PREFIX}{brief(key, 60, quote=False)} {what}; "
                                     "re-export the model with `pnndeploy train`") from None
            parsed[key] = value
    bad = next((key for key, value in parsed.items() if control_text([key, value]) is not None), None)
    if bad is not None:
        raise ModelFileError(f"{where}: metadata {PREFIX}{brief(bad, 60, quote=False)} holds control characters "
                             "(terminal escape sequences?); pnndeploy never writes them and does not print them: "
                             "re-export the model with `pnndeploy train`")
    return parsed


def _all_tensors(proto: Any) -> Any:
    """Every tensor of the model: initializers and Constant-node values, in the graph and its subgraphs."""
    import onnx

    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
                elif attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)


def _check_metadata_types(where: str, meta: dict[str, Any]) -> None:
    """Refuse metadata that parses as JSON but holds the wrong kind of value."""
    def bad(key: str, expected: str) -> ModelFileError:
        value = repr(meta[key])
        shown = value if len(value) <= 60 else value[:60] + "..."
        return ModelFileError(f"{where}: metadata {PREFIX}{key} is {shown}, expected {expected}; the file "
                              "was edited or corrupted, re-export it with `pnndeploy train`")

    if not isinstance(meta["platform_params"], dict):
        raise bad("platform_params", "a JSON object")
    if not isinstance(meta["metrics"], dict):
        raise bad("metrics", "a JSON object")
    rho = meta["rho"]
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho >= 0 or rho == float("inf"):
        raise bad("rho", "a finite number >= 0")
    seed = meta["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise bad("seed", f"an integer from 0 to {2**32 - 1}")
    for key in ("platform", "method", "dataset"):
        if not meta[key].strip():
            raise bad(key, "a non-empty name")
    layers = meta["layers"]
    if not isinstance(layers, list) or not layers:
        raise bad("layers", "a non-empty list of layers")
    for info in layers:
        if not isinstance(info, dict) or not isinstance(info.get("name"), str) \
                or any(isinstance(info.get(k), bool) or not isinstance(info.get(k), int) or info.get(k) < 1
                       for k in ("in", "out")):
            raise bad("layers", 'entries like {"name": "layer0", "in": 64, "out": 32}')
    onchip = meta["onchip"]
    if not isinstance(onchip, list) or not all(isinstance(n, str) for n in onchip):
        raise bad("onchip", "a list of initializer names")
    if not isinstance(meta["controls"], dict):
        raise bad("controls", "a JSON object of control arrays")


def onchip_key(name: str, linear: bool) -> str:
    """The key of a layer in ``pnndeploy.onchip`` and ``pnndeploy.controls``: its weight initializer for a linear
    platform (DESIGN.md's list of on-chip weight initializers), ``NAME.controls`` for one whose layer is not a
    weight matrix (no such initializer: its initializers are the platform's, prefixed NAME.)."""
    return f"{name}.weight" if linear else f"{name}.controls"


def _numbers(where: str, inits: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Initializer ``key`` as float32, refused when missing or not numbers."""
    if key not in inits:
        raise ModelFileError(f"{where}: initializer {key!r} named by the metadata is missing; re-export the model")
    if inits[key].dtype.kind not in "fiu":
        raise ModelFileError(f"{where}: initializer {key!r} has dtype {inits[key].dtype}, expected "
                             "numbers; the file was edited or corrupted, re-export it")
    with np.errstate(over="ignore", invalid="ignore"):
        return inits[key].astype(np.float32)


def _configured_platform(where: str, meta: dict[str, Any]) -> Any:
    """The model's platform with the options its platform_params record (None for a platform this version lacks);
    a bad option is the file's error, in one line."""
    from pnndeploy.platforms import PLATFORMS, platform_for

    if meta.get("platform") not in PLATFORMS:
        return None
    try:
        return platform_for(meta["platform"], meta.get("platform_params"))
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}; re-export the model") from None


def _layers_from(where: str, meta: dict[str, Any], inits: dict[str, np.ndarray]) -> list[ModelLayer]:
    """Check the initializers against the metadata and assemble the layers."""
    onchip, controls, layer_meta = meta["onchip"], meta["controls"], meta["layers"]
    if not isinstance(onchip, list) or not isinstance(controls, dict) or not isinstance(layer_meta, list) \
            or len(onchip) != len(layer_meta) or not onchip:
        raise ModelFileError(f"{where}: metadata onchip/layers/controls disagree; re-export the model")
    platform = _configured_platform(where, meta)
    linear = platform is None or platform.linear
    layers = []
    previous_out = None
    for key, info in zip(onchip, layer_meta):
        name = str(info.get("name", "")) if isinstance(info, dict) else ""
        shape = (int(info.get("out", -1)), int(info.get("in", -1)))
        gain, bias = _numbers(where, inits, f"{name}.gain"), _numbers(where, inits, f"{name}.bias")
        w = _numbers(where, inits, f"{name}.weight") if linear else None
        if key != onchip_key(name, linear) or (w is not None and w.shape != shape) \
                or gain.shape != (shape[0],) or bias.shape != (shape[0],) \
                or (previous_out is not None and shape[1] != previous_out):
            raise ModelFileError(f"{where}: initializer shapes of layer {name!r} "
                                 f"{w.shape if w is not None else gain.shape} contradict the metadata "
                                 f"({shape[0]}x{shape[1]}); the file was edited or corrupted, re-export it")
        c = _layer_controls(where, meta, controls, key, shape)
        for part, values in (("controls", c), ("weight", w), ("gain", gain), ("bias", bias)):
            if values is not None and not np.all(np.isfinite(values)):
                raise ModelFileError(f"{where}: the {part} of layer {name!r} holds NaN or infinite values; "
                                     "the file was edited or corrupted, re-export it")
        layer = ModelLayer(name=name, weight=w, controls=c, gain=gain, bias=bias, shape=shape)
        if not linear:
            _check_operator(where, platform, layer, meta, inits)
        layers.append(layer)
        previous_out = shape[0]
    return layers


def _layer_controls(where: str, meta: dict[str, Any], controls: dict[str, Any], key: str,
                    shape: tuple[int, int]) -> np.ndarray:
    """The controls of the layer keyed ``key``, checked against the shape its platform gives them."""
    entry = controls.get(key)
    try:
        c = np.asarray(entry["values"], dtype=np.float32)
    except (TypeError, KeyError, ValueError, OverflowError, IndexError):
        raise ModelFileError(f"{where}: controls of {key!r} missing or malformed in "
                             f"{PREFIX}controls; re-export the model") from None
    expected = _control_shape(where, meta, shape)
    if expected is not None and c.shape != expected:
        need = "" if expected == shape else f" need {expected}"
        raise ModelFileError(f"{where}: controls of {key!r} have shape {c.shape} but the layer is "
                             f"{shape[0]}x{shape[1]}{need}; the file was edited or corrupted, re-export it")
    return c


def _check_operator(where: str, platform: Any, layer: ModelLayer, meta: dict[str, Any],
                    inits: dict[str, np.ndarray]) -> None:
    """A non-linear layer's initializers must be what its controls give (an edited initializer is refused, not
    silently run).  The graph's nodes are not compared, as a linear layer's Gemm is not: pnndeploy evaluates and
    maps a file from its metadata and initializers, and onnxruntime runs what the graph says."""
    from onnx import numpy_helper

    params = meta.get("platform_params") if isinstance(meta.get("platform_params"), dict) else {}
    try:
        _, expected = platform.onnx_layer(layer.name, None, layer.controls, layer.shape, "x", "y", params)
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    except (ValueError, TypeError, OverflowError, ArithmeticError, MemoryError) as exc:
        raise ModelFileError(f"{where}: layer {layer.name!r} cannot be rebuilt from its controls "
                             f"({type(exc).__name__}); the file was edited or corrupted, re-export it") from None
    for tensor in expected:
        want = numpy_helper.to_array(tensor)
        got = inits.get(tensor.name)
        if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            raise ModelFileError(f"{where}: initializer {tensor.name!r} of layer {layer.name!r} is not what its "
                                 "controls give; the file was edited or corrupted, re-export it")


def _control_shape(where: str, meta: dict[str, Any], weight_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The controls' shape the model's platform gives a layer (None for a platform this version lacks)."""
    platform = _configured_platform(where, meta)
    params = meta.get("platform_params") if isinstance(meta.get("platform_params"), dict) else {}
    if platform is None:
        return None
    try:
        return tuple(platform.control_shape(tuple(weight_shape), params))
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    except (ValueError, TypeError, OverflowError, ArithmeticError, MemoryError) as exc:
        raise ModelFileError(f"{where}: its platform_params or layer shapes give no controls shape "
                             f"({type(exc).__name__}); the file was edited or corrupted, re-export it") from None


def onnx_logits(path: str | Path, X_raw: np.ndarray) -> np.ndarray:
    """Run the model file in onnxruntime on raw inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(X_raw, dtype=np.float32)})[0]
