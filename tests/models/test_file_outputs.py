"""File outputs: the demo image model's PNGs are stored and returned as URLs (S3 via moto, and locally)."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from server.app import App
from server.models.backend import TensorInfo
from server.models.file_outputs import encode_png, parse_file_outputs
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc, task_pb2, task_pb2_grpc, tensor_pb2
from tests.support.s3_servers import MotoServer, app_settings, s3_settings
from tests.support.servers import MODEL_DIR, wait_for
from wire.codec import from_numpy, to_numpy

pytestmark = pytest.mark.integration

DECODER = MODEL_DIR / "digits_decoder" / "1"


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    """What the model draws for each digit, as the 8-bit grayscale PNG must hold it ([10, 32, 32])."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(DECODER)).signatures["serving_default"]
    images = serve(digit=tf.range(10, dtype=tf.int32))["image"].numpy()[..., 0]
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def class_means() -> np.ndarray:
    """The mean 8x8 image of each class, upscaled like the model does ([10, 32, 32] in [0, 255])."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    means = np.stack([digits.images[digits.target == d].mean(axis=0) / 16.0 for d in range(10)])[..., None]
    return tf.image.resize(means, (32, 32), method="bilinear").numpy()[..., 0] * 255


@pytest.fixture(scope="module")
def s3_app(moto: MotoServer) -> Iterator[App]:
    moto.client.create_bucket(Bucket="outputs")
    app = App(s3_settings(moto.endpoint_url, "outputs", presign_expiry_seconds=300))
    app.start()
    yield app
    app.stop(grace=1)


def request(digits: list[int], **fields: Any) -> predict_pb2.PredictRequest:
    tensor = from_numpy(np.array(digits, np.int32))
    return predict_pb2.PredictRequest(
        model="digits_decoder", inputs={"digit": tensor_pb2.Input(tensor=tensor)}, **fields
    )


def predict(app: App, message: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    with grpc.insecure_channel(app.address) as channel:
        return predict_pb2_grpc.PredictServiceStub(channel).Predict(message, timeout=30)


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
        return np.asarray(image)


def test_image_output_comes_back_as_urls(s3_app: App, moto: MotoServer, drawn, class_means) -> None:
    reply = predict(s3_app, request([3, 7], request_id="req-9"))
    assert list(reply.outputs) == [] and list(reply.files) == ["image"]
    refs = reply.files["image"].files
    assert len(refs) == 2
    for row, (digit, ref) in enumerate(zip([3, 7], refs, strict=True)):
        assert ref.key.startswith("outputs/digits_decoder/req-9/") and ref.key.endswith(f"-image-{row}.png")
        assert ref.uri == f"s3://outputs/{ref.key}" and ref.url == f"{moto.endpoint_url}/outputs/{ref.key}"
        assert ref.content_type == "image/png"
        # The bucket is private, as buckets usually are: the signed URL fetches the object.
        assert ref.presigned_url.startswith(f"{ref.url}?") and "X-Amz-Signature=" in ref.presigned_url
        with urllib.request.urlopen(ref.presigned_url, timeout=10) as fetched:
            data = fetched.read()
        assert (ref.size, ref.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        pixels = png_pixels(data)
        np.testing.assert_array_equal(pixels, drawn[digit])
        assert np.abs(pixels - class_means[digit]).max() <= 6  # the mean image of that digit


def test_inline_files_returns_the_tensor(s3_app: App) -> None:
    reply = predict(s3_app, request([1], inline_files=True))
    assert list(reply.files) == []
    image = to_numpy(reply.outputs["image"])
    assert image.shape == (1, 32, 32, 1) and image.dtype == np.float32


def test_stream_predict_returns_files_too(s3_app: App, drawn) -> None:
    with grpc.insecure_channel(s3_app.address) as channel:
        stub = stream_pb2_grpc.StreamPredictServiceStub(channel)
        replies = list(stub.StreamPredict(iter([stream_pb2.StreamPredictRequest(request=request([5]))]), timeout=30))
    ref = replies[0].response.files["image"].files[0]
    with urllib.request.urlopen(ref.presigned_url, timeout=10) as fetched:
        np.testing.assert_array_equal(png_pixels(fetched.read()), drawn[5])


def test_async_tasks_record_the_files(s3_app: App, moto: MotoServer, drawn) -> None:
    with grpc.insecure_channel(s3_app.address) as channel:
        task = (
            predict_pb2_grpc.PredictServiceStub(channel)
            .PredictAsync(predict_pb2.PredictAsyncRequest(request=request([9])), timeout=30)
            .task
        )
        tasks = task_pb2_grpc.TaskServiceStub(channel)

        def finished() -> task_pb2.Task | None:
            current = tasks.GetTask(task_pb2.GetTaskRequest(id=task.id), timeout=10).task
            return current if current.status == task_pb2.TASK_STATUS_SUCCEEDED else None

        done = wait_for(finished, 60, f"task {task.id} to succeed")
    assert [(f.name, f.content_type) for f in done.files] == [("image", "image/png")]
    key = done.files[0].uri.removeprefix("s3://outputs/")
    data = moto.client.get_object(Bucket="outputs", Key=key)["Body"].read()
    assert done.files[0].size == len(data)
    np.testing.assert_array_equal(png_pixels(data), drawn[9])


def test_get_model_reports_the_file_outputs(s3_app: App) -> None:
    with grpc.insecure_channel(s3_app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        decoder = stub.GetModel(predict_pb2.GetModelRequest(model="digits_decoder"), timeout=10).model
        classifier = stub.GetModel(predict_pb2.GetModelRequest(model="digits"), timeout=10).model
    assert [(f.output, f.format, f.content_type) for f in decoder.file_outputs] == [("image", "png", "image/png")]
    assert list(classifier.file_outputs) == []


def test_the_classifier_is_unchanged(s3_app: App) -> None:
    tensor = from_numpy(np.zeros((1, 8, 8, 1), np.float32))
    reply = predict(
        s3_app, predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input(tensor=tensor)})
    )
    assert list(reply.outputs) == ["probabilities"] and list(reply.files) == []


def test_local_store_serves_files_under_files(tmp_path: Path, drawn) -> None:
    app = App(app_settings(upload_dir=tmp_path / "up"))
    app.start()
    try:
        ref = predict(app, request([0])).files["image"].files[0]
        with urllib.request.urlopen(f"http://{app.http_address}{ref.url}", timeout=10) as served:
            np.testing.assert_array_equal(png_pixels(served.read()), drawn[0])
    finally:
        app.stop(grace=1)
    assert ref.url == f"/files/{ref.key}"
    assert ref.uri == (tmp_path / "up" / ref.key).as_uri()
    np.testing.assert_array_equal(png_pixels((tmp_path / "up" / ref.key).read_bytes()), drawn[0])


def test_png_encoding() -> None:
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    np.testing.assert_array_equal(png_pixels_any(encode_png(gray)), gray)
    np.testing.assert_array_equal(png_pixels_any(encode_png(gray[..., None])), gray)
    rgb = np.array([[[-1.0, 0.5, 2.0]]], np.float32)
    np.testing.assert_array_equal(png_pixels_any(encode_png(rgb)), [[[0, 128, 255]]])


def png_pixels_any(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"nope": {"format": "png"}}, "file_outputs.nope: the model has no such output (outputs: image, scores)"),
        ({"image": {"format": "gif"}}, "file_outputs.image: format must be one of ['png'], got 'gif'"),
        ({"scores": {"format": "png"}}, "a png output must be uint8 or float shaped [-1, H, W] or [-1, H, W, 1|3|4]"),
        (["image"], "file_outputs must be an object"),
    ],
)
def test_wrong_declarations_fail_the_load(declared: object, message: str) -> None:
    outputs = {
        "image": TensorInfo("image", np.dtype(np.float32), (-1, 32, 32, 1)),
        "scores": TensorInfo("scores", np.dtype(np.float32), (-1, 10)),
    }
    with pytest.raises(ValueError) as caught:
        parse_file_outputs(declared, outputs, "m/serving.json")
    assert message in str(caught.value) and str(caught.value).startswith("m/serving.json: ")
