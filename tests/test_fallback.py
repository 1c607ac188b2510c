"""cbnet-fallback: the threshold comes from validation data; low-confidence images go to LeNet."""

from __future__ import annotations

import json

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.images import load_images
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import CONFIDENCE_THRESHOLD, EVERY_IMAGE_GOES_ON
from cbnet_tl.toolchain.training.fallback import choose_threshold


def _accuracy(confidences, threshold, cbnet_ok, lenet_ok):
    unsure = confidences < threshold
    return np.mean(np.where(unsure, lenet_ok, cbnet_ok)), unsure.mean()


def test_threshold_is_the_most_accurate_within_the_share_cap():
    rng = np.random.default_rng(0)
    n = 2000
    confidences = rng.random(n)
    cbnet_ok = rng.random(n) < 0.5 + 0.5 * confidences  # cbnet is right more often when it is sure
    lenet_ok = rng.random(n) < 0.85
    order = np.argsort(confidences)
    for cap in (0.0, 0.04, 0.2, 1.0):
        chosen = choose_threshold(confidences, cbnet_ok, lenet_ok, max_share=cap)
        accuracy, share = _accuracy(confidences, chosen[CONFIDENCE_THRESHOLD], cbnet_ok, lenet_ok)
        assert accuracy == chosen["validation_accuracy"] and share == chosen["validation_fallback_share"] <= cap
        # brute force over every cut the cap allows: none is more accurate; among as accurate ones, the most LeNet
        # work when LeNet is right on more of the images than cbnet (here it is: 85% against about 75%), else the least
        cuts = [np.mean(np.where(np.isin(np.arange(n), order[:k]), lenet_ok, cbnet_ok)) for k in range(int(cap * n) + 1)]
        best = [k for k, c in enumerate(cuts) if c == max(cuts)]
        assert lenet_ok.sum() > cbnet_ok.sum()
        assert accuracy == max(cuts) and round(share * n) == best[-1]
    # cbnet wrong on its least confident fifth: a wider cap buys accuracy, a zero cap sends nothing
    cbnet_ok = confidences > 0.2
    lenet_ok = np.ones(n, bool)
    never = choose_threshold(confidences, cbnet_ok, lenet_ok, max_share=0.0)
    assert never["validation_fallback_share"] == 0.0 and never[CONFIDENCE_THRESHOLD] == 0.0  # none, on new images too
    wide = choose_threshold(confidences, cbnet_ok, lenet_ok, max_share=0.5)
    # LeNet is right on every image: beyond the unsure fifth the ties go to it, up to the cap
    assert wide["validation_accuracy"] == 1.0 and wide["validation_fallback_share"] == 0.5
    # a cbnet that is always right needs no fallback at all, whatever the cap
    assert choose_threshold(confidences, np.ones(n, bool), lenet_ok, max_share=1.0)["validation_fallback_share"] == 0.0


def test_share_cap_is_checked():
    import pytest

    from cbnet_tl.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="between 0 and 1"):
        choose_threshold(np.ones(3), np.ones(3, bool), np.ones(3, bool), max_share=1.5)


def measured_on(bundle, images, truth, options) -> None:
    """cbnet-fallback's ``options`` checked against the runtime on labelled held-out images: every figure measured
    again (cbnet, LeNet and the pipeline at the chosen threshold, each run by itself), and every threshold the cap
    allows tried, by brute force: none more accurate; among as accurate ones, none with less LeNet work (LeNet is
    not the more accurate network on these images; the test says so), so the cap's tie rule is the least work."""
    cbnet = Pipeline(bundle, "cbnet").classify(images)
    cbnet_ok = cbnet.labels == truth
    lenet_ok = Pipeline(bundle, "lenet").classify(images).labels == truth
    chosen = Pipeline(bundle, "cbnet-fallback", options={CONFIDENCE_THRESHOLD: options[CONFIDENCE_THRESHOLD]})
    result = chosen.classify(images)
    share = np.mean([path == "cbnet+lenet" for path in result.paths])
    assert options["num_validation"] == len(truth) > 0
    assert options["validation_cbnet_accuracy"] == cbnet_ok.mean()
    assert options["validation_lenet_accuracy"] == lenet_ok.mean()
    assert options["validation_accuracy"] == np.mean(result.labels == truth)
    assert options["validation_fallback_share"] == share <= options["max_fallback_share"]
    assert lenet_ok.sum() <= cbnet_ok.sum()
    for threshold in np.unique(np.concatenate([[0.0], cbnet.confidences, [EVERY_IMAGE_GOES_ON]])):
        sent = cbnet.confidences < threshold
        if sent.mean() <= options["max_fallback_share"]:
            accuracy = np.mean(np.where(sent, lenet_ok, cbnet_ok))
            assert accuracy < options["validation_accuracy"] or (accuracy == options["validation_accuracy"]
                                                                 and sent.mean() >= share), threshold


def test_threshold_in_the_manifest_comes_from_the_validation_split(tiny_build, mnist_dir):
    """The held-out images train.json names, and no others: the options the build wrote and the ones chosen now
    both measure as they say on them."""
    from cbnet_tl.toolchain.analysis.evaluation import load_train_split
    from cbnet_tl.toolchain.training.fallback import fallback_options

    options = read_manifest(tiny_build).pipelines["cbnet-fallback"].options
    record = json.loads((tiny_build / "train.json").read_text())
    validation = np.asarray(record["validation_indices"])
    assert len(validation) == record["num_held_out"]
    train, _ = load_train_split(tiny_build, mnist_dir)
    images, truth = train.images[validation], train.labels[validation]
    bundle = load_bundle(tiny_build, models=["cbnet", "lenet"])
    measured_on(bundle, images, truth, options)
    measured_on(bundle, images, truth, fallback_options(tiny_build, images, truth))


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
