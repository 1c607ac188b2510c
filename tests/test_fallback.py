"""cbnet-fallback: the threshold comes from validation data; low-confidence images go to LeNet."""

from __future__ import annotations

import json

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.images import load_images
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.pipelines import CONFIDENCE_THRESHOLD, Pipeline
from cbnet_tl.toolchain.fallback import choose_threshold


def test_threshold_is_the_cheapest_that_reaches_lenet():
    rng = np.random.default_rng(0)
    n = 2000
    confidences = rng.random(n)
    cbnet_ok = rng.random(n) < 0.5 + 0.5 * confidences  # cbnet is right more often when it is sure
    lenet_ok = rng.random(n) < 0.85
    chosen = choose_threshold(confidences, cbnet_ok, lenet_ok, margin_se=0.0)
    k = round(chosen["validation_fallback_share"] * n)
    unsure = confidences < chosen[CONFIDENCE_THRESHOLD]
    assert unsure.sum() == k
    assert np.mean(np.where(unsure, lenet_ok, cbnet_ok)) == chosen["validation_accuracy"] >= lenet_ok.mean()
    # one image fewer to LeNet would not reach LeNet's accuracy
    order = np.argsort(confidences)
    fewer = np.zeros(n, bool)
    fewer[order[: k - 1]] = True
    assert np.mean(np.where(fewer, lenet_ok, cbnet_ok)) < lenet_ok.mean()
    # a margin of standard errors asks for more: never less LeNet work
    assert choose_threshold(confidences, cbnet_ok, lenet_ok)["validation_fallback_share"] >= k / n
    # a cbnet that is always right needs no fallback at all; one always wrong gives the best it can
    assert choose_threshold(confidences, np.ones(n, bool), lenet_ok)["validation_fallback_share"] == 0.0
    worst = choose_threshold(confidences, np.zeros(n, bool), lenet_ok)
    assert worst["validation_fallback_share"] == 1.0 and worst["validation_accuracy"] == lenet_ok.mean()


def test_threshold_in_the_manifest_comes_from_the_validation_split(tiny_build, mnist_dir):
    from cbnet_tl.toolchain.evaluation import load_train_split
    from cbnet_tl.toolchain.fallback import fallback_options

    options = read_manifest(tiny_build).pipelines["cbnet-fallback"].options
    record = json.loads((tiny_build / "train.json").read_text())
    validation = np.asarray(record["validation_indices"])
    assert options["num_validation"] == len(validation) == record["num_held_out"] > 0
    train, _ = load_train_split(tiny_build, mnist_dir)
    assert fallback_options(tiny_build, train.images[validation], train.labels[validation]) == options


def test_fallback_sends_unsure_images_to_lenet(tiny_bundle, samples_dir):
    images = load_images(sorted(samples_dir.glob("mnist_*.png")), read_manifest(tiny_bundle).input_spec)
    bundle = load_bundle(tiny_bundle, models=["cbnet", "lenet"])
    cbnet, lenet = (Pipeline(bundle, name).classify(images) for name in ("cbnet", "lenet"))
    never = Pipeline(bundle, "cbnet-fallback", options={CONFIDENCE_THRESHOLD: 0.0}).classify(images)
    always = Pipeline(bundle, "cbnet-fallback", options={CONFIDENCE_THRESHOLD: 1.01}).classify(images)
    assert set(never.paths) == {"cbnet"} and np.array_equal(never.labels, cbnet.labels)
    assert set(always.paths) == {"cbnet+lenet"} and np.array_equal(always.labels, lenet.labels)
    middle = float(np.median(cbnet.confidences))
    mixed = Pipeline(bundle, "cbnet-fallback", options={CONFIDENCE_THRESHOLD: middle}).classify(images)
    unsure = cbnet.confidences < middle
    assert [p == "cbnet+lenet" for p in mixed.paths] == unsure.tolist()
    assert np.array_equal(mixed.labels, np.where(unsure, lenet.labels, cbnet.labels))
