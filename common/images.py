"""Image files in and out: robust loading to float RGB, atomic saving, input listing.

Decoding is Pillow's, except 16-bit-per-channel colour, which Pillow can only reduce to 8 bits:
its samples come from tifffile (TIFF) and imagecodecs (PNG, and compressed TIFF through
tifffile) at full precision, and 16-bit PNG and TIFF files are written by the same two. This
module decides what a file *means* as an (H, W, 3) float32 sRGB
image in [0, 1], refuses what it cannot mean (with an `ImageLoadError` naming the file and the
reason), and never overwrites what the user owns unless asked, nor ever an input.
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Refuse images above this many pixels before decoding them (a decompression bomb guard; a
# full-resolution FiveK raw is about 24 Mpx).
DEFAULT_MAX_PIXELS = 100_000_000

# Suffixes that folder and glob expansion treat as images (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# Encoder options per Pillow format; lossy formats are written at high quality.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

_UINT16_MAX = 65535.0

# Formats `save_image` writes with 16 bits per channel (`bit_depth=16`).
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")

# EXIF orientation -> the numpy transform that displays the stored (H, W, C) array (as
# `PIL.ImageOps.exif_transpose` does for Pillow images).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


class ImageLoadError(ValueError):
    """An image file that cannot be loaded; `str()` reads "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Keeps the exception picklable (e.g. raised inside a data-loader worker process).
        return type(self), (self.path, self.reason)


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Loads an image file as float32 RGB of shape (H, W, 3) in [0, 1].

    Values are the file's sRGB-encoded values as decoded (no linearisation, no colour
    management: embedded ICC profiles are ignored). The EXIF orientation (all eight values) is
    applied, so the array is the image as it is meant to be displayed. Only the first frame of
    a multi-frame file is read.

    Conversions (all well defined, none of them an error):
      * 8-bit RGB: divided by 255.
      * Grey (L, 1-bit): replicated to the three channels (1-bit gives 0 or 1).
      * 16-bit grey (Pillow modes I;16*): divided by 65535, no 8-bit truncation.
      * 32-bit integer grey (mode I): read on the 16-bit scale (divided by 65535), clipped.
      * 32-bit float grey (mode F, e.g. float TIFF): taken as already in [0, 1] and clipped;
        NaN becomes 0, +inf 1.
      * 16-bit-per-channel colour (RGB/RGBA PNG or TIFF, 16-bit grey+alpha PNG or TIFF, any
        TIFF compression and planar layout): divided by 65535 at full precision. Pillow has no
        16-bit multi-channel mode, so the samples are decoded by imagecodecs (PNG) and
        tifffile (TIFF); Pillow still decodes the file first, so every refusal below holds.
        A 16-bit colour TIFF that tifffile cannot read as RGB or grey samples (CMYK, LAB,
        YCbCr) loads at Pillow's 8-bit precision, and a warning is logged.
      * Palette (P, with or without transparency): the palette colours.
      * CMYK, and the rare YCbCr, LAB and HSV files: Pillow's RGB conversion, which is not
        colour-managed.
      * Alpha (RGBA, LA, PA, ...): the alpha channel is dropped, not composited onto a
        background, so fully transparent pixels keep their stored colour.

    Refused with `ImageLoadError` (the message names the file and the reason): a missing file,
    a directory, an empty file, a file Pillow does not recognise as an image, a truncated or
    otherwise undecodable file (Pillow's `LOAD_TRUNCATED_IMAGES` is left False and the whole
    image is decoded, so a cut file is never returned half grey), a mode with no RGB meaning,
    and an image of more than `max_pixels` pixels (checked from the header, before decoding).
    Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) yields to `max_pixels`
    except above twice that limit, where Pillow refuses to open the file at all.

    Args:
      path: the image file.
      max_pixels: largest width × height accepted.

    Returns:
      A new float32 array of shape (H, W, 3) with values in [0, 1].

    Raises:
      ImageLoadError: the file cannot be loaded; see above.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # `max_pixels` below is the policy; Pillow's softer warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        path,
                        f"image is too large ({width}x{height} = {width * height} pixels, more "
                        f"than max_pixels={max_pixels}); refused as a possible decompression "
                        "bomb",
                    )
                sixteen_bit_colour = _is_16_bit_colour(img)
                image_format = img.format
                img.load()  # Decodes everything now: a truncated file raises here.
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception as e:
                    raise ImageLoadError(path, f"unreadable EXIF orientation: {e}") from e
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"refused as a decompression bomb by Pillow ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not an image file, or a format Pillow cannot read") from e
    except FileNotFoundError as e:
        raise ImageLoadError(path, "file not found") from e
    except PermissionError as e:
        raise ImageLoadError(path, "permission denied") from e
    except Exception as e:  # Pillow's plugins raise many types on corrupt data.
        reason = str(e) or type(e).__name__
        raise ImageLoadError(path, f"cannot decode: {reason}") from e
    if sixteen_bit_colour:
        samples = _load_16_bit_samples(path, image_format)
        if samples is not None:
            samples = _ORIENTATIONS.get(orientation, lambda a: a)(samples)
            return np.ascontiguousarray(samples, dtype=np.float32) / np.float32(_UINT16_MAX)
        logger.warning("%s: 16-bit-per-channel image decoded by Pillow at 8-bit precision", path)
    return _to_rgb_float(img, path)


_EXIF_ORIENTATION = 0x0112


def _is_16_bit_colour(img: Image.Image) -> bool:
    """Whether the file holds 16-bit samples in more than one channel (checked before load,
    when Pillow's modes would reduce them to 8 bits)."""
    if img.mode.startswith(("I", "F")):
        return False
    if img.format == "TIFF":  # The tags also cover layouts Pillow's tile names do not show.
        bits = img.tag_v2.get(258, (1,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return img.tag_v2.get(277, 1) > 1 and max(bits) == 16
    for tile in img.tile:
        args = tile.args
        rawmode = args if isinstance(args, str) else (args[0] if args else None)
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _load_16_bit_samples(path: Path, image_format: str | None) -> np.ndarray | None:
    """The file's 16-bit samples as (H, W, 3) uint16 as stored (no orientation applied); grey
    is replicated and alpha dropped. None for a layout without an RGB or grey meaning."""
    try:
        if image_format == "PNG":
            import imagecodecs

            samples = imagecodecs.png_decode(path.read_bytes())
        elif image_format == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                rgb_or_grey = page.photometric in (
                    tifffile.PHOTOMETRIC.RGB,
                    tifffile.PHOTOMETRIC.MINISBLACK,
                )
                if not rgb_or_grey or page.dtype != np.uint16 or "S" not in page.axes:
                    return None
                samples = np.moveaxis(page.asarray(), page.axes.index("S"), -1)
        else:
            return None
    except Exception as e:  # The decoders raise their own types on corrupt data.
        raise ImageLoadError(path, f"cannot decode 16-bit samples: {e}") from e
    if samples.dtype != np.uint16 or samples.ndim != 3 or samples.shape[-1] not in (2, 3, 4):
        return None
    if samples.shape[-1] == 2:  # grey + alpha
        return np.repeat(samples[..., :1], 3, axis=-1)
    return samples[..., :3]


def _to_rgb_float(img: Image.Image, path: Path) -> np.ndarray:
    """Converts a decoded Pillow image to float32 (H, W, 3) in [0, 1] (see `load_image`)."""
    mode = img.mode
    if mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.float32) / _UINT16_MAX
    elif mode == "I":
        grey = np.clip(np.asarray(img).astype(np.float32) / _UINT16_MAX, 0.0, 1.0)
    elif mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.clip(grey, 0.0, 1.0)
    else:
        try:
            rgb = img.convert("RGB")
        except ValueError as e:
            raise ImageLoadError(path, f"unsupported image mode {mode!r} ({e})") from e
        return np.asarray(rgb).astype(np.float32) / 255.0
    return np.repeat(grey[..., None], 3, axis=-1)


def to_uint8(image) -> np.ndarray:
    """Quantises an image to 8 bits: clip to [0, 1], scale by 255, round half up.

    Args:
      image: float or bool array (numpy or JAX) with values meant in [0, 1], any shape; NaN
        becomes 0. A uint8 array is returned unchanged (as numpy).

    Returns:
      A uint8 numpy array of the same shape.

    Raises:
      TypeError: an integer dtype other than uint8 (its scale would be a guess).
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "fb":
        raise TypeError(f"expected a float image in [0, 1] or uint8, got dtype {array.dtype}")
    array = np.nan_to_num(array.astype(np.float32), nan=0.0)
    return np.floor(np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint16(image) -> np.ndarray:
    """Quantises an image to 16 bits: clip to [0, 1], scale by 65535, round half up.

    Args:
      image: float or bool array (numpy or JAX) meant in [0, 1], any shape (NaN becomes 0);
        uint8 (scaled by 257, exactly) or uint16 (returned unchanged, as numpy).

    Returns:
      A uint16 numpy array of the same shape.

    Raises:
      TypeError: another integer dtype.
    """
    array = np.asarray(image)
    if array.dtype == np.uint16:
        return array
    if array.dtype == np.uint8:
        return array.astype(np.uint16) * 257
    if array.dtype.kind not in "fb":
        raise TypeError(f"expected a float image in [0, 1], uint8 or uint16, got {array.dtype}")
    array = np.nan_to_num(array.astype(np.float64), nan=0.0)
    return np.floor(np.clip(array, 0.0, 1.0) * _UINT16_MAX + 0.5).astype(np.uint16)


def save_image(
    path: str | os.PathLike,
    image,
    *,
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike] = (),
    bit_depth: int = 8,
) -> Path:
    """Writes an image file atomically; the format comes from the suffix.

    The image is written to a temporary file in the target's directory, then renamed onto the
    target, so the target is never seen half written and no temporary file is left behind on
    failure. Parent directories are created. JPEG and WebP are written at quality 95; PNG,
    TIFF and BMP are lossless, so 8-bit values round-trip exactly. With `bit_depth=16`, PNG
    (imagecodecs, zlib level 6) and TIFF (tifffile, deflate) hold 16 bits per channel, so
    16-bit values round-trip exactly through `load_image`.

    Args:
      path: the file to write (.png, .jpg/.jpeg, .tif/.tiff, .bmp, .webp, or any other suffix
        Pillow can write; .png or .tif/.tiff for 16 bits).
      image: (H, W, 3) RGB or (H, W) grey; float in [0, 1] (numpy or JAX; clipped and rounded
        with `to_uint8` or `to_uint16`), or uint8 (or uint16 for 16 bits).
      overwrite: replace an existing file at `path`; otherwise refuse.
      protected: paths that must never be written (the inputs); refused even with `overwrite`,
        also through another spelling or a symlink of the same file.
      bit_depth: 8 or 16 bits per channel.

    Returns:
      `path` as a `Path`.

    Raises:
      ValueError: `path` is one of `protected`, the suffix is unknown, the format cannot
        hold `bit_depth` bits, or the shape is wrong.
      FileExistsError: `path` exists and `overwrite` is False.
    """
    path = Path(path)
    target = path.resolve()
    for other in protected:
        other = Path(other)
        if target == other.resolve() or (
            path.exists() and other.exists() and os.path.samefile(path, other)
        ):
            raise ValueError(f"{path}: refusing to write over an input file ({other})")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: file exists; not overwriting it (overwrite=False)")
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(f"{path}: unknown or unwritable image suffix {path.suffix!r}")
    if bit_depth not in (8, 16):
        raise ValueError(f"{path}: bit_depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and image_format not in SIXTEEN_BIT_FORMATS:
        raise ValueError(
            f"{path}: {image_format} cannot hold 16 bits per channel; write .png or .tif"
        )
    array = to_uint8(image) if bit_depth == 8 else to_uint16(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"{path}: expected an (H, W, 3) or (H, W) image, got {array.shape}")

    def write(f):
        if bit_depth == 16:
            _write_16_bit(f, array, image_format)
        else:
            Image.fromarray(array).save(
                f, format=image_format, **_SAVE_OPTIONS.get(image_format, {})
            )

    return _write_atomically(path, write, overwrite=overwrite)


def save_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Writes a text file (UTF-8) atomically, as `save_image`: a temporary file in the same
    folder, then a rename that never replaces an existing file unless `overwrite`.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False.
    """
    return save_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def save_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Writes a binary file atomically, as `save_text`.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: file exists; not overwriting it (overwrite=False)")
    return _write_atomically(path, lambda f: f.write(data), overwrite=overwrite)


def _write_atomically(path: Path, write, *, overwrite: bool) -> Path:
    """Calls `write(binary file)` on a temporary file beside `path`, then renames it onto
    `path` (replacing it only if `overwrite`); the temporary file never outlives the call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name with a random part; opened with "x" so the umask applies as usual.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "xb") as f:
            write(f)
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _write_16_bit(f, array: np.ndarray, image_format: str) -> None:
    """Writes uint16 (H, W, 3) or (H, W) samples as a 16-bit PNG or TIFF to an open file."""
    if image_format == "PNG":
        import imagecodecs

        f.write(imagecodecs.png_encode(array, level=6))
    else:
        import tifffile

        photometric = "rgb" if array.ndim == 3 else "minisblack"
        tifffile.imwrite(f, array, photometric=photometric, compression="zlib")


def _rename_no_replace(source: Path, target: Path) -> None:
    """Moves `source` to `target`, failing if `target` exists (atomic where links work)."""
    try:
        os.link(source, target)  # Fails if the target appeared since the check above.
    except FileExistsError as e:
        raise FileExistsError(f"{target}: file exists; not overwriting it") from e
    except OSError:  # A filesystem without hard links: check-then-rename is the best we have.
        if target.exists():
            raise FileExistsError(f"{target}: file exists; not overwriting it") from None
        os.replace(source, target)
    # On success of the link the caller removes `source`.


def list_images(inputs: Iterable[str | os.PathLike], *, recursive: bool = False) -> list[Path]:
    """Expands files, folders and glob patterns into a sorted list of image files.

    * An existing file is kept whatever its suffix, so a bad file gets its error from
      `load_image` instead of being skipped silently.
    * A folder contributes its files with an image suffix (`IMAGE_SUFFIXES`,
      case-insensitive), skipping other and hidden (dot) files; subfolders only if
      `recursive`.
    * A glob pattern (`*`, `?`, `[...]`; `**` when `recursive`) contributes the matching files
      with an image suffix (as in the shell, `*` does not match hidden names).

    Args:
      inputs: paths and patterns, as given on a command line.
      recursive: descend into subfolders of folders, and let `**` match across folders.

    Returns:
      The image paths sorted by their string form, each file once (duplicates are detected on
      the resolved path; the first spelling is kept).

    Raises:
      FileNotFoundError: an input that matches no image file (a missing path, an empty
        folder, a pattern with no match), named in the message.
    """
    found: dict[Path, Path] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            matches = [p for p in candidates if _is_image_file(p, path)]
            what = f"folder {str(item)!r} contains no image files ({', '.join(IMAGE_SUFFIXES)})"
        elif path.exists():
            matches, what = [path], ""
        elif any(c in str(item) for c in "*?["):
            matches = [
                Path(p)
                for p in glob.glob(str(path), recursive=recursive)
                if _is_image_file(Path(p))
            ]
            what = f"pattern {str(item)!r} matches no image files"
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        if not matches:
            raise FileNotFoundError(what)
        for match in matches:
            found.setdefault(match.resolve(), match)
    return sorted(found.values(), key=str)


def _is_image_file(path: Path, folder: Path | None = None) -> bool:
    """An image-suffix file; when listing `folder`, not hidden (nor under a hidden folder)."""
    hidden = folder is not None and any(p.startswith(".") for p in path.relative_to(folder).parts)
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden and path.is_file()
