"""Images decoded lazily, in DataLoader workers on a GPU machine: each processed as the
model's own processor would (resize and crop in Pillow's arithmetic, or on the GPU),
batched with the rows they came from and the files that could not be read; never
materialised by a ``.map``."""

from __future__ import annotations

import os

import numpy as np

from tunelab.core.errors import DataError
from tunelab.core.runtime import is_cuda
from tunelab.data import resample
from tunelab.data.image_sources import ImageSplit, files_split


class ProcessedImages:
    """A torch-style dataset: decode + preprocess one image per item, in the worker."""

    def __init__(self, split: ImageSplit, preprocess, strict: bool = False):
        self.split = split
        self.preprocess = preprocess
        self.strict = strict

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, row: int):
        try:
            pixels = self.preprocess(self.split.load(row))
        except Exception as exc:  # PIL raises many types for broken files
            if self.strict:
                raise DataError(f"cannot read image {self.split.ids[row]}: {type(exc).__name__}: {exc}") from None
            return row, None, self.split.labels[row]
        return row, pixels, self.split.labels[row]  # a class index, a label-set row, or a value


def collate_images(batch):
    """Stack the readable images; name the rows that could not be read."""
    import torch

    good = [item for item in batch if item[1] is not None]
    pixels = [torch.as_tensor(item[1]) for item in good]
    return {
        "rows": torch.tensor([item[0] for item in good], dtype=torch.long),
        # Images still to be resized on the device may differ in size: a list then.
        "pixel_values": (torch.stack(pixels) if len({p.shape for p in pixels}) == 1 else pixels) if pixels
        else torch.empty(0),
        "labels": torch.as_tensor(np.stack([np.asarray(item[2]) for item in good])) if good
        else torch.empty(0, dtype=torch.long),
        "skipped": [item[0] for item in batch if item[1] is None],
    }


class ClipPreprocess:
    """Picklable image preprocessing. The processor's resize and crop run where images are
    decoded (DataLoader workers) and hand over uint8 pixels; its rescale and normalisation
    run batched where the model is (:meth:`model_input`). Exact: the processor's own
    geometry and constants, in its own order. Four times fewer bytes cross from workers,
    and the float work is one batched op on the device instead of per-image numpy."""

    def __init__(self, processor, resize_on_device: bool = False):
        self.processor = processor
        # With RGB conversion on, PIL hands the processor 8-bit images, so resized and
        # cropped pixels are uint8 too; other processors keep the processor's full path.
        self.deferred = bool(getattr(processor, "do_convert_rgb", False)) and all(
            hasattr(processor, name) for name in ("do_rescale", "rescale_factor", "do_normalize", "image_mean",
                                                  "image_std"))
        self.geometry = _plain_geometry(processor) if self.deferred else None
        # On a GPU the resize too runs where the model is (tunelab.data.resample: Pillow's
        # pixels exactly); workers then only decode.
        self.resize_on_device = bool(resize_on_device and self.geometry is not None
                                     and resample.supported(self.geometry[3]))
        if self.deferred:
            self.rescale = float(processor.rescale_factor) if processor.do_rescale else None
            self.mean = _per_channel(processor.image_mean) if processor.do_normalize else None
            self.std = _per_channel(processor.image_std) if processor.do_normalize else None

    @classmethod
    def for_device(cls, processor, device) -> ClipPreprocess:
        return cls(processor, resize_on_device=is_cuda(device))

    def __call__(self, image):
        import torch

        if self.resize_on_device:
            return torch.from_numpy(np.ascontiguousarray(np.asarray(_as_rgb(image)).transpose(2, 0, 1)))
        if self.geometry is not None and getattr(image, "mode", None) == "RGB":
            return torch.from_numpy(_resize_and_crop(image, *self.geometry))
        # return_tensors="pt": every backend gives tensors (a torchvision processor gives no NumPy).
        if self.deferred:
            pixels = np.asarray(self.processor(images=image, do_rescale=False, do_normalize=False,
                                               return_tensors="pt")["pixel_values"][0])
            if pixels.dtype != np.uint8:
                pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            return torch.from_numpy(np.ascontiguousarray(pixels))
        return torch.from_numpy(np.asarray(self.processor(images=image, return_tensors="pt")["pixel_values"][0],
                                           dtype=np.float32))

    def model_input(self, pixels, device, dtype=None):
        """Pixels as the model takes them: on ``device``, rescaled and normalised (when
        they came as uint8), in ``dtype``."""
        import torch

        if isinstance(pixels, (list, tuple)):  # images of several sizes, to be resized here
            pixels = torch.cat([self._resize_and_crop_batch(p.to(device, non_blocking=True)[None]) for p in pixels])
        else:
            pixels = pixels.to(device, non_blocking=True)
            if self.resize_on_device:
                pixels = self._resize_and_crop_batch(pixels)
        if pixels.dtype != torch.uint8:
            return pixels.to(dtype or torch.float32)
        pixels = pixels.float()
        if self.rescale is not None:
            pixels.mul_(self.rescale)
        if self.mean is not None:
            mean, std = self._constants(pixels.device)
            pixels.sub_(mean).div_(std)
        return pixels.to(dtype or torch.float32)

    def _resize_and_crop_batch(self, pixels):
        """uint8 (batch, 3, h, w) of one size, resized and cropped as :func:`_resize_and_crop`."""
        edge, height, width, filter_ = self.geometry
        new_w, new_h = _resized_size(pixels.shape[-1], pixels.shape[-2], edge)
        resized = resample.resize(pixels, new_h, new_w, filter_)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[..., top:top + height, left:left + width]

    def __getstate__(self) -> dict:
        # Workers get the preprocessing without the device copies (a spawned worker must not
        # receive CUDA tensors).
        return {k: v for k, v in self.__dict__.items() if k != "_on_device"}

    def _constants(self, device):
        """Mean and std on ``device``, made once: a fresh small copy to a GPU per batch
        would wait for the work queued before it."""
        import torch

        cache = self.__dict__.setdefault("_on_device", {})
        if str(device) not in cache:
            cache[str(device)] = tuple(torch.tensor(v, device=device).view(-1, 1, 1) for v in (self.mean, self.std))
        return cache[str(device)]


def _as_rgb(image):
    """RGB as the processors convert (transparency composited onto white)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _field(size, key: str):
    if size is None:
        return None
    return size.get(key) if hasattr(size, "get") else getattr(size, key, None)


def _plain_geometry(processor):
    """(shortest edge, crop height, crop width, PIL filter) where the processor resizes
    the shortest edge and centre-crops within it (CLIP's processors); else None."""
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    edge, height, width = _field(size, "shortest_edge"), _field(crop, "height"), _field(crop, "width")
    others = ("longest_edge", "height", "width", "max_height", "max_width", "min_pixels", "max_pixels")
    filter_ = getattr(processor, "resample", None)
    if not (getattr(processor, "do_resize", False) and getattr(processor, "do_center_crop", False)) or \
            getattr(processor, "do_pad", None) or filter_ is None or not (edge and height and width) or \
            any(_field(size, key) for key in others) or height > edge or width > edge:
        return None
    return int(edge), int(height), int(width), int(filter_)


def _resized_size(w: int, h: int, edge: int) -> tuple[int, int]:
    """(width, height) with the short side at ``edge`` and the long side truncated, as
    the processors compute it."""
    return (edge, int(edge * h / w)) if w <= h else (int(edge * w / h), edge)


def _resize_and_crop(image, edge: int, height: int, width: int, filter_: int) -> np.ndarray:
    """The processor's resize and centre crop, straight on the PIL image: the same
    sizes (short side to ``edge``, the long side truncated), the same PIL filter, the
    same crop offsets, so the same uint8 pixels, without the processor's per-call
    checks (0.43 against 0.52 ms for a Tiny ImageNet image; the full processor with its
    float normalisation took 1.09 ms)."""
    new_w, new_h = _resized_size(*image.size, edge)
    resized = np.asarray(image.resize((new_w, new_h), resample=filter_))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width].transpose(2, 0, 1))


def _per_channel(values) -> list[float]:
    return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)] * 3


def default_workers() -> int:
    """Worker processes that decode images. On a GPU they keep it fed; on a CPU they
    compete with the model for the same cores (measured slower here), so none."""
    import torch

    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def image_loader(split: ImageSplit, preprocess, batch_size: int, num_workers: int | None = None,
                 strict: bool = False, shuffle: bool = False, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    workers = default_workers() if num_workers is None else num_workers
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    # Pinned batches copy to a GPU asynchronously (non_blocking in model_input).
    return DataLoader(ProcessedImages(split, preprocess, strict), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, collate_fn=collate_images, generator=generator,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      pin_memory=torch.cuda.is_available())


def pixel_batches(processor, paths, batch_size: int = 16, device=None):
    """Image files as the model takes them, in order: (positions, normalised float32
    pixels) per batch; an unreadable file stops in one line."""
    import torch

    device = device or torch.device("cpu")
    split = files_split(paths)
    preprocess = ClipPreprocess(processor)
    for batch in image_loader(split, preprocess, batch_size, 0, strict=True):
        yield batch["rows"].numpy(), preprocess.model_input(batch["pixel_values"], device)


def image_outputs(processor, paths, run, batch_size: int = 16, device=None) -> np.ndarray:
    """``run(pixels)`` (a NumPy array per batch) over image files, stacked in their order:
    what a predictor's model or exported graph gives for new images."""
    paths = list(getattr(paths, "texts", paths))  # a TextInputs of paths, as predictors pass them
    out = None
    for rows, pixels in pixel_batches(processor, paths, batch_size, device):
        values = run(pixels)
        out = np.empty((len(paths), *values.shape[1:]), dtype=np.float32) if out is None else out
        out[rows] = values
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
