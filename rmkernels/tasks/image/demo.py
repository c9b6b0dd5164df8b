"""``rmk image demo``: one instance decoded, drawn as a labelled PNG (Pillow).

Top row: the source image, the input (repair: corrupted pixels outlined in red; inpaint: the
masked region in blue; edit: the new class), the set of pixels re-masked at any step (orange), the
result (pixels that differ from the input outlined in green) with the digit classifier's reading.
Bottom row: the decoding trajectory, one frame per step that changed the canvas (masked pixels in
blue, re-masked this step outlined in orange, revealed this step outlined in green).
Levels are drawn dark on light (0 white, 16 black), each pixel ``scale`` x ``scale``.
"""
from __future__ import annotations

import numpy as np

from rmkernels.tasks.image.data import LEVELS, MASK_ID, SIDE

MASK_RGB = (70, 130, 220)
RED, GREEN, ORANGE = (220, 40, 40), (30, 160, 60), (245, 150, 30)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def draw_digit(pixels, scale: int = 16, outline=None, fill=None):
    """An RGB image of ``pixels [64]`` (levels, ``MASK_ID`` in blue); ``outline`` / ``fill``:
    ``{color: bool [64]}`` pixels to outline / fill in that colour."""
    from PIL import Image, ImageDraw

    p = np.asarray(pixels).reshape(SIDE, SIDE)
    g = (255 - np.clip(p, 0, LEVELS - 1) * 255 // (LEVELS - 1)).astype(np.uint8)
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    rgb[p == MASK_ID] = MASK_RGB
    for color, where in (fill or {}).items():
        rgb[np.asarray(where).reshape(SIDE, SIDE)] = color
    img = Image.fromarray(rgb, "RGB").resize((SIDE * scale, SIDE * scale), Image.NEAREST)
    d = ImageDraw.Draw(img)
    for color, where in (outline or {}).items():
        for r, c in zip(*np.nonzero(np.asarray(where).reshape(SIDE, SIDE))):
            d.rectangle([c * scale, r * scale, (c + 1) * scale - 1, (r + 1) * scale - 1], outline=color, width=2)
    d.rectangle([0, 0, SIDE * scale - 1, SIDE * scale - 1], outline=(160, 160, 160))
    return img


def distinct_frames(trajectory):
    """Indices of the frames of ``trajectory [T + 1, 64]`` that differ from the previous one (and 0)."""
    traj = np.asarray(trajectory)
    keep = [0] + [t for t in range(1, len(traj)) if not np.array_equal(traj[t], traj[t - 1])]
    return keep


def render_demo(source, inputs, final, trajectory, *, title: str, input_label: str, result_label: str,
                corrupted=None, scale: int = 16, source_label: str = "source"):
    """The demo picture (a PIL image); ``trajectory [T + 1, 64]`` pixel canvases (entry 0 = input)."""
    from PIL import Image, ImageDraw

    traj = np.asarray(trajectory)
    src, x, y = (np.asarray(a) for a in (source, inputs, final))
    remasked_any = ((traj[1:] == MASK_ID) & (traj[:-1] != MASK_ID)).any(0) if len(traj) > 1 else np.zeros(64, bool)
    top = [
        (source_label, draw_digit(src, scale)),
        (input_label, draw_digit(x, scale, outline={RED: corrupted} if corrupted is not None else None)),
        (f"re-masked: {int(remasked_any.sum())} px", draw_digit(x, scale, fill={ORANGE: remasked_any})),
        (result_label, draw_digit(y, scale, outline={GREEN: (y != x) & (x != MASK_ID)})),
    ]
    frames = distinct_frames(traj)
    if len(frames) > 12:  # the first 11 changes and the last
        frames = frames[:11] + frames[-1:]
    fs = scale if len(frames) <= 5 else max(8, scale * 5 // len(frames))
    bottom = []
    for k, t in enumerate(frames):
        prev = traj[t - 1] if t else traj[0]
        rem = (traj[t] == MASK_ID) & (prev != MASK_ID)
        rev = (traj[t] != MASK_ID) & (prev == MASK_ID)
        label = "start" if t == 0 else f"step {t}: -{int(rem.sum())} / +{int(rev.sum())}"
        bottom.append((label, draw_digit(traj[t], fs, outline={ORANGE: rem, GREEN: rev})))
    font, small = _font(14), _font(11)
    pad, text_h, title_h = 10, 18, 26
    w_top = sum(im.width for _, im in top) + pad * (len(top) + 1)
    w_bot = sum(im.width for _, im in bottom) + pad * (len(bottom) + 1)
    h_top = top[0][1].height + text_h
    h_bot = max(im.height for _, im in bottom) + text_h
    W = max(w_top, w_bot, 420)
    H = title_h + h_top + pad * 2 + 18 + h_bot + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((pad, 5), title, fill=(0, 0, 0), font=font)
    xo, yo = pad, title_h
    for label, im in top:
        canvas.paste(im, (xo, yo))
        d.text((xo, yo + im.height + 2), label, fill=(0, 0, 0), font=small)
        xo += im.width + pad
    yo += h_top + pad
    d.text((pad, yo), "trajectory, frames that changed (blue: masked; -n orange: re-masked, +n green: revealed "
                      "at that step)",
           fill=(60, 60, 60), font=small)
    yo += 18
    xo = pad
    for label, im in bottom:
        canvas.paste(im, (xo, yo))
        d.text((xo, yo + im.height + 2), label, fill=(0, 0, 0), font=small)
        xo += im.width + pad
    return canvas


__all__ = ["distinct_frames", "draw_digit", "render_demo"]
