"""What the preview engine draws: colours, a landscape and sprites in yuv420p planes.

Everything here is a still picture made once per task (a landscape, the caption, a sun,
an image as a card); ``omniflash.engines.preview`` moves the camera and the sprites over
them, frame by frame.
"""

from __future__ import annotations

import math
import textwrap

import numpy
from PIL import Image, ImageDraw, ImageFont

from omniflash.media.encode import YuvFrame

__all__ = [
    "Sprite",
    "caption_sprite",
    "card_sprite",
    "contain",
    "cover",
    "ease",
    "even",
    "hsv",
    "landscape",
    "palette",
    "sun_sprite",
]


def even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def ease(t: float) -> float:
    """Smooth start and stop: 0 → 0, 1 → 1, zero slope at both ends."""
    return t * t * (3 - 2 * t)


def palette(rng: numpy.random.Generator) -> list[tuple[int, int, int]]:
    """Five related colours: a hue from the seed, shifted and shaded."""
    hue = rng.random()
    colours = []
    for shift, sat, val in ((0.0, 0.55, 0.95), (0.08, 0.45, 0.75), (0.5, 0.6, 0.55),
                            (0.55, 0.7, 0.35), (0.12, 0.35, 0.2)):  # fmt: skip
        h = (hue + shift) % 1.0
        colours.append(hsv(h, sat, val))
    return colours


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return round(r * 255), round(g * 255), round(b * 255)


def landscape(rng: numpy.random.Generator, width: int, height: int) -> Image.Image:
    """A landscape: a sky gradient, layered hills and a scatter of lights."""
    sky_top, sky_low, far, near, ground = palette(rng)
    ramp = numpy.linspace(0.0, 1.0, height, dtype=numpy.float32)[:, None]
    column = numpy.array(sky_top, numpy.float32) * (1 - ramp) + numpy.array(sky_low) * ramp
    sky = numpy.broadcast_to(column[:, None, :], (height, width, 3)).astype(numpy.uint8)
    image = Image.fromarray(numpy.ascontiguousarray(sky), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(30, 60))):
        x, y = rng.random() * width, rng.random() * height * 0.5
        r = max(1.0, height * 0.002 * (1 + rng.random() * 2))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 250, 235))
    for layer, colour in enumerate((far, near, ground)):
        base = height * (0.55 + 0.13 * layer)
        amplitude = height * (0.10 - 0.025 * layer)
        waves = rng.random(3) * 3 + 1
        phases = rng.random(3) * math.tau
        xs = numpy.linspace(0, width, 96)
        ys = base - amplitude * sum(
            numpy.sin(xs / width * math.tau * w + p) / (k + 1)
            for k, (w, p) in enumerate(zip(waves, phases, strict=True))
        )
        ridge = list(zip(xs.tolist(), ys.tolist(), strict=True))
        draw.polygon([(0.0, float(height)), *ridge, (float(width), float(height))], fill=colour)
    return image


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover width × height and crop the centre."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def contain(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to fit inside width × height, keeping its shape (even sides)."""
    scale = min(width / image.width, height / image.height)
    size = (even(image.width * scale), even(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


class Sprite:
    """Pre-converted yuv420p planes and masks, pasted at even positions."""

    def __init__(self, rgba: Image.Image) -> None:
        rgba = rgba.crop((0, 0, even(rgba.width), even(rgba.height)))
        planes = YuvFrame.from_rgb(numpy.asarray(rgba.convert("RGB")))
        self.y, self.u, self.v = planes.y.copy(), planes.u.copy(), planes.v.copy()
        alpha = numpy.asarray(rgba.getchannel("A"))
        self.mask = alpha >= 128
        self.chroma_mask = alpha[::2, ::2] >= 128
        self.opaque = bool(self.mask.all())
        self.width, self.height = rgba.width, rgba.height

    def paste(self, frame: YuvFrame, x: int, y: int) -> None:
        x, y = x // 2 * 2, y // 2 * 2
        h, w = frame.y.shape
        left, top = max(0, -x), max(0, -y)
        right, bottom = min(self.width, w - x), min(self.height, h - y)
        if right <= left or bottom <= top:
            return
        rows, cols = slice(y + top, y + bottom), slice(x + left, x + right)
        mine = slice(top, bottom), slice(left, right)
        crows, ccols = (
            slice(rows.start // 2, rows.stop // 2),
            slice(cols.start // 2, cols.stop // 2),
        )
        cmine = slice(top // 2, bottom // 2), slice(left // 2, right // 2)
        if self.opaque:
            frame.y[rows, cols] = self.y[mine]
            frame.u[crows, ccols] = self.u[cmine]
            frame.v[crows, ccols] = self.v[cmine]
        else:
            numpy.copyto(frame.y[rows, cols], self.y[mine], where=self.mask[mine])
            numpy.copyto(frame.u[crows, ccols], self.u[cmine], where=self.chroma_mask[cmine])
            numpy.copyto(frame.v[crows, ccols], self.v[cmine], where=self.chroma_mask[cmine])


def caption_sprite(prompt: str, width: int, height: int) -> Sprite:
    """The prompt, at most two lines, white on a dark band."""
    size = max(12, height // 24)
    font = ImageFont.load_default(size=size)
    chars = max(16, int(width * 0.8 / (size * 0.55)))
    lines = textwrap.wrap(" ".join(prompt.split()), chars, max_lines=2, placeholder=" …")
    pad = size // 2
    box_h = even(len(lines) * size * 1.3 + 2 * pad)
    box = Image.new("RGBA", (even(width * 0.9), box_h), (12, 12, 16, 255))
    draw = ImageDraw.Draw(box)
    for row, line in enumerate(lines):
        draw.text((pad * 2, pad + row * size * 1.3), line, font=font, fill=(245, 245, 245, 255))
    return Sprite(box)


def sun_sprite(rng: numpy.random.Generator, height: int) -> Sprite:
    diameter = even(height * 0.16)
    disc = Image.new("RGBA", (diameter, diameter), (0, 0, 0, 0))
    colour = hsv(0.08 + rng.random() * 0.08, 0.35, 1.0)
    ImageDraw.Draw(disc).ellipse((0, 0, diameter - 1, diameter - 1), fill=(*colour, 255))
    return Sprite(disc)


def card_sprite(image: Image.Image, width: int, height: int) -> Sprite:
    """An image fitted into width × height with a white border."""
    inner = contain(image.convert("RGB"), width - 8, height - 8)
    border = max(2, inner.height // 60) * 2
    card = Image.new("RGBA", (inner.width + 2 * border, inner.height + 2 * border), "white")
    card.paste(inner, (border, border))
    return Sprite(card)
