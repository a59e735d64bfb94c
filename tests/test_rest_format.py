"""The REST request of the README and examples/dlrm/export.py, in TF Serving's two forms
(row `instances`, columnar `inputs`), converted to tensors by the export's signature as TF
Serving's REST handler does, gives the predictions of a direct call of the model."""

import base64
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from examples.dlrm import data as dlrm_data
from examples.dlrm import export as dlrm_export
from serving import criteo_requests
from serving import rest_format as rest
from tests import serving_models
from tests.tolerance import assert_reordered_close

DLRM_README = os.path.join(serving_models.REPO, "examples", "dlrm", "README.md")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(trained tiny DLRM, its loaded portable export)."""
    model = serving_models.train_tiny_dlrm()
    path = str(tmp_path_factory.mktemp("rest") / "export")
    dlrm_export.export_dlrm(model, path)
    return model, tf.saved_model.load(path)


@pytest.fixture(scope="module")
def feed():
    """Raw rows: the real Criteo sample's first rows when present, and random ones."""
    rows = criteo_requests.random_rows(12, seed=3)
    if os.path.exists(serving_models.SAMPLE):
        real = criteo_requests.sample_rows(serving_models.SAMPLE, 20)
        rows = {k: np.concatenate([real[k], rows[k]]) for k in rows}
    return rows


def _specs():
    return dlrm_export.serving_input_signature("raw")


def documented_request():
    """The complete predict request of examples/dlrm/README.md (its `curl ... -d '...'`)."""
    with open(DLRM_README) as f:
        text = f.read()
    start = text.index("-d '{") + len("-d '")
    return json.loads(text[start:text.index("'", start)])


def test_the_documented_request(served):
    """The README's request, sent as it is and in the columnar form, is answered with the
    predictions of a direct call; its row is the first row of the Criteo sample."""
    model, loaded = served
    request = documented_request()
    (instance,) = request["instances"]
    assert sorted(instance) == sorted(_specs())
    columnar = {"inputs": {k: [v] for k, v in instance.items()}}
    feed = {k: np.array([v], np.float32 if k in dlrm_data.DENSE_FEATURES else str)
            for k, v in instance.items()}
    want = serving_models.expected_predictions(model, feed)
    rows = rest.predict(loaded, json.dumps(request))
    cols = rest.predict(loaded, json.dumps(columnar))
    assert_reordered_close(rows["predictions"], want)
    assert rows["predictions"] == cols["outputs"]
    if os.path.exists(serving_models.SAMPLE):
        first = criteo_requests.sample_rows(serving_models.SAMPLE, 1)
        assert criteo_requests.instances(first) == [instance]


@pytest.mark.parametrize("form", [rest.ROW, rest.COLUMNAR])
def test_request_gives_the_models_predictions(served, feed, form):
    model, loaded = served
    payload = (criteo_requests.instances(feed) if form == rest.ROW
               else criteo_requests.columns(feed))
    body = json.dumps({form: payload})
    signature = loaded.signatures["serving_default"]
    name, tensors, got_form = rest.request_to_tensors(body, signature.structured_input_signature[1])
    assert (name, got_form) == ("serving_default", form)
    batch = len(feed["I1"])
    for key, spec in _specs().items():
        assert tensors[key].shape == (batch,)
        if spec.dtype == tf.string:
            assert list(tensors[key]) == [s.encode() for s in feed[key]]
        else:
            assert tensors[key].dtype == np.float32
            np.testing.assert_array_equal(tensors[key], feed[key])
    response = rest.predict(loaded, body)
    assert list(response) == (["predictions"] if form == rest.ROW else ["outputs"])
    predictions = np.array(response["predictions" if form == rest.ROW else "outputs"])
    assert predictions.shape == (batch,)
    assert_reordered_close(predictions, serving_models.expected_predictions(model, feed))


def test_row_and_columnar_forms_agree_for_one_example(served, feed):
    _, loaded = served
    one = {k: v[:1] for k, v in feed.items()}
    rows = rest.predict(loaded, {"instances": criteo_requests.instances(one)})
    cols = rest.predict(loaded, {"inputs": criteo_requests.columns(one)})
    assert len(rows["predictions"]) == 1
    assert rows["predictions"] == cols["outputs"]


def test_binary_strings_and_signature_name(served, feed):
    _, loaded = served
    instance = criteo_requests.instances({k: v[:1] for k, v in feed.items()})[0]
    plain = rest.predict(loaded, {"instances": [instance]})
    encoded = dict(instance)
    encoded["C1"] = {"b64": base64.b64encode(instance["C1"].encode()).decode()}
    again = rest.predict(loaded, {"signature_name": "serving_default", "instances": [encoded]})
    assert again == plain
    with pytest.raises(rest.RequestError, match="signature_name 'nope'"):
        rest.predict(loaded, {"signature_name": "nope", "instances": [instance]})


def test_bad_requests_are_refused_with_the_reason(feed):
    specs = _specs()
    instance = criteo_requests.instances({k: v[:1] for k, v in feed.items()})[0]
    missing = {k: v for k, v in instance.items() if k != "C5"}
    with pytest.raises(rest.RequestError, match=r"instances\[1\]"):
        rest.request_to_tensors({"instances": [instance, missing]}, specs)
    with pytest.raises(rest.RequestError, match="exactly one of"):
        rest.request_to_tensors({"instances": [instance], "inputs": {}}, specs)
    wrong_type = dict(instance, C2=123)
    with pytest.raises(rest.RequestError, match="'C2' is a string tensor"):
        rest.request_to_tensors({"instances": [wrong_type]}, specs)
    wrong_type = dict(instance, I3="7")
    with pytest.raises(rest.RequestError, match="'I3' is float32"):
        rest.request_to_tensors({"instances": [wrong_type]}, specs)
    nested = dict(instance, I4=[1, 2])
    with pytest.raises(rest.RequestError, match="'I4' has shape"):
        rest.request_to_tensors({"instances": [nested]}, specs)
    cols = criteo_requests.columns({k: v[:2] for k, v in feed.items()})
    del cols["I1"]
    with pytest.raises(rest.RequestError, match="must be an object with the inputs"):
        rest.request_to_tensors({"inputs": cols}, specs)


def test_single_input_signature_takes_bare_values():
    specs = {"x": tf.TensorSpec([None, 2], tf.int64)}
    _, rows, _ = rest.request_to_tensors('{"instances": [[1, 2], [3, 4]]}', specs)
    _, cols, _ = rest.request_to_tensors('{"inputs": [[1, 2], [3, 4]]}', specs)
    _, named, _ = rest.request_to_tensors('{"instances": [{"x": [1, 2]}, {"x": [3, 4]}]}', specs)
    for tensors in (rows, cols, named):
        assert tensors["x"].dtype == np.int64
        np.testing.assert_array_equal(tensors["x"], [[1, 2], [3, 4]])
    with pytest.raises(rest.RequestError, match="'x' is int64"):
        rest.request_to_tensors('{"instances": [[1.5, 2], [3, 4]]}', specs)


def test_response_forms_for_several_outputs():
    outputs = {"p": np.array([0.5, 0.25], np.float32), "s": np.array([b"a", b"b"], object)}
    assert rest.response_json(outputs, rest.ROW) == {
        "predictions": [{"p": 0.5, "s": "a"}, {"p": 0.25, "s": "b"}]}
    assert rest.response_json(outputs, rest.COLUMNAR) == {
        "outputs": {"p": [0.5, 0.25], "s": ["a", "b"]}}
