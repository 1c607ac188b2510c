"""Quiet output: ``cbnet-tl`` prints no line from TensorFlow, absl, CUDA or the TFLite converter; ``--verbose`` does.

The checks run real processes with a clean environment (no TF_CPP_MIN_LOG_LEVEL, no CBNET_TL_VERBOSE), as on a
fresh machine: the CLI's own ``--help`` and a tiny real build, and a tiny conversion through ``to_tflite``
after the same ``configure`` call the CLI makes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cbnet_tl.toolchain.quiet import captured_stderr

# One pattern per source of chatter the issue names. "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." is
# not here: the runtime's interpreter prints it once per process (and the arm64 check reads it on the device).
LIBRARY_LINES = {
    "absl": re.compile(r"absl::InitializeLog|^[IWEF]\d{4} \d\d:\d\d:\d\d"),
    "CUDA": re.compile(r"cudart_stub|cuInit|cuda_(platform|dnn|blas|fft)|Could not find cuda drivers"),
    "oneDNN": re.compile(r"oneDNN"),
    "converter": re.compile(r"fully_quantize: \d|inference_type: \d"),
    "retracing": re.compile(r"triggered tf\.function retracing"),
    "python logs and warnings": re.compile(r"^(WARNING|INFO|ERROR):(tensorflow|absl)|/(tensorflow|keras)/\S+\.py:\d+: \w*Warning"),
    "interpreter": re.compile(r"Created TensorFlow Lite XNNPACK delegate"),
    "any Python warning": re.compile(r"\S+\.py:\d+: \w*Warning: "),  # ours too (a numpy overflow in runtime/)
}


def library_lines(text: str) -> list:
    """Every line of ``text`` (split at newlines and tqdm's carriage returns) that a library wrote."""
    lines = re.split(r"[\r\n]+", text)
    return [f"{source}: {line}" for line in lines for source, pattern in LIBRARY_LINES.items() if pattern.search(line)]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CBNET_TL_VERBOSE")}
    env.update(extra)
    return env


def cli() -> list:
    script = Path(sys.executable).with_name("cbnet-tl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cbnet_tl.toolchain.cli"]


def test_patterns_catch_the_lines_seen_on_a_fresh_machine():
    seen = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796074698.696898    9140 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
        "E0000 00:00:1796074740.633179    9705 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        "convert:  12%|#2   | 1/8 [00:02<00:17,  2.47s/model]fully_quantize: 0, inference_type: 6, "
        "input_inference_type: UINT8, output_inference_type: INT8\n"
        "WARNING:tensorflow:5 out of the last 5 calls to <function f> triggered tf.function retracing.\n"
        "/work/main/runtime/tables.py:51: RuntimeWarning: overflow encountered in exp\n"
    )
    assert len(library_lines(seen)) >= 6 and any("tables.py" in line for line in library_lines(seen))
    ours = "data: mnist: 50 training and 1600 test images\ntrain B-LeNet: 100%|##########| 1/1 [00:04<00:00]\n"
    assert library_lines(ours) == []


def test_captured_stderr_keeps_fd2_and_shows_it_only_on_failure(capfd, monkeypatch):
    monkeypatch.delenv("CBNET_TL_VERBOSE", raising=False)
    with captured_stderr() as captured:
        os.write(2, b"fully_quantize: 0, inference_type: 6\n")
    assert "fully_quantize" in captured.text
    assert capfd.readouterr().err == ""

    with pytest.raises(RuntimeError), captured_stderr():
        os.write(2, b"converter: what went wrong\n")
        raise RuntimeError("conversion failed")
    assert "converter: what went wrong" in capfd.readouterr().err


def test_captured_stderr_passes_through_when_verbose(capfd, monkeypatch):
    monkeypatch.setenv("CBNET_TL_VERBOSE", "1")
    with captured_stderr() as captured:
        os.write(2, b"fully_quantize: 0\n")
    assert captured.text == ""
    assert "fully_quantize: 0" in capfd.readouterr().err


@pytest.mark.tf
def test_help_offers_verbose():
    result = subprocess.run(cli() + ["--help"], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--verbose" in result.stdout


# The app as `cbnet-tl` runs it, reporting at exit what its --verbose option set for the libraries.
OPTIONS = """
import atexit, os, sys
from cbnet_tl.toolchain.cli import app
atexit.register(lambda: print("env:", os.environ.get("CBNET_TL_VERBOSE"), os.environ.get("TF_CPP_MIN_LOG_LEVEL")))
app(sys.argv[1:])
"""


@pytest.mark.tf
@pytest.mark.parametrize("flags, expected", [([], "env: 0 3"), (["--verbose"], "env: 1 0")])
def test_verbose_option_reaches_the_libraries(flags, expected):
    model = Path(__file__).parent / "data" / "edgetpu-models" / "split_concat.tflite"
    result = subprocess.run([sys.executable, "-c", OPTIONS, *flags, "inspect", str(model), "--json"],
                            capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == expected


# What `cbnet-tl` does before a command (configure), then TensorFlow's import, a retracing tf.function and an
# int8 conversion through the product's to_tflite.
CONVERT = """
import sys
import numpy as np
from cbnet_tl.toolchain.quiet import configure
configure(verbose=sys.argv[1] == "verbose")
import tensorflow as tf
from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
double = tf.function(lambda x: x * 2)
for n in range(1, 8):
    double(tf.zeros((n,)))
inputs = tf.keras.Input((4,))
model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(inputs))
data = np.random.default_rng(0).random((8, 4), dtype=np.float32)
print("tflite bytes:", len(to_tflite(model, Precision.INT8, data)))
"""


def run_conversion(mode: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", CONVERT, mode], capture_output=True, text=True, env=clean_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tflite bytes:" in result.stdout
    return result


@pytest.mark.tf
def test_tensorflow_import_and_conversion_are_quiet_and_verbose_brings_the_logs_back():
    quiet = run_conversion("quiet")
    assert library_lines(quiet.stdout + quiet.stderr) == []
    assert quiet.stderr.strip() == ""

    verbose = run_conversion("verbose")
    shown = {line.split(":")[0] for line in library_lines(verbose.stderr)}
    assert {"converter", "retracing"} <= shown, verbose.stderr[-3000:]


@pytest.mark.tf
@pytest.mark.slow
def test_cli_build_prints_only_our_lines(mnist_dir, tmp_path):
    """A tiny real `cbnet-tl build` (≈1 min): our lines and nothing from the libraries."""
    result = subprocess.run(
        cli() + ["build", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "build"),
                 "--recipe", "paper", "--max-train-images", "50", "--blenet-epochs", "1", "--autoencoder-epochs", "1",
                 "--steps", "10", "--calibration-samples", "5", "--max-accuracy-drop", "100", "--no-report"],
        capture_output=True, text=True, env=clean_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert library_lines(result.stdout + result.stderr) == []
    assert "bundle:" in result.stdout


@pytest.mark.tf  # runs the cbnet-tl CLI (typer) in a child process
def test_runtime_commands_keep_the_interpreter_info_line_off_unless_verbose(tiny_build, mnist_dir):
    """`eval` loads interpreters, whose C++ INFO line the CLI keeps off the terminal; --verbose shows it."""
    quiet = subprocess.run(cli() + ["eval", str(tiny_build), "--data-dir", str(mnist_dir), "--limit", "5",
                                    "--pipeline", "lenet"],
                           capture_output=True, text=True, env=clean_env(), timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert library_lines(quiet.stdout + quiet.stderr) == [] and "lenet" in quiet.stdout
    loud = subprocess.run(cli() + ["--verbose", "eval", str(tiny_build), "--data-dir", str(mnist_dir), "--limit",
                                   "5", "--pipeline", "lenet"],
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert "Created TensorFlow Lite XNNPACK delegate" in loud.stderr
