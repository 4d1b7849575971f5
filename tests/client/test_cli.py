"""Argument parsing, output formatting and commands of `python -m client`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.cli import build_parser, input_file, json_arrays, main
from client.formatting import models_table, prediction_text, response_json, table
from client.results import ClassScore, PredictResult
from tests.support.fake_serving import DIGITS, FakeServer
from wire.codec import to_numpy

pytestmark = pytest.mark.integration


def test_global_options_before_or_after_command() -> None:
    before = build_parser().parse_args(["--target", "h:1", "--timeout", "2", "models", "--json"])
    after = build_parser().parse_args(["models", "--target", "h:1", "--timeout", "2", "--json"])
    for args in (before, after):
        assert (args.target, args.timeout, args.json, args.command) == ("h:1", 2.0, True, "models")


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_TARGET", "env-host:9")
    monkeypatch.setenv("SERVING_API_KEY", "k")
    args = build_parser().parse_args(["health"])
    assert (args.target, args.api_key, args.timeout, args.service) == ("env-host:9", "k", None, "")
    monkeypatch.delenv("SERVING_TARGET")
    monkeypatch.delenv("SERVING_API_KEY")
    args = build_parser().parse_args(["health", "--service", "serving.v1.PredictService"])
    assert (args.target, args.api_key) == ("localhost:50051", None)
    assert args.service == "serving.v1.PredictService"


def test_predict_arguments() -> None:
    args = build_parser().parse_args(
        [
            "predict",
            "--model",
            "digits",
            "--image",
            "a.png",
            "--image",
            "b.png",
            "--top-k",
            "3",
            "--input",
            "x=x.npy",
            "--output",
            "scores",
            "--json",
        ]
    )
    assert args.model == "digits" and args.version == 0 and args.top_k == 3 and args.json
    assert args.image == [Path("a.png"), Path("b.png")]
    assert args.input == [("x", Path("x.npy"))]
    assert args.output == ["scores"]


def test_bench_arguments() -> None:
    args = build_parser().parse_args(["bench"])
    assert (args.model, args.mode, args.concurrency, args.channels, args.rows) == ("digits", "unary", 1, 1, 1)
    assert (args.duration, args.count, args.warmup, args.json) == (None, None, 1.0, False)
    args = build_parser().parse_args(
        ["bench", "--mode", "stream", "--concurrency", "8", "--count", "100", "--warmup", "0"]
    )
    assert (args.mode, args.concurrency, args.count, args.warmup) == ("stream", 8, 100, 0.0)


@pytest.mark.parametrize("argv", [["predict"], ["bench", "--mode", "x"], ["nope"], []])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2


@pytest.mark.parametrize("value", ["x", "=a.npy", "x="])
def test_input_file_rejects(value: str) -> None:
    with pytest.raises(Exception, match=r"NAME=FILE\.npy"):
        input_file(value)


def test_json_arrays_take_dtype_from_metadata() -> None:
    arrays = json_arrays({"image": [[1, 2, 3, 4]]}, DIGITS)
    assert arrays["image"].dtype == np.float32 and arrays["image"].shape == (1, 4)
    with pytest.raises(ValueError, match="no input 'pixels'; inputs: image"):
        json_arrays({"pixels": [1]}, DIGITS)


def test_table_and_models_table() -> None:
    assert table(["A", "BB"], [["xxx", "y"]]) == "A    BB\nxxx  y"
    lines = models_table([DIGITS]).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "INPUTS", "OUTPUTS", "LABELS", "STATE"]
    assert lines[1].split() == ["digits", "1", "image:FLOAT32[-1,4]", "scores:FLOAT32[-1,3]", "3", "READY"]
    assert models_table([]) == "no models loaded"


def test_prediction_text() -> None:
    result = PredictResult(
        request_id="r",
        model="m",
        version=1,
        outputs={"scores": np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)},
        classifications=[[ClassScore("cat", 1, 0.75), ClassScore("dog", 0, 0.25)], []],
    )
    text = prediction_text(result, ["a.png", "b.png"])
    assert text.splitlines() == [
        "a.png: cat (confidence 0.7500)",
        "  1. cat          0.7500",
        "  2. dog          0.2500",
        "b.png:",
        "  scores: [0.5, 0.5]",
    ]


def test_response_json_has_typed_outputs() -> None:
    result = PredictResult("r", "m", 1, {"scores": np.array([[0.5, 1.0]], np.float32)}, [])
    data = json.loads(response_json(result))
    assert data["outputs"]["scores"]["floatVal"] == [0.5, 1.0]
    assert "raw" not in data["outputs"]["scores"]


def test_commands_against_fake_server(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "digit_3.png"
    image.write_bytes(b"png")
    target = ["--target", fake_server.target]

    assert main([*target, "models"]) == 0
    assert "image:FLOAT32[-1,4]" in capsys.readouterr().out

    assert main([*target, "model", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["zero", "one", "two"]

    predict = [*target, "predict", "--model", "digits"]
    assert main([*predict, "--image", str(image), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "digit_3.png: zero (confidence 0.8000)" and len(lines) == 4

    npy = tmp_path / "x.npy"
    np.save(npy, np.ones((2, 4), np.float32))
    assert main([*predict, "--input", f"image={npy}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["scores"]["shape"] == ["2", "3"]

    assert main([*predict, "--data", '{"image": [[1, 2, 3, 4]]}']) == 0
    assert capsys.readouterr().out.startswith("row 0: zero")
    sent = fake_server.predict.requests[-1].inputs["image"].tensor
    np.testing.assert_array_equal(to_numpy(sent), np.array([[1, 2, 3, 4]], np.float32))

    assert main([*target, "health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main([*target, "health", "--service", "draining"]) == 1
    assert capsys.readouterr().out.strip() == "NOT_SERVING"


def test_command_errors(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", fake_server.target]
    assert main([*target, "model", "nope"]) == 1
    assert capsys.readouterr().err.strip() == "error: NOT_FOUND: no model 'nope'"
    assert main([*target, "predict", "--model", "digits"]) == 1
    assert "give --image, --input or --data" in capsys.readouterr().err
