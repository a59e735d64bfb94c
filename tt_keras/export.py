"""SavedModel export for serving, portable (standard TF ops only) or native (fast custom ops).

Stock TF Serving links its ops statically and cannot run a graph holding a custom op unless
it is rebuilt with it. So by default (`portable=True`) the serving function is traced inside
`tt_keras.lookup_backend_scope("reference")`: every TTEmbedding lookup is written with
standard TF ops (gathers and batched matmuls), and after saving, the export checks that no
op of ours (type name starting with "TTKeras>") is left in any function of the SavedModel.
`portable=False` keeps whatever backend the layers use ("auto": the custom op when its
library is loaded); such a SavedModel only loads in a process that has loaded the op
library (`import tt_keras` does) or in a TF Serving built with it.

    from tt_keras.export import export_saved_model, graph_op_types

    export_saved_model(model, "/tmp/m", {"ids": tf.TensorSpec([None, 4], tf.int64)})
    loaded = tf.saved_model.load("/tmp/m")          # no tt_keras needed
    loaded.signatures["serving_default"](ids=...)   # -> {"predictions": ...}
    graph_op_types("/tmp/m")                        # ['AddV2', 'BatchMatMulV2', ...]

Only the model's variables and the one serving function are saved (the Keras model object
itself is not serialized, so no Keras layer code is traced outside the scope and nothing
Keras-specific is needed at load time).

The serving function checks its inputs before it computes (`validate_inputs`, on by
default): every input with a batch dimension has the same number of rows, at most
`max_batch_size`, and floating-point inputs hold no NaN or Inf. A bad request fails with an
InvalidArgumentError naming the input (TF Serving returns it to the client as the error
message) instead of a ConcatOp error or a finite prediction made of a NaN.

A local export is written into a staging directory beside `export_dir`, checked (its
saved_model.pb parses, its variables are complete, and a portable one holds no custom op),
and only then put in place of the old one (tt_keras/dir_swap.py). A serving function that
raises, a failed check, or a process killed at any point leaves the previous export as it
was; TF Serving, which ignores the hidden staging name, never sees a half-written version.
"""

import os
import shutil
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import tensorflow as tf

from tt_keras import dir_swap, shape_checks

CUSTOM_OP_PREFIX = "TTKeras>"
DEFAULT_OUTPUT_KEY = "predictions"
# Rows one request may hold. The memory and time of a request grow with its rows (a DLRM
# took about 50 s and 14 GB for a million), so one client cannot stall a server by default.
DEFAULT_MAX_BATCH_SIZE = 65536

__all__ = [
    "CUSTOM_OP_PREFIX",
    "DEFAULT_MAX_BATCH_SIZE",
    "NonPortableGraphError",
    "export_saved_model",
    "validated_inputs",
    "graph_op_types",
    "custom_op_types",
    "unregistered_op_types",
    "check_portable",
]


class NonPortableGraphError(RuntimeError):
    """A SavedModel meant to be portable holds ops that stock TensorFlow does not have."""


def _saved_model_proto(saved_model_dir: str):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

    path = os.path.join(saved_model_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def graph_op_types(saved_model_dir: str) -> List[str]:
    """All op types used in a SavedModel: every meta graph's nodes and every function in its
    function library (signatures, restore functions, gradients), sorted and de-duplicated."""
    ops = set()
    for meta_graph in _saved_model_proto(saved_model_dir).meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(ops)


def custom_op_types(saved_model_dir: str) -> List[str]:
    """The tt_keras op types ("TTKeras>...") in a SavedModel."""
    return [op for op in graph_op_types(saved_model_dir) if op.startswith(CUSTOM_OP_PREFIX)]


def unregistered_op_types(saved_model_dir: str) -> List[str]:
    """Op types of a SavedModel that are neither TF ops registered in this process nor
    functions defined in its library (ops from libraries this process has not loaded)."""
    from tensorflow.python.framework import op_def_registry  # pylint: disable=g-import-not-at-top

    proto = _saved_model_proto(saved_model_dir)
    function_names = set()
    for meta_graph in proto.meta_graphs:
        function_names.update(f.signature.name for f in meta_graph.graph_def.library.function)
    return [op for op in graph_op_types(saved_model_dir)
            if op not in function_names and op_def_registry.get(op) is None]


def check_portable(saved_model_dir: str) -> List[str]:
    """Raises NonPortableGraphError if the SavedModel holds a "TTKeras>" op.

    Returns the SavedModel's op types.
    """
    ops = graph_op_types(saved_model_dir)
    bad = [op for op in ops if op.startswith(CUSTOM_OP_PREFIX)]
    if bad:
        raise NonPortableGraphError(
            f"SavedModel {saved_model_dir} is not portable: it holds custom op(s) "
            f"{', '.join(bad)}; stock TensorFlow / TF Serving cannot run it")
    return ops


def _model_variables(model) -> list:
    variables = list(getattr(model, "variables", None) or [])
    if not variables and isinstance(model, tf.Module):
        variables = list(model.variables)
    return variables


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (others unchanged).

    A Keras 3 variable saves as a second tf.Variable beside the one the traced function
    reads, and the checkpoint restores only that copy: TF Serving's C++ loader
    (LoadSavedModel) then finds the function's variable uninitialized ("Could not find
    variable"). Saving the tf.Variable itself gives one variable, restored and read.
    """
    inner = getattr(variable, "value", None)
    if isinstance(inner, tf.Variable) and not isinstance(variable, tf.Variable):
        return inner
    return variable


def _default_serving_fn(model, names):
    def serve(inputs):
        if len(names) == 1:
            return model(inputs[names[0]], training=False)
        return model(inputs, training=False)

    return serve


def validated_inputs(inputs: Mapping[str, tf.Tensor],
                     max_batch_size: Optional[int] = None) -> Dict[str, tf.Tensor]:
    """`inputs`, checked (graph asserts, run before anything reads them): every input of
    rank >= 1 has as many rows as the first such input, at most `max_batch_size` (None or
    0: no bound); floating-point inputs hold no NaN or Inf. Messages name the input (bare:
    the Assert op escapes quotes)."""
    checks = []
    batched = [n for n, x in inputs.items() if x.shape.rank is None or x.shape.rank >= 1]
    if batched:
        first = batched[0]
        rows = tf.shape(inputs[first], out_type=tf.int64)[0]
        if max_batch_size:
            checks.append(tf.debugging.assert_less_equal(
                rows, tf.constant(max_batch_size, tf.int64),
                message=f"request too large: input {first} has more rows than "
                        f"max_batch_size={max_batch_size}; split it into smaller requests"))
        for name in batched[1:]:
            checks.append(tf.debugging.assert_equal(
                tf.shape(inputs[name], out_type=tf.int64)[0], rows,
                message=f"input {name} has a different number of rows than input {first} "
                        f"(x: the rows of {name}, y: the rows of {first})"))
    for name, x in inputs.items():
        if x.dtype.is_floating:
            checks.append(tf.debugging.assert_all_finite(
                x, message=f"input {name} holds NaN or Inf"))
    with tf.control_dependencies(checks):
        return {name: tf.identity(x) for name, x in inputs.items()}


def export_saved_model(
    model,
    export_dir: str,
    input_signature: Mapping[str, tf.TensorSpec],
    serving_fn: Optional[Callable[[Dict[str, tf.Tensor]], object]] = None,
    portable: bool = True,
    variables: Optional[Iterable[tf.Variable]] = None,
    output_key: str = DEFAULT_OUTPUT_KEY,
    signature_name: str = "serving_default",
    overwrite: bool = True,
    save_options: Optional[tf.saved_model.SaveOptions] = None,
    validate_inputs: bool = True,
    max_batch_size: Optional[int] = DEFAULT_MAX_BATCH_SIZE,
) -> List[str]:
    """Exports `model` as a SavedModel with one flat, named serving signature.

    Args:
      model: a built Keras model (Keras 3 or tf_keras) or any callable; its variables are
        what the SavedModel stores (or pass `variables`).
      export_dir: the SavedModel directory.
      input_signature: {input name: tf.TensorSpec}; one named input per entry, which is what a
        TF Serving request names ({"instances": [{name: value, ...}]} or {"inputs": {...}}).
      serving_fn: inputs dict -> a tensor or a {name: tensor} dict. Default: the model on the
        dict (on the single tensor when there is one input), with training=False.
      portable: trace with the pure-TF lookup (standard TF ops only) and check the result;
        False keeps the layers' backend (possibly the custom ops).
      variables: the variables to store; default: `model.variables`.
      output_key: the output's name when serving_fn returns a single tensor.
      signature_name: the signature key ("serving_default" is what TF Serving uses).
      overwrite: replace an existing export_dir (only once the new export is complete and
        checked); False: an existing export_dir is an error.
      save_options: tf.saved_model.SaveOptions; default: for portable exports, no custom
        gradients are saved (serving never needs them).
      validate_inputs: check each request in the serving function: inputs with a batch
        dimension have equal row counts (at most max_batch_size) and floating-point inputs
        are finite; errors name the input. False: no checks.
      max_batch_size: the most rows a request may have (None or 0: no bound); needs
        validate_inputs.

    Returns:
      The SavedModel's op types (graph_op_types).

    Raises:
      NonPortableGraphError: portable=True and the saved graph still holds a "TTKeras>" op
        (export_dir is then left as it was).
      FileExistsError: overwrite=False and export_dir exists.
    """
    input_signature = dict(input_signature)
    if not input_signature:
        raise ValueError("input_signature must name at least one input")
    names = list(input_signature)
    specs = {}
    for name, spec in input_signature.items():
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"input_signature[{name!r}] must be a tf.TensorSpec, got {spec!r}")
        specs[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    fn = serving_fn or _default_serving_fn(model, names)
    if max_batch_size is not None:
        max_batch_size = shape_checks.as_int(max_batch_size, "max_batch_size", minimum=0)

    def _outputs(inputs):
        out = fn(inputs)
        if isinstance(out, Mapping):
            return {k: tf.convert_to_tensor(v) for k, v in out.items()}
        return {output_key: tf.convert_to_tensor(out)}

    @tf.function(input_signature=[specs[n] for n in names])
    def serve(*args):
        inputs = dict(zip(names, args))
        if validate_inputs:
            inputs = validated_inputs(inputs, max_batch_size)
        return _outputs(inputs)

    module = tf.Module()
    variables = list(variables) if variables is not None else _model_variables(model)
    module.tt_keras_variables = [_tf_variable(v) for v in variables]

    if save_options is None:
        save_options = tf.saved_model.SaveOptions(experimental_custom_gradients=not portable)
    if _is_remote(export_dir):  # no directory rename on object stores: replace in place
        if tf.io.gfile.exists(export_dir):
            if not overwrite:
                raise FileExistsError(f"export_dir {export_dir} exists (overwrite=False)")
            tf.io.gfile.rmtree(export_dir)
        return _save_and_check(module, serve, export_dir, signature_name, save_options,
                               portable)
    dir_swap.recover_dir(export_dir)
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(f"export_dir {export_dir} exists (overwrite=False)")
    staging = dir_swap.staging_dir(export_dir)
    try:
        ops = _save_and_check(module, serve, staging, signature_name, save_options, portable)
        dir_swap.replace_dir(staging, export_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return ops


def _is_remote(path: str) -> bool:
    return "://" in path


def _check_complete(saved_model_dir: str, has_variables: bool) -> List[str]:
    """The SavedModel's op types, once its graph parses and its variables are all there."""
    ops = graph_op_types(saved_model_dir)  # parses saved_model.pb
    if has_variables:
        prefix = os.path.join(saved_model_dir, "variables", "variables")
        try:
            reader = tf.train.load_checkpoint(prefix)
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)  # checks each tensor's checksum
        # A short or corrupt file surfaces as IndexError ("Read less bytes than
        # requested") or DataLossError, depending on where it breaks.
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
            raise RuntimeError(f"the export's variables in {prefix} do not read back: {e}") from e
    return ops


def _save_and_check(module, serve, path, signature_name, save_options, portable) -> List[str]:
    def _save():
        concrete = serve.get_concrete_function()
        tf.saved_model.save(module, path, signatures={signature_name: concrete},
                            options=save_options)

    if portable:
        import tt_keras  # pylint: disable=g-import-not-at-top

        with tt_keras.lookup_backend_scope("reference"):
            _save()
        check_portable(path)
    else:
        _save()
    return _check_complete(path, bool(module.tt_keras_variables))
