"""Folders a user actually has (issue 28, item 4): one unreadable file among many gives its own error entry and the
others their labels, through `cbnet-tl run` and the bundle's `run.py classify` as a user types them; Pillow's own
warnings never reach the output; a build says each class's training images and warns about imbalance and classes
too small to learn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import stamps_folder
from cbnet_tl.runtime.cli import main
from cbnet_tl.runtime.errors import ImageError
from cbnet_tl.runtime.images import header, load_image
from cbnet_tl.runtime.preprocess import InputSpec
from cbnet_tl.toolchain.cli import app
from cbnet_tl.toolchain.ingest.datasets import MIN_TRAIN_PER_CLASS, load_build_data
from cbnet_tl.toolchain.ingest.inputs import InputChoice
from test_cpufreq import make_tree, snapshot
from test_watch import write_bomb

PILLOW_TEXT = ("DecompressionBombWarning", "decompression bomb DOS", "warnings.warn", "PIL/", "Traceback")
BAD = {"corrupt.png": "not an image Pillow can read, or truncated",
       "huge.png": "over the pixel limit of 64,000,000 (--max-pixels): 12000x12000 is 144,000,000 pixels"}


@pytest.fixture(scope="module")
def mixed_folder(samples_dir, tmp_path_factory):
    """Six real MNIST samples, a PNG cut short, and a real 12000x12000 PNG (1-bit, 18 KB on disk): over our limit
    and over Pillow's warning limit (about 89 MP), under its error limit."""
    folder = tmp_path_factory.mktemp("mixed") / "inputs"
    folder.mkdir()
    for sample in sorted(samples_dir.glob("mnist_*.png"))[:6]:
        shutil.copy(sample, folder / sample.name)
    (folder / "corrupt.png").write_bytes((samples_dir / "mnist_00_7.png").read_bytes()[:90])
    write_bomb(folder / "huge.png", 12000, 12000)
    return folder


def _check_entries(results: list, folder) -> dict:
    """Every file has its entry, in file order; the bad ones only ``file`` and ``error``. {file name: label}."""
    names = sorted(p.name for p in folder.iterdir())
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == names
    labels = {}
    for record in results:
        name = record["file"].rsplit("/", 1)[-1]
        if name in BAD:
            assert set(record) == {"file", "error"} and BAD[name] in record["error"], record
        else:
            assert record["class_name"] == str(record["label"]) and 0 < record["confidence"] <= 1, record
            labels[name] = record["label"]
    assert len(labels) == 6
    return labels


def test_pillow_warnings_and_errors_become_our_one_line(tmp_path, monkeypatch):
    write_bomb(tmp_path / "huge.png", 12000, 12000)  # Pillow warns on opening this (over 89 MP)
    write_bomb(tmp_path / "bomb.png")  # 400 MP: Pillow refuses it with its DecompressionBombError
    spec = InputSpec(8, 8, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=r"huge.png: over the pixel limit of 64,000,000 \(--max-pixels\): "
                                             r"12000x12000 is 144,000,000 pixels; refused before decoding$"):
            load_image(tmp_path / "huge.png", spec)
        with pytest.raises(ImageError, match="huge.png: over the pixel limit of 64,000,000"):
            header(tmp_path / "huge.png")
        with pytest.raises(ImageError, match=r"bomb.png: over the pixel limit of 64,000,000 \(--max-pixels\): "
                                             r"400,000,000 pixels; refused before decoding$"):
            load_image(tmp_path / "bomb.png", spec)
        with pytest.raises(ImageError, match="over Pillow's decompression-bomb limit of 178,956,970 pixels: "
                                             "400,000,000 pixels"):
            load_image(tmp_path / "bomb.png", spec, max_pixels=10**9)  # above Pillow's limit: Pillow's is the one
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a small real image in Pillow's warning zone, read
        Image.fromarray(np.full((12, 15), 200, np.uint8)).save(tmp_path / "small.png")
        assert load_image(tmp_path / "small.png", spec, max_pixels=10**6).shape == (8, 8, 1)
    assert [str(w.message) for w in caught] == []


def test_cbnet_tl_run_classifies_every_readable_file(tiny_bundle, mixed_folder, tmp_path):
    runner = CliRunner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["run", str(tiny_bundle), str(mixed_folder), "--json"])
    assert result.exit_code == 1, result.output
    assert [str(w.message) for w in caught] == []
    labels = _check_entries(json.loads(result.stdout)["results"], mixed_folder)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 of 8 files unreadable, each with its error entry; the first: "
        f"{mixed_folder / 'corrupt.png'}: {json.loads(result.stdout)['results'][0]['error']}")
    table = runner.invoke(app, ["run", str(tiny_bundle), str(mixed_folder), "--convert-image", str(tmp_path / "ae")])
    assert table.exit_code == 1
    rows = [line for line in table.stdout.splitlines() if line.startswith(str(mixed_folder))]
    assert len(rows) == 8 and sorted(p.name for p in (tmp_path / "ae").iterdir()) == sorted(
        f"{name}.png" for name in labels)  # the AE's view of every readable file, and only those
    assert rows[1] == f"{mixed_folder / 'huge.png'}\terror: {BAD['huge.png']}; refused before decoding"
    assert not any(text in table.output for text in PILLOW_TEXT)
    single = runner.invoke(app, ["run", str(tiny_bundle), str(mixed_folder / "huge.png"), "--json",
                                 "--max-pixels", "1000"])
    assert single.exit_code == 1 and json.loads(single.stdout)["results"] == [
        {"file": str(mixed_folder / "huge.png"), "error": "over the pixel limit of 1,000 (--max-pixels): "
                                                          "12000x12000 is 144,000,000 pixels; refused before decoding"}]


def _run_py(bundle, *args):
    """``run.py`` as a user runs it, in a new interpreter with the default warning filters."""
    return subprocess.run([sys.executable, str(bundle / "run.py"), "classify", *map(str, args)],
                          capture_output=True, text=True, cwd="/")


def test_run_py_classify_gives_every_file_its_entry_at_any_batch_size(tiny_bundle, mixed_folder):
    one = _run_py(tiny_bundle, mixed_folder, "--json")
    assert one.returncode == 1, one.stderr
    assert not any(text in one.stderr for text in PILLOW_TEXT), one.stderr
    assert one.stderr.strip().splitlines()[-1].startswith(
        f"error: 2 of 8 files unreadable, each with its error entry; the first: {mixed_folder / 'corrupt.png'}: ")
    labels = _check_entries(json.loads(one.stdout)["results"], mixed_folder)
    batched = _run_py(tiny_bundle, mixed_folder, "--json", "--batch-size", "4")  # bad files left out of batches
    assert batched.returncode == 1 and _check_entries(json.loads(batched.stdout)["results"], mixed_folder) == labels
    table = _run_py(tiny_bundle, mixed_folder / "corrupt.png", mixed_folder / "mnist_00_7.png")
    assert table.returncode == 1 and not any(text in table.stderr for text in PILLOW_TEXT), table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].startswith(f"{mixed_folder / 'corrupt.png'}\terror: {BAD['corrupt.png']}")
    assert rows[1].startswith(f"{mixed_folder / 'mnist_00_7.png'}\t") and rows[1].endswith(" ms") and len(rows) == 2
    single = _run_py(tiny_bundle, mixed_folder / "corrupt.png", "--json")
    assert single.returncode == 1 and [set(r) for r in json.loads(single.stdout)["results"]] == [{"file", "error"}]
    assert single.stderr.strip().splitlines()[-1].startswith(f"error: {mixed_folder / 'corrupt.png'}: not an image")


def test_batches_under_a_dvfs_policy_skip_unreadable_files(tiny_bundle, mixed_folder, tmp_path, capsys,
                                                           monkeypatch):
    """--batch-size with a DVFS session: the six readable files are six inferences in batches of 4 and 2; a file
    that cannot be opened (no permission, faked: the tests run as root) is one more entry."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    opened = Image.open
    secret = mixed_folder / "mnist_03_0.png"

    def open_unless_secret(path, *args, **kwargs):
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_unless_secret)
    code = main(["--bundle", str(tiny_bundle), "classify", str(mixed_folder), "--batch-size", "4", "--dvfs",
                 "performance", "--deadline-ms", "10000", "--sysfs-root", str(tmp_path / "sys"), "--json"])
    out = capsys.readouterr()
    assert code == 1
    payload = json.loads(out.out)
    errors = {r["file"].rsplit("/", 1)[-1]: r["error"] for r in payload["results"] if "error" in r}
    assert errors.keys() == {"corrupt.png", "huge.png", "mnist_03_0.png"}
    assert errors["mnist_03_0.png"] == "permission denied"
    assert payload["dvfs"]["num_inferences"] == 5 and payload["dvfs"]["num_batches"] == 2
    assert out.err.strip().splitlines()[-1].startswith("error: 3 of 8 files unreadable, each with its error entry")
    assert snapshot(tmp_path / "sys") == before


def test_class_counts_imbalance_and_classes_too_small_to_learn(tmp_path):
    data = stamps_folder(tmp_path / "data", per_class=32, classes=("animals/birds", "town/houses", "vehicles"))
    for folder, keep in (("houses", 8), ("vehicles", 20)):  # 80% for training: birds 26, houses 6, vehicles 16
        for extra in sorted((data / folder).iterdir())[keep:]:
            extra.unlink()
    (data / "vehicles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = []
    train, _, _, record = load_build_data("ignored", data, InputChoice(image_size=(8, 8)), log=lines.append)
    counts = {name: row["train"] for name, row in record["class_counts"].items()}
    assert list(counts) == ["birds", "houses", "vehicles"]  # class order
    assert counts == {name: int(np.sum(train.labels == label)) for label, name in enumerate(counts)}
    assert counts["birds"] == 26 and counts["houses"] == 6 and counts["vehicles"] in (16, 17)
    said = [line for line in lines if line.startswith(("classes", "warning"))]
    assert said == [
        f"classes (3), training images per class: birds 26, houses 6, vehicles {counts['vehicles']}; "
        "skipped 1 unreadable file(s)",
        "warning: the classes are imbalanced: birds has 26 training images, houses 6 (4.3x; expected at most 3x): "
        "a model then favours the larger classes; add images to the smaller ones",
        f"warning: too few training images to learn a class from: houses has 6; expected at least "
        f"{MIN_TRAIN_PER_CLASS} a class: add images to these classes",
    ]
    balanced = stamps_folder(tmp_path / "balanced", per_class=13, classes=("animals/birds", "town/houses"))
    lines.clear()
    load_build_data("ignored", balanced, InputChoice(image_size=(8, 8)), log=lines.append)
    assert [line for line in lines if line.startswith(("classes", "warning"))] == [
        "classes (2), training images per class: birds 10, houses 10"]
