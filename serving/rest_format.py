"""TF Serving's REST predict format: JSON request -> input tensors, outputs -> JSON response.

What tensorflow_model_server's `POST /v1/models/<name>:predict` does with a request body,
stated in Python so that an export can be checked against it without the server:

- row form, `{"instances": [...]}`: one list item per example. With several named inputs
  each item is an object holding every input once; the batch of an input is its values
  stacked along a new axis 0. With one input, the items are its values.
- columnar form, `{"inputs": ...}`: an object of whole tensors, one per input, each already
  batched; or, with one input, that tensor itself.
- an optional `"signature_name"` (default "serving_default").
- values are converted to the signature's dtype: numbers for numeric and bool inputs,
  strings for string inputs, `{"b64": ...}` for binary strings; nested lists give the shape,
  which must fit the signature's.

The response mirrors the request's form: `{"predictions": ...}` for rows (a list of values
per example when the signature has one output, else a list of objects), `{"outputs": ...}`
for columns (the tensor itself with one output, else an object of tensors).
"""

import base64
import json
from typing import Dict, Mapping, Tuple, Union

import numpy as np
import tensorflow as tf

ROW, COLUMNAR = "instances", "inputs"


class RequestError(ValueError):
    """A request TF Serving would refuse (HTTP 400), with the reason."""


def _decode_strings(value, name):
    if isinstance(value, list):
        return [_decode_strings(v, name) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise RequestError(f"input {name!r}: an object value must be {{\"b64\": ...}}, "
                               f"got keys {sorted(value)}")
        return base64.b64decode(value["b64"])
    if not isinstance(value, str):
        raise RequestError(f"input {name!r} is a string tensor but holds {value!r}")
    return value.encode("utf-8")


def _check_numbers(value, name, dtype):
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, name, dtype)
        return
    if dtype == tf.bool:
        ok = isinstance(value, bool)
    elif dtype.is_integer:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise RequestError(f"input {name!r} is {dtype.name} but holds {value!r}")


def _to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON value -> an array of the spec's dtype whose shape fits the spec."""
    if spec.dtype == tf.string:
        array = np.array(_decode_strings(value, name), dtype=object)
    else:
        _check_numbers(value, name, spec.dtype)
        try:
            array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
        except (ValueError, OverflowError) as e:
            raise RequestError(f"input {name!r}: {e}") from e
    if array.dtype == object and array.ndim and any(isinstance(v, list) for v in array.flat):
        raise RequestError(f"input {name!r} is a ragged list; tensors must be rectangular")
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"input {name!r} has shape {list(array.shape)}, which does not fit "
                           f"the signature's {spec.shape}")
    return array


def _parse_body(request) -> Mapping:
    body = json.loads(request) if isinstance(request, (str, bytes)) else request
    if not isinstance(body, Mapping):
        raise RequestError(f"the request must be a JSON object, got {type(body).__name__}")
    return body


def request_to_tensors(
    request: Union[str, bytes, Mapping],
    input_specs: Mapping[str, tf.TensorSpec],
) -> Tuple[str, Dict[str, np.ndarray], str]:
    """Parses a predict request against a signature's inputs.

    Args:
      request: the JSON body (text, or already parsed).
      input_specs: {input key: tf.TensorSpec}, e.g. a loaded signature's
        `structured_input_signature[1]`.

    Returns:
      (signature_name, {input key: array}, form) with form ROW or COLUMNAR.

    Raises:
      RequestError: the body is not a request TF Serving would accept for these inputs.
    """
    body = _parse_body(request)
    forms = [f for f in (ROW, COLUMNAR) if f in body]
    if len(forms) != 1:
        raise RequestError(f"the request must hold exactly one of {ROW!r} and {COLUMNAR!r}, "
                           f"got keys {sorted(body)}")
    form = forms[0]
    signature_name = body.get("signature_name", "serving_default")
    names = sorted(input_specs)
    value = body[form]
    if form == ROW:
        if not isinstance(value, list) or not value:
            raise RequestError(f"{ROW!r} must be a non-empty list of examples")
        if len(names) == 1 and not all(isinstance(v, dict) and set(v) == set(names)
                                       for v in value):
            columns = {names[0]: value}
        else:
            columns = {name: [] for name in names}
            for i, instance in enumerate(value):
                if not isinstance(instance, dict) or set(instance) != set(names):
                    got = sorted(instance) if isinstance(instance, dict) else instance
                    raise RequestError(f"instances[{i}] must be an object with the inputs "
                                       f"{names}, got {got!r}")
                for name in names:
                    columns[name].append(instance[name])
    else:
        if isinstance(value, dict) and set(value) == set(names):
            columns = dict(value)
        elif len(names) == 1 and not isinstance(value, dict):
            columns = {names[0]: value}
        else:
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise RequestError(f"{COLUMNAR!r} must be an object with the inputs {names}, "
                               f"got {got}")
    tensors = {name: _to_array(columns[name], input_specs[name], name) for name in names}
    return signature_name, tensors, form


def _json_value(array: np.ndarray):
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def response_json(outputs: Mapping[str, object], form: str) -> dict:
    """The response TF Serving sends for `outputs` ({output key: tensor}) in `form`."""
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if form == ROW:
        if len(arrays) == 1:
            return {"predictions": _json_value(next(iter(arrays.values())))}
        batch = {len(a) for a in arrays.values()}
        if len(batch) != 1:
            raise RequestError("outputs of different batch sizes cannot be sent as rows; "
                               "use the columnar form")
        rows = [{k: _json_value(a[i]) for k, a in arrays.items()} for i in range(batch.pop())]
        return {"predictions": rows}
    if form == COLUMNAR:
        if len(arrays) == 1:
            return {"outputs": _json_value(next(iter(arrays.values())))}
        return {"outputs": {k: _json_value(a) for k, a in arrays.items()}}
    raise ValueError(f"form must be {ROW!r} or {COLUMNAR!r}, got {form!r}")


def predict(loaded_saved_model, request) -> dict:
    """Answers a predict request with a SavedModel loaded by tf.saved_model.load."""
    body = _parse_body(request)
    signatures = loaded_saved_model.signatures
    name = body.get("signature_name", "serving_default")
    if name not in signatures:
        raise RequestError(f"signature_name {name!r} is not one of {sorted(signatures)}")
    fn = signatures[name]
    _, tensors, form = request_to_tensors(body, fn.structured_input_signature[1])
    outputs = fn(**{k: tf.constant(v) for k, v in tensors.items()})
    return response_json({k: v.numpy() for k, v in outputs.items()}, form)
