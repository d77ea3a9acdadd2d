"""Open Inference Protocol (KServe V2) over REST.

A request carries either one 2-D input of shape [rows, features] or one input per feature, named
after it, of shape [rows] or [rows, 1]. The answer has a `label` output and, for models with
predict_proba, a `probabilities` output of shape [rows, classes] in the order of the model's
`classes`.

Every tensor is checked against its declared datatype and shape, and every shape against the row
limit, before a row is built: a shape can describe far more rows than the body holds (`[N, 0]`
with no data), and values must be what the datatype says (a BOOL holds booleans, a UINT8 fits in
eight bits), never silently converted or wrapped.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from berth_api.bundles.bundle import BundleMetadata, FeatureType, Label
from berth_api.errors import ErrorStyle, FieldError, InvalidInput, MalformedRequest, invalid_body
from berth_api.protocols.door import DoorRequest, Limits, Parsed
from berth_api.serving.answer import Answer

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
_FEATURE_DATATYPES: dict[FeatureType, Datatype] = {
    "number": "FP64",
    "integer": "INT64",
    "string": "BYTES",
    "boolean": "BOOL",
}
MATRIX_INPUT = "input-0"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"


class TensorInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=200)
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: Datatype
    data: list[Any] = Field(default_factory=list)
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, 4],
                            "datatype": "FP64",
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ]
                },
            ]
        },
    )

    id: str | None = Field(default=None, max_length=200)
    parameters: dict[str, Any] | None = None
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class TensorOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]


class InferenceResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any] | None = None
    outputs: list[TensorOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


# Triton's binary tensor extension, which its clients use by default: a JSON header of the length
# given in this HTTP header, then each input's raw little-endian bytes in input order.
BINARY_HEADER = "inference-header-content-length"
_BYTE_COUNT = re.compile(r"^[0-9]{1,15}$")
_NUMPY_TYPES: dict[str, str] = {
    "BOOL": "u1",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
# The values each integer datatype can hold, for JSON data (binary data holds nothing else).
_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    name: (int(np.iinfo(code).min), int(np.iinfo(code).max))
    for name, code in _NUMPY_TYPES.items()
    if name.startswith(("INT", "UINT"))
}


class V2Door:
    style = ErrorStyle.V2

    def parse(self, request: DoorRequest, metadata: BundleMetadata, limits: Limits) -> Parsed:
        inference = parse_request(request.body, request.inference_header_length)
        check_requested_outputs(inference, metadata)
        instances = instances_from_request(metadata, inference, limits)
        return Parsed(instances, (inference, metadata))

    def render(self, answer: Answer, parsed: Parsed) -> bytes:
        inference, metadata = parsed.context
        return response_from_prediction(answer, metadata, inference).model_dump_json().encode()


def parse_request(body: bytes, json_length: str | None) -> InferenceRequest:
    """An inference request from a plain JSON body or one using the binary tensor extension."""
    header, blobs = body, b""
    if json_length is not None:
        if not _BYTE_COUNT.match(json_length) or int(json_length) > len(body):
            raise MalformedRequest(f"{BINARY_HEADER} must be a byte count within the body")
        header, blobs = body[: int(json_length)], body[int(json_length) :]
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_input=False, include_url=False)) from exc
    offset = 0
    for i, tensor in enumerate(request.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or offset + size > len(blobs)
        ):
            raise MalformedRequest(f"inputs[{i}]: binary_data_size does not fit the body")
        tensor.data = _decode_binary(tensor, blobs[offset : offset + size], f"inputs[{i}]")
        offset += size
    if offset != len(blobs):
        raise MalformedRequest("the body holds binary data that no input claims")
    return request


def _decode_binary(tensor: TensorInput, blob: bytes, where: str) -> list[Any]:
    if tensor.datatype == "BYTES":
        return _decode_bytes(blob, where)
    dtype = np.dtype(_NUMPY_TYPES[tensor.datatype])
    if len(blob) % dtype.itemsize:
        raise InvalidInput(
            f"{where}: {len(blob)} bytes is not a whole number of {tensor.datatype}",
            [FieldError(f"{where}.data", "binary data of the wrong length")],
        )
    array = np.frombuffer(blob, dtype=dtype)
    if tensor.datatype == "BOOL":
        if array.size and int(array.max()) > 1:
            raise InvalidInput(
                f"{where}: a BOOL element is one byte, 0 or 1",
                [FieldError(f"{where}.data", "BOOL bytes must be 0 or 1")],
            )
        return [bool(v) for v in array.tolist()]
    # tolist() gives Python ints and floats: every UINT64 is the number it is, never wrapped
    values: list[Any] = array.astype(np.float64).tolist() if dtype.kind == "f" else array.tolist()
    return values


def _decode_bytes(blob: bytes, where: str) -> list[Any]:
    """Triton's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    values: list[Any] = []
    position = 0
    while position < len(blob):
        index = len(values)
        if position + 4 > len(blob):
            raise InvalidInput(
                f"{where}: element {index} of the BYTES data is cut off in its length prefix",
                [FieldError(f"{where}.data", "truncated BYTES element")],
            )
        (length,) = struct.unpack_from("<I", blob, position)
        position += 4
        if position + length > len(blob):
            raise InvalidInput(
                f"{where}: element {index} of the BYTES data claims {length} bytes, "
                f"{len(blob) - position} remain",
                [FieldError(f"{where}.data", "BYTES element longer than the data")],
            )
        try:
            values.append(blob[position : position + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{where}: element {index} of the BYTES data is not UTF-8 text",
                [FieldError(f"{where}.data", "not UTF-8")],
            ) from None
        position += length
    return values


def model_metadata(metadata: BundleMetadata, versions: list[str]) -> ModelMetadata:
    """One valid way to call the model, so a client that builds one tensor per listed input
    succeeds: the matrix `input-0` when every feature is a float, one input per feature
    otherwise. The other form is still accepted."""
    n = len(metadata.features)
    if all(f.type == "number" for f in metadata.features):
        inputs = [TensorMetadata(name=MATRIX_INPUT, datatype="FP64", shape=[-1, n])]
    else:
        inputs = [
            TensorMetadata(name=f.name, datatype=_FEATURE_DATATYPES[f.type], shape=[-1])
            for f in metadata.features
        ]
    return ModelMetadata(
        name=metadata.name,
        versions=versions,
        platform=f"sklearn-{metadata.sklearn_version}",
        inputs=inputs,
        outputs=output_metadata(metadata),
    )


def output_metadata(metadata: BundleMetadata) -> list[TensorMetadata]:
    outputs = [
        TensorMetadata(name=LABEL_OUTPUT, datatype=_label_datatype(metadata.classes), shape=[-1])
    ]
    if metadata.classes is not None:
        outputs.append(
            TensorMetadata(
                name=PROBABILITIES_OUTPUT, datatype="FP64", shape=[-1, len(metadata.classes)]
            )
        )
    return outputs


def check_requested_outputs(request: InferenceRequest, metadata: BundleMetadata) -> None:
    if not request.outputs:
        return
    known = {o.name for o in output_metadata(metadata)}
    missing = [o.name for o in request.outputs if o.name not in known]
    if missing:
        raise InvalidInput(
            f"unknown outputs requested: {', '.join(repr(m[:64]) for m in missing)}; "
            f"this model has {', '.join(sorted(known))}",
            [FieldError("outputs", "unknown output name")],
        )


def instances_from_request(
    metadata: BundleMetadata, request: InferenceRequest, limits: Limits
) -> list[Any]:
    """Rows for PredictionService: lists for one 2-D input, objects for per-feature inputs."""
    names = set(metadata.feature_names)
    if len(request.inputs) == 1 and request.inputs[0].name not in names:
        tensor = request.inputs[0]
        values = _flat(tensor, "inputs[0]", limits)
        if len(tensor.shape) == 1:
            return [values]  # one row, given as a vector of feature values
        rows, width = tensor.shape
        return [values[i * width : (i + 1) * width] for i in range(rows)]
    unknown = sorted(t.name for t in request.inputs if t.name not in names)
    if unknown:
        shown = ", ".join(repr(n[:64]) for n in unknown[:10])
        raise InvalidInput(
            "inputs must be one 2-D tensor or one tensor per feature; "
            f"unknown feature names: {shown}",
            [FieldError("inputs", f"unknown feature names: {shown}")],
        )
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise InvalidInput(
                f"{where}: a per-feature input has shape [rows] or [rows, 1]",
                [FieldError(f"{where}.shape", "must be [rows] or [rows, 1]")],
            )
        columns[tensor.name] = _flat(tensor, where, limits)
    lengths = {len(c) for c in columns.values()}
    if len(lengths) != 1:
        raise InvalidInput(
            "every per-feature input must hold the same number of rows",
            [FieldError("inputs", "row counts differ between inputs")],
        )
    (count,) = lengths
    return [{name: column[r] for name, column in columns.items()} for r in range(count)]


def response_from_prediction(
    prediction: Answer,
    metadata: BundleMetadata,
    request: InferenceRequest,
) -> InferenceResponse:
    labels = [p.label for p in prediction.predictions]
    outputs = [
        TensorOutput(
            name=LABEL_OUTPUT,
            shape=[len(labels)],
            datatype=_label_datatype(metadata.classes, labels),
            data=labels,
        )
    ]
    if metadata.classes is not None and all(p.probabilities for p in prediction.predictions):
        keys = [str(c) for c in metadata.classes]
        flat = [p.probabilities[k] for p in prediction.predictions for k in keys]  # type: ignore[index]
        outputs.append(
            TensorOutput(
                name=PROBABILITIES_OUTPUT,
                shape=[len(labels), len(keys)],
                datatype="FP64",
                data=flat,
            )
        )
    if request.outputs:  # checked against the model before it ran: see check_requested_outputs
        wanted = {o.name for o in request.outputs}
        outputs = [o for o in outputs if o.name in wanted]
    return InferenceResponse(
        model_name=prediction.model.name,
        model_version=prediction.model.version,
        id=request.id or prediction.request_id,
        parameters={
            "request_id": prediction.request_id,
            "cached": [p.cached for p in prediction.predictions],
        },
        outputs=outputs,
    )


def _flat(tensor: TensorInput, where: str, limits: Limits) -> list[Any]:
    """The tensor's values in row-major order, once its shape, size and datatype are checked."""
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(
            f"{where}: shape must not be negative", [FieldError(f"{where}.shape", "negative")]
        )
    # Before anything is built: [N, 0] describes N empty rows with no data at all. (Any other
    # shape needs its values in the body, whose size is limited already.)
    if len(tensor.shape) == 2 and tensor.shape[0] > limits.max_rows:
        raise InvalidInput(
            f"{where}: shape {tensor.shape} describes more than {limits.max_rows} rows, "
            "the most allowed per request",
            [FieldError(f"{where}.shape", f"at most {limits.max_rows} rows")],
        )
    values = _flatten(tensor.data)
    expected = math.prod(tensor.shape)
    if len(values) != expected:
        raise InvalidInput(
            f"{where}: shape {tensor.shape} needs {expected} values, data holds {len(values)}",
            [FieldError(f"{where}.data", f"expected {expected} values, got {len(values)}")],
        )
    _check_datatype(values, tensor.datatype, where)
    return values


def _check_datatype(values: list[Any], datatype: str, where: str) -> None:
    """Each JSON value must be one the datatype holds; nothing is converted to fit."""
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            _wrong_type(where, datatype, "true or false")
        return
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            _wrong_type(where, datatype, "strings")
        return
    if any(isinstance(v, str) for v in values):
        _wrong_type(where, datatype, "numbers, not strings")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        _wrong_type(where, datatype, "numbers")
    bounds = _INTEGER_RANGES.get(datatype)
    if bounds is not None:
        low, high = bounds
        if not all(isinstance(v, int) and low <= v <= high for v in values):
            _wrong_type(where, datatype, f"integers from {low} to {high}")


def _wrong_type(where: str, datatype: str, holds: str) -> None:
    raise InvalidInput(
        f"{where}: datatype {datatype} holds {holds}",
        [FieldError(f"{where}.data", f"not {datatype}")],
    )


def _flatten(data: list[Any]) -> list[Any]:
    """V2 allows row-major data flat or nested; nesting is only a convenience."""
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise InvalidInput(
                        "tensor data is nested too deeply", [FieldError("inputs", "too deep")]
                    )
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _label_datatype(classes: list[Label] | None, labels: list[Any] | None = None) -> Datatype:
    sample = classes if classes is not None else labels
    if not sample:
        return "FP64"
    if all(isinstance(v, bool) for v in sample):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in sample):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in sample):
        return "FP64"
    return "BYTES"
