"""The model folder: old formats keep loading and predict exactly as before."""

from pathlib import Path

import numpy as np

from mnist_cnn import load_model

DATA = Path(__file__).parent / "data"


def test_format_1_folder_loads_and_predicts_as_before():
    expected = np.load(DATA / "fast-width8-v1-expected.npz")
    clf = load_model(DATA / "fast-width8-v1")
    assert clf.config["format_version"] == 1
    assert clf.model.features[0].out_channels == 8  # taken from the weights: the folder does not say
    np.testing.assert_allclose(clf.logits(expected["images"]).numpy(), expected["logits"], rtol=0, atol=1e-5)
    assert clf.predict(expected["images"]).tolist() == expected["logits"].argmax(1).tolist()
