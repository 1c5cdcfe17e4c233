"""Decoding images: with PIL in the loader workers (small, by DCT scaling, when the crop
shrinks them anyway), or left encoded and decoded as a batch on the training device (nvJPEG)."""

import io
from collections.abc import Callable
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError

from datasets.cifar import DataError

DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB, or raise DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def decode_rgb(image: Image.Image, reduce_by: float = 1.0) -> torch.Tensor:
    """uint8 3 x H x W of an opened, not yet decoded image. A JPEG that will be shrunk by
    reduce_by or more anyway is decoded up to that much smaller (DCT scaling, PIL's draft),
    in powers of 2, which is several times cheaper than decoding it whole."""
    scale = max((s for s in (1, 2, 4, 8) if s <= reduce_by), default=1)
    if scale > 1 and image.format == "JPEG":
        width, height = image.size
        # draft picks the largest of 1/2/4/8 with width // requested >= it: exactly scale.
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    # One copy out of PIL (pil_to_tensor makes two); H x W x 3 viewed as 3 x H x W, a
    # layout torchvision's uint8 resize is fastest on.
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1)


def rescale_box(box, width: int, height: int, pixels: torch.Tensor):
    """A crop box (x1, y1, w, h) given on the width x height original, on decoded pixels
    that may be smaller (draft decoding); None stays None."""
    if box is None or pixels.shape[-2:] == (height, width):
        return box
    sy, sx = pixels.shape[-2] / height, pixels.shape[-1] / width
    x1, y1 = round(box[0] * sx), round(box[1] * sy)
    w = max(1, min(round(box[2] * sx), pixels.shape[-1] - x1))
    h = max(1, min(round(box[3] * sy), pixels.shape[-2] - y1))
    return x1, y1, w, h


class Encoded(NamedTuple):
    """A JPEG a loader worker left encoded, to be decoded on the training device (nvJPEG on
    CUDA) and then placed: cropped, resized and flipped as the worker planned."""

    path: str
    data: torch.Tensor  # the file's bytes
    place: Callable[[torch.Tensor], torch.Tensor]


def device_decodable(image: Image.Image) -> bool:
    """Whether a device decoder (nvJPEG) decodes this opened image right: a baseline 8-bit
    JPEG in colour (YCbCr) or grey. nvJPEG does not convert CMYK or YCCK (some 22 images
    of ImageNet's train set are CMYK), so those, progressive and 12-bit JPEGs, and every
    other format are decoded by the loader workers."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and getattr(image, "bits", 8) == 8
    )


def decode_jpegs(images: list[Encoded], device: torch.device, skip_corrupt: bool) -> list:
    """Decoded RGB pixels on device for each JPEG (TorchCodec; nvJPEG on CUDA), all at
    once, or one by one when that fails: a JPEG the device decoder refuses is decoded by
    PIL instead; an unreadable one is named, or None when skipping."""
    from torchcodec.decoders import decode_jpeg  # only when decoding on the device

    datas = [image.data for image in images]
    try:
        return decode_jpeg(datas, mode="RGB", device=device)
    except RuntimeError:
        pass
    decoded = []
    for image in images:
        try:
            decoded.append(decode_jpeg(image.data, mode="RGB", device=device))
        except RuntimeError:
            decoded.append(decoded_by_pil(image, device, skip_corrupt))
    return decoded


def decoded_by_pil(image: Encoded, device: torch.device, skip_corrupt: bool):
    """An encoded JPEG decoded by PIL and moved to device; None when unreadable and
    skipping, else DataError naming it."""
    try:
        with Image.open(io.BytesIO(image.data.numpy().tobytes())) as opened:
            return decode_rgb(opened).to(device)
    except DECODE_ERRORS as exc:
        if not skip_corrupt:
            raise DataError(f"cannot read image {image.path}: {exc}") from None
        return None


def decode_batch(images: list, device: torch.device, skip_corrupt: bool = False):
    """A collated list of Encoded JPEGs and worker-decoded tensors as one uint8 batch on
    device, and the positions kept (an unreadable JPEG is dropped when skipping)."""
    jpegs = [image for image in images if isinstance(image, Encoded)]
    decoded = iter(decode_jpegs(jpegs, device, skip_corrupt) if jpegs else [])
    batch, kept = [], []
    for position, image in enumerate(images):
        if isinstance(image, Encoded):
            pixels = next(decoded)
            if pixels is None:
                continue
            batch.append(image.place(pixels))
        else:
            batch.append(image.to(device, non_blocking=True))
        kept.append(position)
    return (torch.stack(batch) if batch else torch.empty(0)), kept


def check_device_decoding(device: torch.device) -> None:
    """Decode a tiny JPEG on device, or raise DataError saying why it cannot."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError as exc:
        raise DataError(
            f"-decodeOnDevice true needs TorchCodec ({exc}): pip install torchcodec, or run"
            " without it"
        ) from None
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "JPEG")
    try:
        decode_jpeg(tiny.getvalue(), device=device)
    except (RuntimeError, ValueError) as exc:
        raise DataError(
            f"-decodeOnDevice true: TorchCodec cannot decode JPEGs on {device} ({exc});"
            " run without it"
        ) from None
