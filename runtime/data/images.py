"""A folder of image files, one sub-folder per class (the layout torchvision's ImageFolder reads).

    dir/cat/001.png  dir/cat/002.jpg  dir/dog/a.jpeg ...

Classes are the sub-folder names in sorted order. Every PNG or JPEG is decoded with
Pillow (imported only here, only when used), converted to RGB and resized to size x size
with bilinear filtering, ignoring its aspect ratio: x float32 [N, 3, size, size] in 0..1.
"""
from __future__ import annotations

import numpy as np

from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import directory

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_folder(dir, size: int) -> Dataset:
    """Every image under `dir`/CLASS/, labelled by the index of CLASS among the sorted sub-folders."""
    folder = directory(dir)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("reading images needs Pillow (pip install pillow)", folder) from None
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class sub-folders (expected DIR/CLASS/IMAGE.png)", folder)
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())
             if f.is_file() and f.suffix.lower() in EXTENSIONS]
    if not files:
        raise DataError(f"no {'/'.join(e[1:] for e in EXTENSIONS)} images in the class sub-folders", folder)
    x = np.empty((len(files), size, size, 3), np.uint8)
    for n, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                x[n] = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot decode image ({e})", path) from None
    y = np.array([c for _, c in files], np.int64)
    return checked(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, y, folder.name, folder,
                   len(classes), classes)
