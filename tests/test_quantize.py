"""int8 quantisation: model.int8.onnx keeps model.onnx's contract, loads through its runtime, and agrees with float32."""

import hashlib
import json
import shutil
import time
import types

import numpy as np
import pytest
import torch

from mnist_cnn import ModelFolderError, create_model, load_model
from mnist_cnn.cli import main
from mnist_cnn.data import split_validation
from mnist_cnn.export import export_onnx
from mnist_cnn.folder import read_config
from mnist_cnn.inference import save_model

pytest.importorskip("onnxruntime")
from mnist_cnn.quantize import calibration_images, int8_network, quantize_onnx, verify_int8  # noqa: E402


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, mnist):
    """An untrained ``basic`` folder with model.onnx and model.int8.onnx (calibrated on 200 training images)."""
    torch.manual_seed(0)
    folder = save_model(tmp_path_factory.mktemp("int8") / "basic", create_model("basic"), {"architecture": "basic"})
    export_onnx(folder)
    quantize_onnx(folder, calibration_images(read_config(folder), mnist, 200))
    return folder


@pytest.mark.parametrize("name", ["basic", "best", "best-fullres", "fast"])
def test_the_int8_rewrite_computes_the_same_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # as after training
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if norms:
        norms[-1].weight.data[0] = -1.0  # a negative scale: this batch norm cannot be folded, and stays
    rewritten = int8_network(model)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), atol=1e-4, rtol=1e-4)
    kept = [m for m in rewritten.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Kept: the one with a negative scale, and conv -> batch norm -> ReLU (the exporter folds those).
    assert len(kept) == {"basic": 0, "best": 2, "best-fullres": 3, "fast": 1}[name]
    assert [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == norms  # the original is unchanged


def test_the_int8_file_loads_through_its_runtime_and_agrees_with_float32(quantized, mnist):
    images = mnist.test_images[:300].numpy()
    int8 = load_model(quantized, runtime="onnxruntime-int8", threads=1)
    fp32 = load_model(quantized, runtime="onnxruntime")
    assert int8.runtime == "onnxruntime-int8" and int8.session.get_session_options().intra_op_num_threads == 1
    assert (int8.predict(images) == fp32.predict(images)).mean() >= 0.95
    probs = int8.predict_proba(images[:7], batch_size=3)  # any batch size
    assert probs.shape == (7, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="needs the torch runtime"):
        load_model(quantized, runtime="onnxruntime-int8", tta=True)


def test_the_int8_file_carries_the_contract_of_model_onnx(quantized, mnist):
    import onnx
    import onnxruntime as ort

    meta = {n: dict(ort.InferenceSession(str(quantized / n)).get_modelmeta().custom_metadata_map)
            for n in ("model.onnx", "model.int8.onnx")}  # fmt: skip
    scheme = json.loads(meta["model.int8.onnx"].pop("quantization"))
    assert meta["model.int8.onnx"].items() >= meta["model.onnx"].items()  # ONNX Runtime's quantiser adds two keys
    assert meta["model.onnx"]["normalization_in_graph"] == "true"
    assert scheme["format"] == "QDQ" and "int8" in scheme["weights"]
    graph = onnx.load(str(quantized / "model.int8.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    assert (quantized / "model.int8.onnx").stat().st_size < (quantized / "model.onnx").stat().st_size / 3
    # 0-1 pixels straight in, float32 logits out, as with model.onnx.
    session = ort.InferenceSession(str(quantized / "model.int8.onnx"))
    logits = session.run(None, {"images": (mnist.test_images[:5].numpy()[:, None] / 255).astype(np.float32)})[0]
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    record = read_config(quantized)["onnx_int8"]
    assert record["sha256"] == hashlib.sha256((quantized / "model.int8.onnx").read_bytes()).hexdigest()
    assert record["calibration_images"] == 200 and record["weights_sha256"] == read_config(quantized)["weights_sha256"]


def test_only_the_first_convolution_and_its_pool_stay_float32(quantized):
    import onnx

    graph = onnx.load(str(quantized / "model.int8.onnx")).graph
    made_by = {out: node for node in graph.node for out in node.output}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert [c.input[1] in dequantized for c in convs] == [False, True]  # basic: conv 1 -> 32 float32, 32 -> 64 int8
    pool = next(node for node in graph.node if node.op_type == "MaxPool")
    assert pool.input[0] == convs[0].output[0]  # conv -> max-pool in float32, then ReLU and quantisation
    assert made_by[convs[1].input[0]].op_type == "DequantizeLinear"
    assert read_config(quantized)["onnx_int8"]["float32"].startswith("convolutions of one input channel")


def test_calibration_images_come_from_the_training_split_only():
    n = 1000
    index_images = torch.arange(n).view(n, 1, 1).expand(n, 28, 28)  # image i holds the number i
    data = types.SimpleNamespace(train_images=index_images)
    config = {"architecture": "basic", "train_config": {"val_split": 200, "seed": 3}}
    chosen = calibration_images(config, data, count=300, seed=1)[:, 0, 0]
    _, validation = split_validation(n, 200, 3)
    assert len(set(chosen.tolist())) == 300 and not set(chosen.tolist()) & set(validation.tolist())
    assert len(calibration_images({"architecture": "basic"}, data, count=5000)) == n  # no split recorded: all
    with pytest.raises(ValueError, match="at least 1"):
        calibration_images(config, data, count=0)


def test_verify_int8_records_agreement_and_accuracy(quantized, mnist):
    images, labels = mnist.test_images[:200].numpy(), mnist.test_labels[:200].numpy()
    verified = verify_int8(quantized, images, labels, min_agreement=0.9)
    assert verified["images"] == 200 and verified["agreement"] >= 0.95
    assert 0 <= verified["int8_accuracy"] <= 1 and read_config(quantized)["onnx_int8"]["verified"] == verified


def test_missing_stale_or_corrupt_int8_file_is_one_clear_error(quantized, tmp_path, mnist, capsys):
    folder = tmp_path / "m"
    shutil.copytree(quantized, folder)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(mnist.test_images[0].numpy()).save(image)
    (folder / "model.int8.onnx").write_bytes((folder / "model.int8.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFolderError, match="model.int8.onnx is damaged or was replaced.*--quantize int8"):
        load_model(folder, runtime="onnxruntime-int8")
    capsys.readouterr()
    assert main(["predict", str(folder), str(image), "--runtime", "onnxruntime-int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged or was replaced" in err and "Traceback" not in err
    load_model(folder, runtime="onnxruntime").predict(mnist.test_images[:1].numpy())  # model.onnx is untouched
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(ModelFolderError, match="has no model.int8.onnx; create it with: mnist-cnn export .* --quantize int8"):  # fmt: skip
        load_model(folder, runtime="onnxruntime-int8")
    shutil.copy(quantized / "model.int8.onnx", folder / "model.int8.onnx")
    torch.manual_seed(1)
    save_model(folder, create_model("basic"), read_config(folder))  # retrained after the export
    with pytest.raises(ModelFolderError, match="exported from other weights.*--quantize int8"):
        load_model(folder, runtime="onnxruntime-int8")


def test_cli_export_quantize_int8(tmp_path, quantized, mnist_dir, capsys):
    folder = tmp_path / "m"
    shutil.copytree(quantized, folder)
    (folder / "model.int8.onnx").unlink()
    args = ["export", str(folder), "--data-dir", str(mnist_dir), "--calibration-images", "100"]
    assert main([*args, "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx (int8, calibrated on 100 training images)" in out
    assert "int8 picks the same digit as float32 for" in out and "of the 10,000 test images" in out
    verified = read_config(folder)["onnx_int8"]["verified"]
    assert verified["images"] == 10_000 and verified["agreement"] >= 0.99
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--quantize", "int4"])
    assert exit_.value.code == 2 and "argument --quantize: invalid choice: 'int4' (choose from 'int8')" in capsys.readouterr().err  # fmt: skip
    assert main([*args[:-1], "0", "--quantize", "int8"]) == 2
    assert "--calibration-images must be at least 1" in capsys.readouterr().err


def test_the_service_serves_the_int8_model(quantized, mnist):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnist_cnn.serve import Settings, create_app

    image = mnist.test_images[0].numpy()
    expected = int(load_model(quantized, runtime="onnxruntime-int8").predict(image)[0])
    with TestClient(create_app(quantized, Settings(runtime="onnxruntime-int8"))) as client:
        for _ in range(400):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.025)
        body = client.post("/v1/predict", json={"pixels": image.tolist()}).json()
        assert body["label"] == expected
        info = client.get("/v1/model").json()
        assert info["runtime"] == "onnxruntime-int8"
        assert info["versions"]["serving"]["runtime"].startswith("onnxruntime ")
