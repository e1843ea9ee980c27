"""A folder of image files, one sub-folder per class (the layout torchvision's ImageFolder reads).

    dir/cat/001.png  dir/cat/002.jpg  dir/dog/a.jpeg ...

Classes are the sub-folder names in sorted order. Every PNG or JPEG is decoded with
Pillow (imported only here, only when used), converted to RGB and resized to size x size
with bilinear filtering, ignoring its aspect ratio: x float32 [N, 3, size, size] in 0..1.

Bounded: the memory the images need at `size` is checked before it is allocated, and an
image whose header claims more than Pillow's limit of pixels (Image.MAX_IMAGE_PIXELS, 89
million: a decompression bomb) is refused before it is decoded.
"""
from __future__ import annotations

import numpy as np

from dslc.files import UnreadableFile, open_regular
from dslc.reading import human_bytes
from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import check_memory, directory

EXTENSIONS = (".png", ".jpg", ".jpeg")


def decode_image(path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """The image in `path` converted to `mode` ("RGB", "L") and resized to `size` (width,
    height) bilinearly (None: kept as it is), as uint8; DataError for a file that is not regular (a FIFO is not
    waited on), that Pillow cannot decode, or whose header claims more pixels than its limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path) as f, Image.open(f) as image:
            width, height = image.size
            if width * height > Image.MAX_IMAGE_PIXELS:
                raise DataError(f"the image claims {width:,} x {height:,} pixels, more than Pillow's limit of "
                                f"{Image.MAX_IMAGE_PIXELS:,} (a decompression bomb?)", path)
            converted = image.convert(mode)
            return np.asarray(converted if size is None else converted.resize(size, Image.Resampling.BILINEAR))
    except UnreadableFile as e:
        raise DataError(e.reason, path) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"refused as a decompression bomb ({e})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"not a readable image ({e})", path) from None


def image_folder(dir, size: int) -> Dataset:
    """Every image under `dir`/CLASS/, labelled by the index of CLASS among the sorted sub-folders."""
    folder = directory(dir)
    try:
        import PIL  # noqa: F401  (decode_image uses it)
    except ImportError:
        raise DataError("reading images needs Pillow (pip install pillow)", folder) from None
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders (expected DIR/CLASS/IMAGE.png)", folder)
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())
             if f.is_file() and f.suffix.lower() in EXTENSIONS]
    if not files:
        raise DataError(f"no {'/'.join(e[1:] for e in EXTENSIONS)} images in the class sub-folders", folder)
    pixels = len(files) * 3 * size * size
    check_memory(pixels * 5, f"image_folder(size={size}): {len(files):,} images of {size}x{size} "
                             f"({human_bytes(pixels)} as bytes, 4x that as float32)", folder)
    x = np.empty((len(files), size, size, 3), np.uint8)
    for n, (path, _) in enumerate(files):
        x[n] = decode_image(path, "RGB", (size, size))
    y = np.array([c for _, c in files], np.int64)
    return checked(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, y, folder.name, folder,
                   len(classes), classes)
