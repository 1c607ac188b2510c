"""Training on few images (README 'Few images'): step-counted schedules, balanced classes, the augmentation's fill,
the convolutional fast recipe at small input sizes, and a real training run that takes that regime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cbnet_tl.toolchain.training import schedule


def test_a_schedule_counts_optimizer_steps_not_epochs():
    # 456 images at batch 32 are 15 steps an epoch: 3,000 steps take 200 epochs; 6,400 images one epoch's worth
    assert schedule.epochs_for_steps(456, 32, 3000) == 200
    assert schedule.epochs_for_steps(456, 32, 3001) == 201  # at least the steps asked for
    assert schedule.epochs_for_steps(40, 32, 10) == 5
    assert schedule.epochs_for_steps(10_000, 32, 10) == 1


def test_the_regime_starts_below_its_threshold_only():
    assert schedule.few_images(schedule.FEW_IMAGES - 1)
    assert not schedule.few_images(schedule.FEW_IMAGES)
    assert not schedule.few_images(60_000)  # Fashion-MNIST keeps its epoch schedule


def test_balanced_weights_give_every_class_the_same_total():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    weights = schedule.class_balance_weights(labels, 3)
    totals = [weights[labels == c].sum() for c in range(3)]
    assert np.allclose(totals, totals[0]) and np.isclose(weights.mean(), 1.0)
    assert weights.dtype == np.float32
    # a class absent from the images does not divide by zero
    assert np.all(np.isfinite(schedule.class_balance_weights(np.array([0, 0, 1]), 4)))


def test_the_fill_is_the_border_colour_of_the_images():
    drawings = np.full((5, 16, 16, 3), 255, np.uint8)
    drawings[:, 4:12, 4:12] = 0  # a dark object on white
    digits = np.zeros((5, 16, 16, 1), np.uint8)
    digits[:, 4:12, 4:12] = 255
    assert schedule.fill_value(drawings) == 255.0 and schedule.fill_value(digits) == 0.0
    assert schedule.colour(drawings) and not schedule.colour(digits)


@pytest.mark.tf
def test_augmentation_flips_colour_images_only():
    names = lambda images: [layer.name for layer in schedule.augmentation_layers(images, 1.0, seed=0)]  # noqa: E731
    colour, grey = names(np.zeros((2, 8, 8, 3), np.uint8)), names(np.zeros((2, 8, 8, 1), np.uint8))
    assert "augment_flip" in colour and "augment_brightness" in colour
    assert "augment_flip" not in grey and "augment_brightness" not in grey and "augment_shift" in grey


@pytest.mark.tf
def test_the_few_image_recipe_is_convolutional_at_any_size_and_its_int8_graph_takes_any_batch(tmp_path):
    """32x32 RGB with few images: the convolutional AE and classifier (the dense ones stay dense there otherwise);
    the trained models' architecture is read back as convolutional, and the fused int8 graph runs at batch 1 and
    at batch 5 through the runtime (a reshape fixed at batch 1 failed when the interpreter resized the batch)."""
    from cbnet_tl.recipes import fast
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.runtime.interpreter import Model
    from cbnet_tl.toolchain.conversion.convert import Precision, to_tflite
    from tests.test_recipes import randomize

    base = dataclasses.replace(fast.SIZES["default"], num_classes=4, input_shape=(32, 32, 3))
    assert not base.convolutional
    config = fast.few_images(base, flip=True, colour_jitter=0.2, fill_value=255.0, joint_epochs=3, conv=True)
    assert not fast.few_images(base, flip=False, colour_jitter=0.0, fill_value=0.0, joint_epochs=3,
                               conv=False).convolutional
    assert config.convolutional and config.balance_classes and config.batch_size == 32
    assert config.shift_pixels == 3 and config.joint_epochs == 3 and config.ae_epochs == 0
    ae, classifier = randomize(fast.build_autoencoder(config)), randomize(fast.build_classifier(config))
    assert fast._config_of(ae, classifier).convolutional
    assert not fast._config_of(*(randomize(fast.build_autoencoder(base)), randomize(fast.build_classifier(base)))).convolutional
    pixels = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "cbnet.tflite"
    write_bytes_atomic(path, to_tflite(fast.build_fused(ae, classifier), Precision.INT8, pixels, "uint8"))
    model = Model(path)
    images = pixels[:5].astype(np.uint8)
    one_by_one = np.concatenate([model(images[i : i + 1])[0] for i in range(5)])
    together = model(images)[0]
    assert together.shape == (5, 4) and np.array_equal(one_by_one, together)


@pytest.mark.tf
def test_training_on_few_images_counts_steps_and_holds_out_every_validation_image(tmp_path):
    """A real train_all on 80 images: the few-image regime, B-LeNet run for the epochs that make the steps asked
    for (the --blenet-epochs schedule does not apply), the fast recipe convolutional with balanced classes, and
    every validation image held out (none stops training, none trains)."""
    from cbnet_tl.toolchain.ingest.datasets import Dataset
    from cbnet_tl.toolchain.training.train import TrainConfig, train_all

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    images = rng.integers(0, 60, (80, 12, 12, 3)).astype(np.uint8)
    for c in range(4):  # a bright square whose place tells the class
        images[labels == c, 3 * c : 3 * c + 4, 2:8] = 255
    train = Dataset("squares", images, labels, ("a", "b", "c", "d"), "test")
    record = train_all(train, tmp_path, 0.5, TrainConfig(progress=False, few_image_steps=12, blenet_epochs=50))
    assert record["schedule"] == "few images"
    num_fit = record["num_train"]
    assert num_fit + record["num_validation"] == 80 and record["num_validation"] == 16  # 20% held out
    assert record["validation_indices"] and len(record["validation_indices"]) == record["num_validation"]
    assert record["blenet"]["epochs_run"] == schedule.epochs_for_steps(num_fit, schedule.BATCH_SIZE, 12)
    fast_config = record["fast"]["config"]
    assert fast_config["conv"] and fast_config["balance_classes"] and fast_config["flip"]
    assert fast_config["joint_epochs"] == schedule.epochs_for_steps(num_fit, schedule.BATCH_SIZE,
                                                                    12 * schedule.FAST_STEP_FACTOR)
    assert fast_config["fill_value"] == float(np.median(np.concatenate(
        [images[:, 0].ravel(), images[:, -1].ravel(), images[:, :, 0].ravel(), images[:, :, -1].ravel()])))
