"""Where pixels come from: image files under a root or an image column of a dataset,
opened as RGB (16-bit grayscale scaled, not clipped; images above MAX_PIXELS refused
from their header), and a split as rows of a source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.core.errors import DataError

# Images above this many pixels are refused as unreadable (skipped and listed, or
# stopping a --strict run): a 90-megapixel PNG takes 1.6 GB to decode, and classifiers
# see a few hundred pixels a side.
MAX_PIXELS = 50_000_000


def open_rgb(path):
    """An image file as RGB: its size checked from the header before anything is
    decoded (Pillow's decompression-bomb warning never reaches the console)."""
    with open_raw(path) as image:
        return to_rgb(image)


def open_raw(path):
    """An image file opened (its header read, pixels not yet decoded), refusing one above
    MAX_PIXELS before decoding."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            raise OSError(f"larger than {MAX_PIXELS // 1_000_000} megapixels") from None


def to_rgb(image):
    """RGB, as every model here takes: 16-bit grayscale scaled to 8 bits (Pillow's own
    conversion clips it, turning most pixels white), grayscale, palette and RGBA
    converted; above MAX_PIXELS refused."""
    from PIL import Image

    width, height = image.size
    if width * height > MAX_PIXELS:
        raise OSError(f"{width}x{height} pixels, larger than {MAX_PIXELS // 1_000_000} megapixels")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")  # grayscale, palette and RGBA become RGB


class FileImages:
    """Image files under a root; ids are paths relative to it."""

    def __init__(self, root: Path, paths: list[str]):
        self.root = root
        self.paths = paths

    def load(self, index: int):
        return open_rgb(self.root / self.paths[index])

    def raw(self, index: int):
        """The image as stored (mode, frames and size unchanged), for an audit."""
        return open_raw(self.root / self.paths[index])

    def name(self, index: int) -> str:
        return self.paths[index]

    def fingerprint(self, index: int) -> str:
        stat = (self.root / self.paths[index]).stat()
        return f"{self.paths[index]}:{stat.st_size}:{stat.st_mtime_ns}"


class RowImages:
    """An image column of a ``datasets.Dataset``; decoded on row access."""

    def __init__(self, dataset, column: str, label: str):
        self.dataset = dataset
        self.column = column
        self.label = label

    def load(self, index: int):
        return to_rgb(self.raw(index))

    def raw(self, index: int):
        image = self.dataset[int(index)][self.column]
        if image is None:
            raise OSError("empty image cell")
        return image

    def name(self, index: int) -> str:
        return f"{self.label}[{index}]"

    def fingerprint(self, index: int) -> str:
        return f"{self.dataset._fingerprint}:{index}"


@dataclass
class ImageSplit:
    source: FileImages | RowImages
    indices: np.ndarray  # rows of the source
    labels: np.ndarray  # encoded targets: class indices, label-set rows, or values
    ids: list[str]

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, rows: np.ndarray) -> ImageSplit:
        return ImageSplit(self.source, self.indices[rows], self.labels[rows], [self.ids[i] for i in rows])

    def load(self, row: int):
        return self.source.load(int(self.indices[row]))

    def raw(self, row: int):
        return self.source.raw(int(self.indices[row]))

    def digest(self) -> str:
        """Identifies exactly these images (names, sizes, times) for the feature cache."""
        import hashlib

        h = hashlib.sha256()
        for index in self.indices:
            h.update(self.source.fingerprint(int(index)).encode())
            h.update(b"\0")
        return h.hexdigest()


def files_split(paths) -> ImageSplit:
    """New image files (to predict: labels unknown) as a split to stream; a missing file
    stops in one line."""
    paths = [str(p) for p in paths]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image not found: {missing[0]}{more}")
    return ImageSplit(FileImages(Path("/"), [str(Path(p).resolve()) for p in paths]), np.arange(len(paths)),
                      np.zeros(len(paths), dtype=np.int64), paths)
