"""The input spec and the one pre-processing function (runtime only: numpy and Pillow)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

import edge_images
from cbnet_tl.runtime.errors import ConfigError, ImageError
from cbnet_tl.runtime.images import decode, header, load_image
from cbnet_tl.runtime.preprocess import InputSpec, resize, to_model_input, to_model_inputs


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge")
    return {path.name: path for path in edge_images.make_all(folder)}


def test_spec_round_trips_and_refuses_bad_values():
    spec = InputSpec(24, 40, 3, "crop", "black", "box")
    assert spec.background == "#000000"
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["channels"] == 3 and spec.shape == (24, 40, 3)
    with pytest.raises(ConfigError, match="1 \\(grayscale\\) or 3 \\(RGB\\)"):
        InputSpec(32, 32, 4)
    with pytest.raises(ConfigError, match="resize in"):
        InputSpec(32, 32, 3, "stretch")
    with pytest.raises(ConfigError, match="Expected a colour"):
        InputSpec(32, 32, 3, background="blurple")
    with pytest.raises(ConfigError, match="lacks 'resample'"):
        InputSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "resample"})


def test_resize_is_the_antialiased_filter_pillow_also_implements():
    """Our integer resize agrees with Pillow's bilinear within one level (a wrong weight or offset would not)."""
    rng = np.random.default_rng(1)
    for source, size in (((130, 97, 3), (32, 32)), ((20, 28, 1), (56, 41)), ((301, 7, 1), (9, 16))):
        pixels = rng.integers(0, 256, source, dtype=np.uint8)
        ours = resize(pixels, *size, "bilinear").astype(int)
        theirs = np.asarray(Image.fromarray(pixels.squeeze(-1) if source[-1] == 1 else pixels)
                            .resize(size[::-1], Image.BILINEAR)).astype(int).reshape(ours.shape)
        assert np.abs(ours - theirs).max() <= 1
        assert np.abs(ours - theirs).mean() < 0.3


def test_resize_is_exact_on_flat_images_and_identity_at_the_same_size():
    flat = np.full((97, 61, 3), 173, np.uint8)
    for kind in ("bilinear", "box"):
        assert (resize(flat, 13, 200, kind) == 173).all()
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16, 1), dtype=np.uint8)
    assert resize(pixels, 16, 16, "bilinear") is pixels


def test_a_stack_gives_the_bytes_of_each_image_alone():
    stack = np.random.default_rng(3).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    for spec in (InputSpec(56, 56, 3, "squash"), InputSpec(20, 36, 1, "pad", "#204060"), InputSpec(40, 16, 3, "crop")):
        together = to_model_inputs(stack, spec)
        assert together.shape == (7, *spec.shape)
        assert all(np.array_equal(together[i], to_model_input(stack[i], spec)) for i in range(7))


def test_resize_modes_crop_pad_and_squash_a_wide_image():
    wide = np.full((40, 80, 1), 255, np.uint8)
    wide[:, :20] = 0
    wide[:, 60:] = 0  # black quarters at both ends
    crop = to_model_input(wide, InputSpec(32, 32, 1, "crop"))
    assert (crop == 255).all()  # the middle square only
    pad = to_model_input(wide, InputSpec(32, 32, 1, "pad", "#808080"))
    assert (pad[:8] == 128).all() and (pad[-8:] == 128).all()  # letterbox bars in the background's gray
    assert pad[8:24, 0].max() == 0 and pad[16, 16] == 255
    squash = to_model_input(wide, InputSpec(32, 32, 1, "squash"))
    assert squash[:, 0].max() == 0 and squash[:, -1].max() == 0 and squash[16, 16] == 255


def test_exif_rotation_is_applied(edge):
    pixels, alpha = decode(edge["exif.jpg"])
    assert pixels.shape == (60, 40, 3) and alpha is None  # 60x40 landscape shown rotated: 40 wide, 60 high
    top, bottom = pixels[:20].reshape(-1, 3).mean(0), pixels[-20:].reshape(-1, 3).mean(0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # the left (red) half is now on top


def _input(path, spec):
    pixels, alpha = decode(path)
    return to_model_input(pixels, spec, alpha)


def test_transparency_is_composited_onto_the_background(edge):
    white = _input(edge["rgba.png"], InputSpec(30, 50, 3, "squash"))
    assert tuple(white[0, 0]) == (255, 255, 255) and tuple(white[10, 10]) == (0, 255, 0)
    assert tuple(white[10, 35]) == (255, 127, 127)  # half-transparent red over white, rounded
    black = _input(edge["rgba.png"], InputSpec(30, 50, 3, "squash", "black"))
    assert tuple(black[0, 0]) == (0, 0, 0) and tuple(black[10, 35]) == (128, 0, 0)
    palette = _input(edge["palette.png"], InputSpec(36, 24, 3, "squash", "#0000ff"))
    assert tuple(palette[0, 0]) == (0, 0, 255) and tuple(palette[8, 6]) == (250, 200, 0)
    la = _input(edge["la.png"], InputSpec(20, 40, 1, "squash"))
    assert la[0, 0] == 255 and la[0, 39] == 255  # transparent, opaque white
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1))
    assert la[0, 12] == (int(gray[0, 12]) * 128 + 255 * 127 + 127) // 255


def test_sixteen_bit_cmyk_and_bilevel_modes(edge):
    sixteen = load_image(edge["gray16.png"], InputSpec(48, 64, 1, "squash"))
    assert sixteen[0, 0, 0] == 0 and sixteen[0, -1, 0] == 255 and 120 <= sixteen[0, 32, 0] <= 135
    cmyk = load_image(edge["cmyk.tif"], InputSpec(20, 20, 3, "squash"))
    assert [tuple(cmyk[r, c]) for r, c in ((0, 0), (0, 19), (19, 0), (19, 19))] == [
        (0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]
    bilevel = load_image(edge["bilevel.png"], InputSpec(30, 30, 1, "squash"))
    assert set(np.unique(bilevel)) == {0, 255}
    gray = load_image(edge["cmyk.tif"], InputSpec(20, 20, 1, "squash"))
    assert gray[0, 0, 0] == (255 * 38470 + 255 * 7471 + 32768) >> 16  # ITU-R 601-2 luma of cyan


def test_header_says_which_images_hold_colour(edge):
    assert header(edge["la.png"])[3] is False and header(edge["gray16.png"])[3] is False
    assert header(edge["rgba.png"])[3] is True and header(edge["palette.png"])[3] is True


def test_unreadable_and_oversized_files_are_one_line_errors(tmp_path, edge):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(edge["exif.jpg"].read_bytes()[:600])
    spec = InputSpec(16, 16, 3)
    for name, message in (("empty.png", "empty file"), ("text.png", "not an image Pillow can read"),
                          ("truncated.png", "truncated"), ("missing.png", "no such file")):
        with pytest.raises(ImageError, match=message):
            load_image(tmp_path / name, spec)
    with pytest.raises(ImageError, match="over the pixel limit of 1,000"):
        load_image(edge["rgba.png"], spec, max_pixels=1000)


# The bytes of the model input for fixed images: a change here changes what deployed bundles see for the
# same file (their models were trained on the old bytes), so it must be deliberate.
GOLDEN = {
    "crop": "3c2602d933a37a86fd00fe211e96998644410d90c4e81a4ed7803b6aa67b7199", "squash": "17935c3b9a1711719c8fda500bbac438f50ece640bd4f1f435bebb63e20fbfdd", "pad": "e5cbe6af72dd080263360185f56dadb095ef1f6092eba25b0045c8db8fe02f2c",
}


@pytest.mark.parametrize("mode", sorted(GOLDEN))
def test_model_input_bytes_are_pinned(edge, mode):
    digest = hashlib.sha256()
    for name in sorted(edge):
        for spec in (InputSpec(32, 24, 3, mode), InputSpec(17, 33, 1, mode, "#336699", "box")):
            digest.update(load_image(edge[name], spec).tobytes())
    assert digest.hexdigest() == GOLDEN[mode]
