"""Hostile and unlucky input (issue 17): every case here is refused with one clear error, never garbage.

Model folders are tiny and untrained: what is tested is what the loaders and the service accept.
"""

import json
import math
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mnist_cnn import load_model
from mnist_cnn.config import ServeSettings, TrainConfig
from mnist_cnn.errors import ModelFolderError, NonFiniteOutputError, TrainingDivergedError
from mnist_cnn.folder import ModelFolder, save_model
from mnist_cnn.loop import fit
from mnist_cnn.models import create_model
from mnist_cnn.serve import Settings, create_app


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "m", create_model("fast"), {"architecture": "fast"})


def _edit(folder, **changes):
    path = folder / "config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "field", ["lr", "weight_decay", "warmup", "label_smoothing", "ema", "aug_rotate", "aug_shear", "reject_weight"]
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_train_config_refuses_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("value", [1.0, "1.0", "1.", 1e0])
def test_a_val_split_of_one_point_zero_is_ambiguous(value):
    with pytest.raises(ValueError, match="1.0 is ambiguous: give a count or a fraction below 1"):
        TrainConfig(val_split=value)


@pytest.mark.parametrize(("value", "read"), [(1, 1), ("1", 1), (0.3, 0.3), ("5000", 5000), (0, 0)])
def test_val_split_counts_and_fractions_still_read(value, read):
    assert TrainConfig(val_split=value).val_split == read


def test_train_config_refuses_a_string_where_a_number_goes():
    with pytest.raises(ValueError, match="epochs must be a number"):
        TrainConfig(epochs="abc")


@pytest.mark.parametrize(
    "changes",
    [{"batch_wait_ms": math.inf}, {"batch_wait_ms": math.nan}, {"min_confidence": math.nan}, {"threads": -3},
     {"threads": 10**6}, {"max_queue": 0}, {"retry_after_s": -1}],
)  # fmt: skip
def test_serve_settings_refuse_non_finite_and_out_of_range_numbers(changes):
    with pytest.raises(ValueError):
        ServeSettings(**changes)


# ----------------------------------------------------------------------------- training


def test_a_run_whose_loss_becomes_nan_stops_with_a_clear_error():
    torch.manual_seed(0)
    model = create_model("fast")
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)  # what --lr inf does after the first step
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    config = TrainConfig(model="fast", epochs=2, batch_size=32, val_split=0)
    with pytest.raises(TrainingDivergedError, match="training diverged in epoch 1.*lower --lr"):
        fit(model, (x, y), None, config, progress=False)
    assert TrainingDivergedError.exit_code != 0


# ----------------------------------------------------------------------------- model folders


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"normalization": {"mean": 0.1, "std": 0}}, "normalization std must be above 0"),
        ({"normalization": {"mean": 0.1, "std": math.nan}}, "normalization must hold a finite mean and std"),
        ({"normalization": {"mean": 0.1, "std": "0.3"}}, "normalization must hold a finite mean and std"),
        ({"normalization": "mnist"}, "normalization must hold a finite mean and std"),
        ({"calibration": {"temperature": -1}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": 0}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": "1.2"}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": math.inf}}, "calibration temperature must be a finite number above 0"),
        ({"num_classes": 10**12}, "num_classes must be an integer from 2 to 10000"),
        ({"num_classes": 10.5}, "num_classes must be an integer"),
        ({"in_channels": "1"}, "in_channels must be an integer from 1 to 64"),
        ({"in_channels": True}, "in_channels must be an integer"),
        ({"format_version": "2"}, "format_version must be an integer, got '2'"),
        ({"format_version": None}, "format_version must be an integer, got None"),
        ({"format_version": 99}, "newer mnist-cnn"),
        ({"versions": ["torch"]}, "versions must be a JSON object"),
        ({"architecture": 7}, "does not name an architecture"),
    ],
)
def test_a_damaged_config_is_one_model_folder_error(folder, changes, message):
    _edit(folder, **changes)
    with pytest.raises(ModelFolderError, match=message) as info:
        load_model(folder)
    assert "\n" not in str(info.value)


def test_calibration_without_a_temperature_still_loads(folder):
    _edit(folder, calibration=None)
    load_model(folder)
    _edit(folder, calibration={"temperature": None})
    load_model(folder)


def _nan_weights(folder):
    model = create_model("fast")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    return save_model(folder, model, {"architecture": "fast"})


def test_non_finite_probabilities_raise_instead_of_returning_nan(tmp_path):
    clf = load_model(_nan_weights(tmp_path / "nan"))
    image = np.zeros((28, 28), np.uint8)
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
        clf.predict_proba(image)
    with pytest.raises(NonFiniteOutputError):
        clf.predict(image)


def test_the_service_never_answers_200_for_a_model_that_computes_nan(tmp_path):
    folder = _nan_weights(tmp_path / "nan")
    with TestClient(create_app(folder, Settings(runtime="torch"))) as c:
        for _ in range(200):
            r = c.post("/v1/predict", json={"pixels": [0] * 784})
            if "still loading" not in r.text:
                break
            time.sleep(0.025)
        assert r.status_code == 503, r.text
        assert str(tmp_path) not in r.text  # no server path in a body
        assert c.get("/healthz").status_code == 200


def test_model_folder_read_accepts_what_save_writes(folder):
    assert ModelFolder(folder).read()["architecture"] == "fast"


# ----------------------------------------------------------------------------- weights integrity


def test_saving_records_the_sha256_of_the_weights(folder):
    import hashlib

    recorded = json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert recorded == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_a_bit_flipped_weights_file_is_refused(folder):
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor: safetensors itself would load it
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFolderError, match="the weights do not match the SHA-256 recorded in config.json"):
        load_model(folder)


def test_a_folder_saved_before_the_digest_was_recorded_still_loads(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    load_model(folder)
    _edit(folder, weights_sha256="abc")
    with pytest.raises(ModelFolderError, match="weights_sha256 must be a hex SHA-256"):
        load_model(folder)


# ----------------------------------------------------------------------------- checkpoints


def test_rotation_keeps_the_fresh_intact_checkpoints_not_the_damaged_higher_steps(tmp_path):
    from mnist_cnn.checkpoint import Checkpoints

    store = Checkpoints(tmp_path, keep=3)
    for step in (10, 20, 30):
        store.save({"step": step}, step)
    for path in store.paths():  # all damaged: the machine died while they were written
        path.write_bytes(path.read_bytes()[:-5])
    assert store.latest() is None
    for step in (1, 2, 3, 4):  # the run starts over; a crash now must not lose this progress
        store.save({"step": step}, step)
    assert [p.name for p in store.paths()] == ["step-000000002.pt", "step-000000003.pt", "step-000000004.pt"]
    path, state = store.latest()
    assert state["step"] == 4


def test_rotation_still_keeps_the_newest_k_when_all_are_intact(tmp_path):
    from mnist_cnn.checkpoint import Checkpoints

    store = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        store.save({"step": step}, step)
    assert [p.name for p in store.paths()] == ["step-000000002.pt", "step-000000003.pt"]


@pytest.mark.parametrize("damage", ["manifest_list", "state_list"])
def test_a_checkpoint_that_is_not_a_dict_is_a_checkpoint_error(tmp_path, damage):
    import hashlib
    import io

    from mnist_cnn.checkpoint import CheckpointError, Checkpoints

    store = Checkpoints(tmp_path)
    path = store.save({"step": 1}, 1)
    if damage == "manifest_list":
        path.with_suffix(".json").write_text("[]")
    else:
        buffer = io.BytesIO()
        torch.save([1, 2], buffer)
        data = buffer.getvalue()
        path.write_bytes(data)
        manifest = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        store.load(path)
