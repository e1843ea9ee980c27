"""A folder of image files, one sub-folder per class (the layout torchvision's ImageFolder reads).

    dir/cat/001.png  dir/cat/2019/002.jpg  dir/dog/a.webp ...

Classes are the sub-folders of `dir` in sorted order (not those whose name starts with a
dot). A class's images are every file under its folder, sub-folders included, whose suffix
is one of IMAGE_SUFFIXES (any case) — the files `dslc predict --input` takes too — in
torchvision's order: by folder path, then by name. Other files (notes.txt, .DS_Store) are
skipped, as torchvision skips them, and so are names starting with a dot (macOS's
`._x.png` companions are not images). A class folder holding no image is an error naming
it, as in torchvision, never a class of zero examples.

The walk is bounded. Links to folders are followed, but a link back to `dir` or to a folder
it is already inside of (a loop) is not: it would only find the same files again. At most
MAX_ENTRIES files and folders are looked at (a link into a huge tree is refused, not walked
for hours). A folder that cannot be listed is an error, not a class with fewer images.

Pixels. Each image is decoded with Pillow (imported only here, only when used), its first
frame for an animated or multi-page file, converted to RGB (or grey, for predict) and
resized bilinearly, ignoring its aspect ratio, to float32 in 0..1 meaning what the file
says: 8-bit samples are divided by 255, 16-bit grey ones (Pillow modes I;16*, and I for a
PNG or PGM) by 65535. Pillow itself decodes a 16-bit colour PNG or PPM to 8 bits a sample
(within 1/255 of the value). Pixels of 32-bit integers or floats (mode I from a TIFF, mode
F) have no range that says what 0..1 is, so they are refused naming the file.

Bounded: the memory the images need at `size` is checked before it is allocated, and an
image whose header claims more than Pillow's limit of pixels (Image.MAX_IMAGE_PIXELS, 89
million: a decompression bomb) is refused before it is decoded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from dslc.files import UnreadableFile, open_regular, reason
from dslc.reading import human_bytes
from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import check_memory, directory

# What Pillow decodes among torchvision's IMG_EXTENSIONS, and GIF: training and predict read the same.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
MAX_ENTRIES = 10_000_000  # files and folders looked at under the class folders (ImageNet-21k has 14 million images)
# Pillow's modes of 16-bit grey samples; mode I also means 16 bits for the formats named (older
# Pillow opens a 16-bit PNG so, and a PGM of maxval > 255 is scaled to 0..65535 in mode I).
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_AS_I = ("PNG", "PPM")


def decode_pixels(path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """The image in `path` as float32 in 0..1 (the module docstring's rules), converted to
    `mode` ("RGB": [H, W, 3], "L": [H, W]) and resized to `size` (width, height) bilinearly
    (None: kept as it is). DataError for a file that is not regular (a FIFO is not waited on),
    that Pillow cannot decode, whose header claims more pixels than its limit, or whose
    pixels have no known range.

    >>> decode_pixels("cat.png", "RGB", (32, 32)).shape      # doctest: +SKIP
    (32, 32, 3)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path) as f, warnings.catch_warnings():
            # dslc's own message below names the file and the limit; Pillow's warning, for an
            # image between its limit and twice it, printed two lines and a source path first
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as image:
                width, height = image.size
                if width * height > Image.MAX_IMAGE_PIXELS:
                    raise DataError(f"the image claims {width:,} x {height:,} pixels, more than Pillow's limit "
                                    f"of {Image.MAX_IMAGE_PIXELS:,} (a decompression bomb?)", path)
                return _pixels(image, mode, size, path)
    except UnreadableFile as e:
        raise DataError(e.reason, path) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"refused as a decompression bomb ({e})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"not a readable image ({e})", path) from None


def _pixels(image, mode: str, size: tuple[int, int] | None, path) -> np.ndarray:
    from PIL import Image

    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format in _SIXTEEN_BIT_AS_I):
        low, high = image.getextrema()
        if low < 0 or high > 65535:  # cannot happen for these formats; checked, not assumed
            raise DataError(f"16-bit grey pixels outside 0..65535 ({low}..{high})", path)
        grey = np.asarray(image).astype(np.float32) / np.float32(65535)
        if size is not None:  # float mode F keeps the 16 bits through the resize
            grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
        return grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)  # grey to RGB: R = G = B, as Pillow
    if image.mode in ("I", "F") or image.mode.startswith(("I;", "F;")):
        kind = "floating-point" if image.mode.startswith("F") else "32-bit integer"
        raise DataError(f"{kind} pixels (Pillow mode {image.mode}) have no range that says what 0..1 is: "
                        f"save the image with 8 or 16 bits a sample, or give the numbers as a .npy", path)
    converted = image.convert(mode)
    if size is not None:
        converted = converted.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(converted).astype(np.float32) / np.float32(255)


def image_files(folder: Path, looked: int = 0) -> tuple[list[Path], int]:
    """The image files under `folder` (a class folder) in torchvision's order, and `looked`
    plus the entries looked at; DataError past MAX_ENTRIES or for a folder that cannot be listed.

    >>> image_files(Path("pets/cat"))[0][:2]      # doctest: +SKIP
    [PosixPath('pets/cat/1.png'), PosixPath('pets/cat/kittens/2.jpg')]
    """
    found: list[tuple[str, str, Path]] = []
    # (folder, its path below `folder`, the identities of the folders it is inside of)
    stack = [(folder, "", frozenset({_identity(folder.parent), _identity(folder)}))]
    while stack:
        here, below, inside = stack.pop()
        try:
            with os.scandir(here) as entries:
                for entry in entries:
                    looked += 1
                    if looked > MAX_ENTRIES:
                        raise DataError(f"more than {MAX_ENTRIES:,} files and folders under the class folders: "
                                        f"too many to look through (a folder link into a large tree?)", folder.parent)
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():  # a link to a folder too
                        ident = _identity(Path(entry.path))
                        if ident not in inside:  # else a loop: its files are being found already
                            stack.append((Path(entry.path), os.path.join(below, entry.name), inside | {ident}))
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                        found.append((below, entry.name, Path(entry.path)))  # a broken link: decoding names it
        except OSError as e:
            raise DataError(f"cannot list the folder: {reason(e)}", here) from None
    found.sort(key=lambda f: (f[0], f[1]))  # torchvision: sorted(os.walk(...)), then each folder's names sorted
    return [path for _, _, path in found], looked


def _identity(folder: Path) -> tuple[int, int]:
    st = folder.stat()
    return st.st_dev, st.st_ino


def image_folder(dir, size: int) -> Dataset:
    """Every image under `dir`/CLASS/ (sub-folders included), labelled by the index of CLASS
    among the sorted class folders, as x float32 [N, 3, size, size] in 0..1.

    >>> image_folder("data/pets", 64).class_names      # doctest: +SKIP
    ('cat', 'dog')
    """
    folder = directory(dir)
    try:
        import PIL  # noqa: F401  (decode_pixels uses it)
    except ImportError:
        raise DataError("reading images needs Pillow (pip install pillow)", folder) from None
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders (expected DIR/CLASS/IMAGE.png)", folder)
    files: list[tuple[Path, int]] = []
    empty, looked = [], 0
    for c, name in enumerate(classes):
        found, looked = image_files(folder / name, looked)
        files += [(f, c) for f in found]
        if not found:
            empty.append(name)
    if empty:
        others = f" (nor in {', '.join(empty[1:])})" if empty[1:] else ""
        raise DataError(f"no image in this class folder or its sub-folders{others}; images are files named "
                        f"{', '.join('*' + s for s in IMAGE_SUFFIXES)}", folder / empty[0])
    nbytes = len(files) * 3 * size * size * 4
    check_memory(nbytes, f"image_folder(size={size}): {len(files):,} images of {size}x{size} "
                         f"({human_bytes(nbytes)} as float32)", folder)
    x = np.empty((len(files), 3, size, size), np.float32)
    for n, (path, _) in enumerate(files):
        x[n] = decode_pixels(path, "RGB", (size, size)).transpose(2, 0, 1)
    y = np.array([c for _, c in files], np.int64)
    return checked(x, y, folder.name, folder, len(classes), classes)
