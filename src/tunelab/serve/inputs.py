"""What a served run accepts: a request's inputs checked against the run's kind (texts,
sentence pairs, images) with one clear message for anything else, and uploaded images
decoded and checked before they reach the model. Never a path on the server: an image
arrives as bytes (base64 in JSON, or a raw body) and is written to a private temporary
file that the run's own image loader then reads, exactly as evaluation did."""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
from pathlib import Path

from tunelab.data.image_sources import MAX_PIXELS, to_rgb

IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


class BadInput(ValueError):
    """A request the model cannot take: answered 422 with this one message."""


def parse_inputs(kind: str, inputs) -> list:
    """The items of a request's ``inputs`` for a run that takes ``kind`` (text, pairs or
    images): texts as strings, pairs as (first, second), images as their bytes."""
    if not isinstance(inputs, list):
        raise BadInput("'inputs' must be a list")
    if not inputs:
        raise BadInput("'inputs' is empty: give at least one input")
    parse = {"text": _text, "pairs": _pair, "images": _image_bytes}[kind]
    return [parse(item, position) for position, item in enumerate(inputs, 1)]


def _nonempty(value, position: int, what: str = "input") -> str:
    if not isinstance(value, str):
        raise BadInput(f"{what} {position} is a {type(value).__name__}, not text")
    if not value.strip():
        raise BadInput(f"{what} {position} is empty")
    return value


def _text(item, position: int) -> str:
    if isinstance(item, dict) and set(item) == {"text"}:
        item = item["text"]
    if isinstance(item, (list, dict)):
        raise BadInput(f"input {position}: this model takes single texts, not pairs or objects")
    return _nonempty(item, position)


def _pair(item, position: int) -> tuple[str, str]:
    if isinstance(item, dict) and set(item) == {"text", "pair"}:
        item = [item["text"], item["pair"]]
    if not isinstance(item, list) or len(item) != 2:
        raise BadInput(f"input {position}: this model takes sentence pairs, each [first, second] or "
                       '{"text": ..., "pair": ...}')
    return _nonempty(item[0], position), _nonempty(item[1], position, "pair of input")


def _image_bytes(item, position: int) -> bytes:
    if isinstance(item, dict) and set(item) == {"image"}:
        item = item["image"]
    if not isinstance(item, str):
        raise BadInput(f"input {position}: this model takes images, each a base64 string or {{\"image\": base64}}")
    try:
        return base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"input {position} is not base64-encoded image bytes") from None


def check_image(data: bytes, position: int = 1) -> str:
    """The file suffix of an image whose bytes decode completely (size checked from the
    header first, as for files on disk); a corrupt or truncated image is a BadInput."""
    import warnings

    from PIL import Image

    if not data:
        raise BadInput(f"image {position} is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                suffix = IMAGE_FORMATS.get(image.format or "")
                if suffix is None:
                    raise BadInput(f"image {position} is {image.format}, not one of {', '.join(IMAGE_FORMATS)}")
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    raise BadInput(f"image {position} is {image.size[0]}x{image.size[1]} pixels, larger than "
                                   f"{MAX_PIXELS // 1_000_000} megapixels")
                image.load()
                to_rgb(image)
        except BadInput:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise BadInput(f"image {position} cannot be read: {error}") from None
    return suffix


class ImageFiles:
    """Checked images written to a private temporary folder, removed on exit."""

    def __init__(self, images: list[bytes]):
        self.suffixes = [check_image(data, i) for i, data in enumerate(images, 1)]
        self._folder = tempfile.TemporaryDirectory(prefix="tunelab-serve-")
        self.paths = []
        for i, (data, suffix) in enumerate(zip(images, self.suffixes)):
            path = Path(self._folder.name) / f"{i}{suffix}"
            path.write_bytes(data)
            self.paths.append(str(path))

    def __enter__(self) -> list[str]:
        return self.paths

    def __exit__(self, *exc) -> None:
        self._folder.cleanup()
