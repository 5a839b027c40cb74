"""Tests for common.images: every bad-input case of data.md, saving, listing.

Each case is a real file written in a temporary folder (by Pillow, or by hand where Pillow
cannot write the format). Images are 7 wide and 5 high, so a wrong orientation changes the
shape and values.
"""

import logging
import os
import pickle
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFile, features

from common import images
from common.images import (
    ImageLoadError,
    list_images,
    load_image,
    save_image,
    to_uint8,
    to_uint16,
)

H, W = 5, 7


def rgb_pattern() -> np.ndarray:
    """An (H, W, 3) uint8 image whose every value is distinct."""
    return (np.arange(H * W * 3).reshape(H, W, 3) * 2 + 1).astype(np.uint8)


def png_bytes(
    width: int, height: int, bit_depth: int, colour_type: int, rows: bytes, extra=()
) -> bytes:
    """A PNG file from raw scanlines (each row starting with its filter byte), with `extra`
    (kind, data) chunks before the image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(kind, data) for kind, data in extra)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def write_png16(path, samples: np.ndarray, colour_type: int) -> None:
    """Writes a 16-bit PNG by hand (independent of the writers under test)."""
    height, width = samples.shape[:2]
    big_endian = samples.astype(">u2").reshape(height, -1)
    rows = b"".join(b"\x00" + row.tobytes() for row in big_endian)
    path.write_bytes(png_bytes(width, height, 16, colour_type, rows))


def write_png_header_only(path, width: int, height: int) -> None:
    """A tiny 1-bit grey PNG claiming huge dimensions, with almost no pixel data."""
    path.write_bytes(png_bytes(width, height, 1, 0, b"\x00" * 64))


def stored(path) -> Image.Image:
    """The file as Pillow opens it (header only, file closed), to check the test's fixture."""
    with Image.open(path) as img:
        return img


def assert_rgb_float(image: np.ndarray, shape=(H, W, 3)) -> None:
    assert image.shape == shape
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def load_error(path, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kwargs)
    return info.value


# ---------------------------------------------------------------- conversions that happen


def test_rgb_png_loads_exactly(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb_pattern()).save(path)
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, rgb_pattern().astype(np.float32) / 255)


def test_grey_is_replicated_to_rgb(tmp_path):
    grey = rgb_pattern()[..., 0]
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    image = load_image(path)
    assert_rgb_float(image)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey / np.float32(255))


def test_one_bit_gives_zero_and_one(tmp_path):
    bits = np.eye(H, W, dtype=bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert stored(path).mode == "1"
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, np.repeat(bits[..., None], 3, -1).astype(np.float32))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_keeps_all_16_bits(tmp_path, suffix):
    # Odd values that are not multiples of 257: an 8-bit path would change them.
    grey16 = (np.arange(H * W).reshape(H, W) * 1811 + 3).astype(np.uint16)
    assert np.any(grey16 % 257)
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(grey16).save(path)
    assert stored(path).mode.startswith("I;16")
    image = load_image(path)
    assert_rgb_float(image)
    expected = grey16.astype(np.float32) / 65535
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], expected)


def test_32_bit_integer_grey_is_on_the_16_bit_scale_and_clipped(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[1000, 70000, -5]], np.int32)).save(path)
    assert stored(path).mode == "I"
    image = load_image(path)
    assert_rgb_float(image, (1, 3, 3))
    np.testing.assert_allclose(image[0, :, 0], [1000 / 65535, 1.0, 0.0], rtol=1e-6)


def test_float_tiff_is_clipped_grey(tmp_path):
    path = tmp_path / "float.tif"
    values = np.array([[-0.5, 0.25, 1.5, np.nan, 0.75]], np.float32)
    Image.fromarray(values).save(path)
    assert stored(path).mode == "F"
    image = load_image(path)
    assert_rgb_float(image, (1, 5, 3))
    np.testing.assert_array_equal(image[0, :, 1], [0.0, 0.25, 1.0, 0.0, 0.75])


def rgb16_pattern(channels: int = 3) -> np.ndarray:
    """An (H, W, channels) uint16 image whose values are not multiples of 257 (an 8-bit path
    would change them)."""
    values = np.arange(H * W * channels).reshape(H, W, channels) * 601 + 7
    values = (values % 65536).astype(np.uint16)
    assert np.mean(values % 257 != 0) > 0.9
    return values


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (6, 4), (4, 2)])
def test_16_bit_colour_png_keeps_all_16_bits(tmp_path, caplog, colour_type, channels):
    # RGB, RGBA (alpha dropped) and grey + alpha (grey replicated, alpha dropped).
    samples = rgb16_pattern(channels)
    path = tmp_path / "colour16.png"
    write_png16(path, samples, colour_type=colour_type)
    with caplog.at_level(logging.WARNING, logger="common.images"):
        image = load_image(path)
    assert_rgb_float(image)
    expected = samples[..., :3] if channels > 2 else np.repeat(samples[..., :1], 3, -1)
    np.testing.assert_array_equal(image, expected.astype(np.float32) / 65535)
    assert caplog.text == ""


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"compression": "lzw"},
        {"compression": "zlib"},
        {"planarconfig": "separate"},
        {"extrasamples": ["unassalpha"]},
    ],
    ids=["plain", "lzw", "deflate", "planar", "alpha"],
)
def test_16_bit_rgb_tiff_keeps_all_16_bits(tmp_path, caplog, layout):
    tifffile = pytest.importorskip("tifffile")
    channels = 4 if "extrasamples" in layout else 3
    samples = rgb16_pattern(channels)
    stored_samples = np.moveaxis(samples, -1, 0) if "planarconfig" in layout else samples
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, stored_samples, photometric="rgb", **layout)
    with caplog.at_level(logging.WARNING, logger="common.images"):
        image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, samples[..., :3].astype(np.float32) / 65535)
    assert caplog.text == ""


def test_16_bit_png_gets_its_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
    samples = rgb16_pattern()
    rows = b"".join(b"\x00" + row.tobytes() for row in samples.astype(">u2").reshape(H, -1))
    path = tmp_path / "rotated16.png"
    path.write_bytes(png_bytes(W, H, 16, 2, rows, extra=[(b"eXIf", payload)]))
    image = load_image(path)
    expected = ORIENTED[6](samples) / np.float32(65535)
    assert_rgb_float(image, expected.shape)
    np.testing.assert_array_equal(image, expected)


def test_truncated_16_bit_png_is_refused(tmp_path):
    full = tmp_path / "full16.png"
    noise = np.random.default_rng(0).integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    write_png16(full, noise, colour_type=2)
    data = full.read_bytes()
    path = tmp_path / "truncated16.png"
    path.write_bytes(data[: len(data) // 2])
    error = load_error(path)
    assert str(error).startswith(f"{path}: ")


def test_8_bit_rgb_logs_no_precision_warning(tmp_path, caplog):
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb_pattern()).save(path)
    with caplog.at_level(logging.WARNING, logger="common.images"):
        load_image(path)
    assert caplog.text == ""


def test_palette_with_transparency_gives_palette_colours(tmp_path):
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    indices = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    img = Image.fromarray(indices, mode="L").convert("P")
    img.putpalette(palette.ravel().tolist())
    img.putdata(indices.ravel().tolist())
    path = tmp_path / "palette.png"
    img.save(path, transparency=2)
    reopened = stored(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, palette[indices] / np.float32(255))


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.concatenate([rgb_pattern(), np.zeros((H, W, 1), np.uint8)], axis=-1)
    rgba[0, 0, 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = load_image(path)
    assert_rgb_float(image)
    # Fully transparent pixels keep their stored colour (not composited onto black or white).
    np.testing.assert_array_equal(image, rgb_pattern() / np.float32(255))


def test_la_drops_alpha_and_replicates_grey(tmp_path):
    grey = rgb_pattern()[..., 1]
    la = np.stack([grey, np.zeros_like(grey)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    assert stored(path).mode == "LA"
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, np.repeat(grey[..., None], 3, -1) / np.float32(255))


def cmyk_pattern() -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :3] = [200, 30, 60]
    rgb[:, 3:] = [20, 180, 90]
    return rgb


def test_cmyk_tiff_converts_to_rgb(tmp_path):
    # Pillow's RGB -> CMYK is C = 255 - R, ..., K = 0, and its inverse is exact on those.
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk_pattern()).convert("CMYK").save(path)
    assert stored(path).mode == "CMYK"
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_array_equal(image, cmyk_pattern() / np.float32(255))


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk_pattern()).convert("CMYK").save(path, quality=95)
    assert stored(path).mode == "CMYK"
    image = load_image(path)
    assert_rgb_float(image)
    np.testing.assert_allclose(image, cmyk_pattern() / 255, atol=4 / 255)


# EXIF orientation -> how the stored array is displayed, written from the EXIF definitions
# (where the stored 0th row and 0th column go), not from Pillow.
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.png"
    Image.fromarray(rgb_pattern()).save(path, exif=exif)
    assert stored(path).getexif().get(0x0112) == orientation
    image = load_image(path)
    expected = ORIENTED[orientation](rgb_pattern()) / np.float32(255)
    assert_rgb_float(image, expected.shape)
    np.testing.assert_array_equal(image, expected)


def test_exif_orientation_in_jpeg(tmp_path):
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = 40
    stored[:, 8:] = 220
    exif = Image.Exif()
    exif[0x0112] = 6  # Displayed rotated 90 degrees clockwise: the left half goes on top.
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert_rgb_float(image, (16, 8, 3))
    np.testing.assert_allclose(image[:6], 40 / 255, atol=6 / 255)
    np.testing.assert_allclose(image[10:], 220 / 255, atol=6 / 255)


# ---------------------------------------------------------------- files that are refused


def make_truncated(tmp_path, suffix: str):
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(noise).save(full)
    data = full.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    return path


def make_bad(tmp_path, case: str):
    if case == "missing":
        return tmp_path / "missing.png"
    if case == "empty":
        path = tmp_path / "empty.png"
        path.touch()
        return path
    if case == "text":
        path = tmp_path / "notes.png"
        path.write_text("not an image at all\n")
        return path
    if case == "directory":
        path = tmp_path / "folder.png"
        path.mkdir()
        return path
    if case == "truncated_png":
        return make_truncated(tmp_path, ".png")
    if case == "truncated_jpg":
        return make_truncated(tmp_path, ".jpg")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, reason_word",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("text", "not an image"),
        ("directory", "directory"),
        ("truncated_png", "truncated"),
        ("truncated_jpg", "truncated"),
    ],
)
def test_bad_file_raises_a_clear_error(tmp_path, case, reason_word):
    path = make_bad(tmp_path, case)
    error = load_error(path)
    assert isinstance(error, ValueError)
    assert error.path == path
    assert reason_word in error.reason
    assert str(error).startswith(f"{path}: ")
    assert path.name in str(error) and reason_word in str(error)


def test_truncated_images_are_not_loaded_partially():
    # Pillow would fill the missing rows with grey; this module must never turn that on.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_load_error_survives_pickling(tmp_path):
    error = ImageLoadError(tmp_path / "a.png", "empty file (0 bytes)")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_more_than_max_pixels_is_refused(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(rgb_pattern()).save(path)
    assert load_image(path, max_pixels=H * W).shape == (H, W, 3)
    error = load_error(path, max_pixels=H * W - 1)
    assert "decompression bomb" in error.reason and "small.png" in str(error)


def test_default_limit_refuses_a_bomb_before_decoding(tmp_path, recwarn):
    # 108 Mpx: above the 100 Mpx default and Pillow's warning level, under its hard limit.
    # The file holds almost no pixel data, so decoding it would fail as "truncated" instead.
    path = tmp_path / "bomb.png"
    write_png_header_only(path, 12_000, 9_000)
    assert path.stat().st_size < 1000
    assert 12_000 * 9_000 > images.DEFAULT_MAX_PIXELS
    error = load_error(path)
    assert "too large" in error.reason and "12000x9000" in error.reason
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillow_hard_bomb_limit_becomes_an_image_load_error(tmp_path):
    path = tmp_path / "huge.png"
    write_png_header_only(path, 20_000, 20_000)  # Above twice Pillow's MAX_IMAGE_PIXELS.
    error = load_error(path, max_pixels=10**12)
    assert "decompression bomb" in error.reason and "huge.png" in str(error)


def test_max_pixels_rules_over_pillows_warning_level(tmp_path, monkeypatch, recwarn):
    path = tmp_path / "small.png"
    Image.fromarray(rgb_pattern()).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 10)  # Pillow would only warn.
    assert load_image(path).shape == (H, W, 3)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 3)  # Pillow refuses.
    assert "decompression bomb" in load_error(path).reason


# ---------------------------------------------------------------- to_uint8 and save_image


def test_to_uint8_rounds_half_up_and_clips():
    k = np.arange(256)
    np.testing.assert_array_equal(to_uint8((k / 255).astype(np.float32)), k)
    np.testing.assert_array_equal(to_uint8(((k[:-1] + 0.4) / 255).astype(np.float32)), k[:-1])
    np.testing.assert_array_equal(to_uint8(((k[:-1] + 0.6) / 255).astype(np.float32)), k[1:])
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 2.0, np.nan])), [0, 255, 0])
    assert to_uint8(jnp.ones((2, 2))).dtype == np.uint8
    passthrough = rgb_pattern()
    assert to_uint8(passthrough) is passthrough
    with pytest.raises(TypeError):
        to_uint8(np.arange(4, dtype=np.int32))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_lossless_round_trip_is_exact(tmp_path, suffix):
    path = save_image(tmp_path / f"out{suffix}", rgb_pattern())
    assert path == tmp_path / f"out{suffix}"
    np.testing.assert_array_equal(to_uint8(load_image(path)), rgb_pattern())


def test_to_uint16_rounds_half_up_scales_and_clips():
    k = np.arange(65536)
    np.testing.assert_array_equal(to_uint16(k / 65535), k)
    np.testing.assert_array_equal(to_uint16((k[:-1] + 0.6) / 65535), k[1:])
    np.testing.assert_array_equal(to_uint16(np.array([-1.0, 2.0, np.nan])), [0, 65535, 0])
    np.testing.assert_array_equal(to_uint16(np.array([0, 1, 255], np.uint8)), [0, 257, 65535])
    with pytest.raises(TypeError):
        to_uint16(np.arange(4, dtype=np.int32))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_round_trip_of_a_gradient_keeps_more_than_8_bits(tmp_path, suffix):
    ramp = np.linspace(0.0, 1.0, 4096, dtype=np.float32).reshape(64, 64)
    gradient = np.stack([ramp, ramp.T, 1.0 - ramp], axis=-1)
    path = save_image(tmp_path / f"gradient{suffix}", gradient, bit_depth=16)
    back = load_image(path)
    assert back.shape == gradient.shape
    assert len(np.unique(back[..., 0])) == 4096  # 8 bits would leave 256 levels
    np.testing.assert_allclose(back, gradient, atol=0.5 / 65535 + 1e-7)
    samples = rgb16_pattern()
    np.testing.assert_array_equal(
        to_uint16(load_image(save_image(tmp_path / f"exact{suffix}", samples, bit_depth=16))),
        samples,
    )  # uint16 values round-trip exactly
    grey = load_image(save_image(tmp_path / f"grey{suffix}", ramp, bit_depth=16))
    np.testing.assert_allclose(grey, np.repeat(ramp[..., None], 3, -1), atol=0.5 / 65535 + 1e-7)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".webp"])
def test_16_bits_are_refused_for_8_bit_formats(tmp_path, suffix):
    with pytest.raises(ValueError, match="cannot hold 16 bits"):
        save_image(tmp_path / f"out{suffix}", rgb_pattern(), bit_depth=16)
    with pytest.raises(ValueError, match="bit_depth"):
        save_image(tmp_path / "out.png", rgb_pattern(), bit_depth=12)
    assert os.listdir(tmp_path) == []


def test_float_and_jax_and_grey_inputs(tmp_path):
    as_float = rgb_pattern() / np.float32(255)
    save_image(tmp_path / "float.png", as_float)
    save_image(tmp_path / "jax.png", jnp.asarray(as_float))
    save_image(tmp_path / "grey.png", as_float[..., 0])
    for name in ("float.png", "jax.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name), as_float)
    grey = load_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(grey, np.repeat(as_float[..., :1], 3, -1))


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_formats_are_written_at_high_quality(tmp_path, suffix):
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    flat = np.full((16, 16, 3), [200, 120, 40], np.uint8)
    path = save_image(tmp_path / f"out{suffix}", flat)
    assert stored(path).format == {".webp": "WEBP"}.get(suffix, "JPEG")
    np.testing.assert_allclose(load_image(path), flat / 255, atol=4 / 255)


def test_save_leaves_only_the_target(tmp_path):
    save_image(tmp_path / "out.png", rgb_pattern())
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_creates_parent_folders(tmp_path):
    path = save_image(tmp_path / "a" / "b" / "out.png", rgb_pattern())
    assert path.is_file()


def test_saved_file_has_the_usual_permissions(tmp_path):
    path = save_image(tmp_path / "out.png", rgb_pattern())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="out.png"):
        save_image(path, rgb_pattern())
    assert path.read_bytes() == b"the user's file"
    save_image(path, rgb_pattern(), overwrite=True)
    np.testing.assert_array_equal(to_uint8(load_image(path)), rgb_pattern())
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_does_not_replace_a_file_created_while_writing(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    original_save = Image.Image.save

    def save_and_race(self, fp, *args, **kwargs):
        path.write_bytes(b"arrived meanwhile")
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_and_race)
    with pytest.raises(FileExistsError):
        save_image(path, rgb_pattern())
    assert path.read_bytes() == b"arrived meanwhile"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_refuses_protected_inputs_even_with_overwrite(tmp_path):
    source = tmp_path / "in" / "photo.png"
    source.parent.mkdir()
    Image.fromarray(rgb_pattern()).save(source)
    before = source.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(source)
    for target in (source, tmp_path / "in" / ".." / "in" / "photo.png", link):
        with pytest.raises(ValueError, match="input"):
            save_image(target, np.zeros((H, W, 3)), overwrite=True, protected=[str(source)])
    assert source.read_bytes() == before
    assert sorted(os.listdir(source.parent)) == ["photo.png"]


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    existing = tmp_path / "old.png"
    existing.write_bytes(b"old")

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "new.png", rgb_pattern())
    with pytest.raises(OSError, match="disk full"):
        save_image(existing, rgb_pattern(), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old.png"]
    assert existing.read_bytes() == b"old"


def test_save_rejects_unknown_suffix_and_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "out.xyz", rgb_pattern())
    with pytest.raises(ValueError, match="shape|image"):
        save_image(tmp_path / "out.png", np.zeros((H, W, 4), np.uint8))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- list_images


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    for name in ("b.png", "A.JPG", "c.webp", "notes.txt", ".hidden.png", "sub/d.TIFF"):
        (root / name).write_bytes(b"x")
    (root / ".cache" / "e.png").write_bytes(b"x")
    return root


def test_list_folder_keeps_image_suffixes_only(folder):
    assert list_images([folder]) == [folder / "A.JPG", folder / "b.png", folder / "c.webp"]


def test_list_folder_recursively(folder):
    listed = list_images([folder], recursive=True)
    assert listed == [folder / n for n in ("A.JPG", "b.png", "c.webp", "sub/d.TIFF")]


def test_list_glob(folder):
    assert list_images([str(folder / "*.png")]) == [folder / "b.png"]
    assert list_images([str(folder / "*")]) == [folder / n for n in ("A.JPG", "b.png", "c.webp")]


def test_list_keeps_an_explicit_file_whatever_its_suffix(folder):
    assert list_images([folder / "notes.txt"]) == [folder / "notes.txt"]


def test_list_removes_duplicates_and_sorts(folder):
    listed = list_images(
        [folder / "c.webp", str(folder / "*.png"), folder, folder / "sub" / ".." / "b.png"]
    )
    assert listed == [folder / "A.JPG", folder / "b.png", folder / "c.webp"]


@pytest.mark.parametrize("name", ["missing.png", "nothing*.png", "empty_folder"])
def test_list_raises_on_an_input_matching_nothing(tmp_path, name):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=name.replace("*", r"\*")):
        list_images([tmp_path / "notes.txt", str(tmp_path / name)])
