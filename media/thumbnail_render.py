"""Pillow's part of thumbnailing (see `thumbnails`): decode with the pixel cap, orient, resize, encode."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence

from media.thumbnails import FORMAT_TYPES, Thumbnail, ThumbnailError, ThumbnailSpec


def render(source: Path, spec: ThumbnailSpec, *, max_pixels: int, max_frames: int) -> Thumbnail:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                return _thumbnail(im, spec, max_pixels, max_frames)
    except ThumbnailError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ThumbnailError("Image is too large to thumbnail", too_large=True) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ThumbnailError(f"Cannot generate thumbnails for this content ({type(e).__name__})") from None


def _thumbnail(im: Image.Image, spec: ThumbnailSpec, max_pixels: int, max_frames: int) -> Thumbnail:
    fmt = im.format or ""
    if fmt not in FORMAT_TYPES:
        raise ThumbnailError("Cannot generate thumbnails for this content type")
    width, height = im.size
    if width < 1 or height < 1:
        raise ThumbnailError("Image has no pixels")
    if width * height > max_pixels:
        raise ThumbnailError("Image is too large to thumbnail", too_large=True)
    frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    animate = spec.animated and frames > 1 and width * height * min(frames, max_frames) <= max_pixels * 4
    size = _target_size(width, height, spec)
    if size == (width, height) and (frames == 1 or animate) and _orientation(im) == 1:
        return Thumbnail(FORMAT_TYPES[fmt], None)  # never upscale: the original is the answer
    if animate:
        return _animated(im, spec, size, max_frames)
    im.seek(0)
    if fmt == "JPEG":
        im.draft("RGB", _cover(width, height, spec) if spec.method == "crop" else size)
    frame = ImageOps.exif_transpose(im)
    out = _resize(frame, spec, size)
    buf = io.BytesIO()
    if fmt == "JPEG":
        out.convert("RGB").save(buf, "JPEG", quality=80)
        return Thumbnail("image/jpeg", buf.getvalue())
    if out.mode not in ("RGB", "RGBA", "L", "LA"):
        out = out.convert("RGBA")
    out.save(buf, "PNG", compress_level=3)
    return Thumbnail("image/png", buf.getvalue())


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not worth failing over
        return 1


def _target_size(width: int, height: int, spec: ThumbnailSpec) -> tuple[int, int]:
    """The output size: within the box for scale, the box (clipped to the image) for crop."""
    if spec.method == "scale":
        ratio = min(spec.width / width, spec.height / height, 1.0)
        return max(1, round(width * ratio)), max(1, round(height * ratio))
    return min(spec.width, width), min(spec.height, height)


def _cover(width: int, height: int, spec: ThumbnailSpec) -> tuple[int, int]:
    """The size the image is scaled to before cropping: the smallest that covers the box."""
    ratio = min(max(spec.width / width, spec.height / height), 1.0)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _resize(frame: Image.Image, spec: ThumbnailSpec, size: tuple[int, int]) -> Image.Image:
    if frame.mode == "P":
        frame = frame.convert("RGBA")
    if spec.method == "scale":
        return frame.resize(size, Image.Resampling.LANCZOS) if frame.size != size else frame
    # crop: scale so the box is covered, then cut the middle out
    cover = _cover(frame.width, frame.height, spec)
    if frame.size != cover:
        frame = frame.resize(cover, Image.Resampling.LANCZOS)
    left = (frame.width - size[0]) // 2
    top = (frame.height - size[1]) // 2
    return frame.crop((left, top, left + size[0], top + size[1]))


def _animated(im: Image.Image, spec: ThumbnailSpec, size: tuple[int, int], max_frames: int) -> Thumbnail:
    frames: list[Image.Image] = []
    durations: list[int] = []
    for i, frame in enumerate(ImageSequence.Iterator(im)):
        if i >= max_frames:
            break
        durations.append(int(frame.info.get("duration", 100) or 100))
        frames.append(_resize(frame.convert("RGBA"), spec, size))
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                   loop=int(im.info.get("loop", 0)), quality=75, method=0)
    return Thumbnail("image/webp", buf.getvalue())
