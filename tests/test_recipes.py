"""Recipe shapes, and MAC counts read back from converted models."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def views():
    from cbnet_tl.recipes import blenet

    parts = blenet.make_layers(MNIST_SHAPE, 10)
    randomize(blenet.build_training_model(parts, MNIST_SHAPE))
    return blenet.build_views(parts, MNIST_SHAPE)


MNIST_SHAPE = (28, 28, 1)


def randomize(model):
    """Non-zero weights everywhere: the converter drops all-zero biases of fresh models."""
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def test_branchynet_shapes_follow_the_original(views):
    import keras

    from cbnet_tl.recipes import blenet

    parts = blenet.make_layers(MNIST_SHAPE, 10)
    image = keras.Input(MNIST_SHAPE, batch_size=1)
    x = image
    shapes = []
    for layer in parts.trunk + parts.main:
        x = layer(x)
        shapes.append(tuple(x.shape[1:3]))
    # conv1 30 → pool 15 → conv2 17 → pool 9 → conv3 11 → pool 6
    assert [s for s in shapes if len(s) == 2 and s[0] is not None][:9] == [
        (34, 34), (30, 30), (15, 15), (21, 21), (17, 17), (9, 9), (15, 15), (11, 11), (6, 6)]
    assert tuple(views["trunk_branch"].outputs[1].shape) == (1, 15, 15, 5)
    assert tuple(views["lenet"].outputs[0].shape) == (1, 10)


def test_autoencoder_shape():
    from cbnet_tl.recipes.autoencoder import build_autoencoder

    model = build_autoencoder(MNIST_SHAPE)
    out = model(np.zeros((3, 28, 28, 1), np.float32))
    assert tuple(out.shape) == (3, 28, 28, 1)
    rgb = build_autoencoder((20, 24, 3))(np.zeros((2, 20, 24, 3), np.float32))
    assert tuple(rgb.shape) == (2, 20, 24, 3)
    assert float(np.min(out)) >= 0.0 and float(np.max(out)) <= 1.0


def test_mac_counts_match_the_papers_figures(tmp_path, views):
    from cbnet_tl.recipes.autoencoder import build_autoencoder
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
    from cbnet_tl.toolchain.conversion.modelstats import count_macs_and_params

    def macs(model, name):
        path = tmp_path / f"{name}.tflite"
        write_bytes_atomic(path, to_tflite(model, Precision.FLOAT32))
        return count_macs_and_params(path)

    branch_macs, _ = macs(views["branch"], "branch")
    lenet_macs, lenet_params = macs(views["lenet"], "lenet")
    ae_macs, ae_params = macs(randomize(build_autoencoder(MNIST_SHAPE, batch_size=1)), "ae")
    assert branch_macs == 112_500 + 101_250 + 6_400          # ≈0.22 M (DESIGN §2)
    assert lenet_macs == 112_500 + 361_250 + 605_000 + 60_480 + 840  # ≈1.14 M
    assert ae_macs == 784 * 512 + 512 * 384 + 384 * 256 + 256 * 64 + 64 * 784  # ≈0.76 M
    # The linear code layer's bias folds into the decoder's bias in the converted graph.
    assert ae_params == ae_macs + 512 + 384 + 256 + 784
    assert lenet_params == 5 * 25 + 5 + 10 * 125 + 10 + 20 * 250 + 20 + 720 * 84 + 84 + 84 * 10 + 10


def test_layer_sizes_follow_the_input_spec(tmp_path):
    """At 32x32 RGB every flatten and the trunk come from the input: trunk 17, branch 9, main 6."""
    from cbnet_tl.recipes import blenet, fast
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
    from cbnet_tl.toolchain.conversion.modelstats import count_macs_and_params

    shape = (32, 32, 3)
    parts = blenet.make_layers(shape, 5)
    randomize(blenet.build_training_model(parts, shape))
    views = blenet.build_views(parts, shape)
    assert blenet.trunk_shape(shape) == (17, 17, 5)
    assert tuple(views["trunk_branch"].outputs[1].shape) == (1, 17, 17, 5)
    assert tuple(views["lenet"].outputs[0].shape) == (1, 5)
    path = tmp_path / "branch.tflite"
    write_bytes_atomic(path, to_tflite(views["branch"], Precision.FLOAT32))
    branch_macs, _ = count_macs_and_params(path)
    assert branch_macs == 34 * 34 * 5 * 75 + 17 * 17 * 10 * 45 + 9 * 9 * 10 * 5
    config = fast.FastConfig(num_classes=5, input_shape=shape)
    assert config.macs() == 3072 * 512 + 512 * 96 + 96 * 3072 + 3072 * 32 + 32 * 5
    assert not config.convolutional


def test_fast_config_defaults_are_the_default_size():
    """FastConfig() is the recipe's default size, SIZES["default"]: P→512→96→P and P→32→classes, 0.551 M MACs at
    the MNIST family's size (recipes/fast.py's table), no early stopping."""
    from dataclasses import replace

    from cbnet_tl.recipes import fast

    assert fast.FastConfig() == fast.SIZES["default"]
    mnist = replace(fast.FastConfig(), input_shape=MNIST_SHAPE)
    assert mnist.macs() == 784 * 512 + 512 * 96 + 96 * 784 + 784 * 32 + 32 * 10


def test_fast_recipe_turns_convolutional_above_the_dense_limit_and_maps_to_the_edge_tpu(tmp_path):
    """Above 64x64 RGB the fast AE is convolutional (UpSampling2D + Conv2D), its output the input's shape,
    its MACs as counted from the converted graph, and every op of the int8 graph maps to the Edge TPU."""
    from cbnet_tl.recipes import fast
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
    from cbnet_tl.toolchain.edgetpu.mapping import inspect_model
    from cbnet_tl.toolchain.conversion.modelstats import count_macs_and_params

    config = fast.FastConfig(num_classes=4, input_shape=(70, 90, 3), dropout=0.0)
    assert config.convolutional and fast.FastConfig(input_shape=(64, 64, 3)).convolutional is False
    ae, classifier = randomize(fast.build_autoencoder(config)), randomize(fast.build_classifier(config))
    assert tuple(ae(np.zeros((2, 70, 90, 3), np.float32)).shape) == (2, 70, 90, 3)
    fused = fast.build_fused(ae, classifier)
    assert fast._config_of(ae, classifier).convolutional
    pixels = np.random.default_rng(0).integers(0, 256, (20, 70, 90, 3)).astype(np.float32)
    pixels[0] = np.linspace(0, 255, 70 * 90 * 3).reshape(70, 90, 3)
    path = tmp_path / "conv_cbnet.tflite"
    write_bytes_atomic(path, to_tflite(fused, Precision.INT8, pixels, "uint8"))
    assert count_macs_and_params(path)[0] == config.macs()
    report = inspect_model(path)
    assert report["fully_mapped"], [(op["op_name"], op["reason"]) for op in report["ops"] if not op["on_edgetpu"]]


def test_fast_recipe_pools_inputs_above_the_dense_budget(tmp_path):
    """56x56 RGB (9,408 values) is pooled 2x2 before the dense layers: 2,352 values, so the light pipeline stays
    below LeNet's cost; the AE still gives an image of the input's shape (2x2 blocks of one value); the fused
    graph drops the up-sampling and the classifier's pooling (same logits), counts the MACs the config
    states, and maps fully to the Edge TPU. Inputs within the budget, or whose sides no small factor divides,
    are not pooled."""
    from cbnet_tl.recipes import fast
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
    from cbnet_tl.toolchain.edgetpu.mapping import inspect_model
    from cbnet_tl.toolchain.conversion.modelstats import count_macs_and_params

    assert [fast.FastConfig(input_shape=s).pool for s in (MNIST_SHAPE, (32, 32, 3), (61, 61, 3), (63, 63, 3))] \
        == [1, 1, 1, 3]
    config = fast.FastConfig(num_classes=4, input_shape=(56, 56, 3), dropout=0.0)
    assert (config.pool, config.pooled_shape) == (2, (28, 28, 3))
    values = 28 * 28 * 3
    assert config.macs() == values * 512 + 512 * 96 + 96 * values + values * 32 + 32 * 4
    ae, classifier = randomize(fast.build_autoencoder(config)), randomize(fast.build_classifier(config))
    pixels = np.random.default_rng(1).integers(0, 256, (20, 56, 56, 3)).astype(np.float32)
    converted = np.asarray(ae(pixels[:2]))
    assert converted.shape == (2, 56, 56, 3)
    assert np.array_equal(converted[:, ::2, ::2], converted[:, 1::2, 1::2])
    fused = fast.build_fused(ae, classifier, batch_size=None)
    np.testing.assert_allclose(np.asarray(fused(pixels[:2])), np.asarray(classifier(converted)), atol=1e-4)
    path = tmp_path / "pooled_cbnet.tflite"
    write_bytes_atomic(path, to_tflite(fast.build_fused(ae, classifier), Precision.INT8, pixels, "uint8"))
    assert count_macs_and_params(path)[0] == config.macs()
    report = inspect_model(path)
    assert report["fully_mapped"], [(op["op_name"], op["reason"]) for op in report["ops"] if not op["on_edgetpu"]]
    assert {op["op_name"] for op in report["ops"]} >= {"AVERAGE_POOL_2D", "FULLY_CONNECTED"}


def test_multiexit_shift_moves_training_images_only():
    """The random translation is in the training model and in no export view, and moves images only in training."""
    import keras

    from cbnet_tl.recipes.multiexit import MultiExitConfig, build_segments, build_training_model, make_layers

    config = MultiExitConfig(stage_channels=((4, 8), (8, 8), (8, 8)), head_units=16, shift_pixels=2)
    parts = make_layers(MNIST_SHAPE, config)
    model = build_training_model(parts)
    shift = model.get_layer("shift")
    images = np.zeros((64, *MNIST_SHAPE), np.float32)
    images[:, 14, 14, 0] = 1.0  # one bright pixel in the middle
    keras.utils.set_random_seed(0)
    moved = keras.ops.convert_to_numpy(shift(images, training=True))
    still = keras.ops.convert_to_numpy(shift(images, training=False))
    assert np.array_equal(still, images)
    where = [np.unravel_index(np.argmax(m[..., 0]), m.shape[:2]) for m in moved]
    offsets = {(int(r) - 14, int(c) - 14) for r, c in where}
    assert len(offsets) > 3 and all(abs(dr) <= 2 and abs(dc) <= 2 for dr, dc in offsets)
    for _, segment, _ in build_segments(parts):
        assert not any(isinstance(layer, keras.layers.RandomTranslation) for layer in segment.layers)
    with pytest.raises(ValueError, match="shift_pixels below half"):
        build_training_model(make_layers((4, 4, 1), MultiExitConfig(shift_pixels=2)))
    with pytest.raises(ValueError, match="shift_pixels >= 0"):
        MultiExitConfig(shift_pixels=-1)
