"""A loss curve as a PNG, drawn with Pillow (no plotting library needed).

    plot_losses({"Ia": [(1, 2.31), (2, 2.20), ...], "Ib": [...]}, "loss.png")

Stages are laid end to end on one step axis, each in its own colour, with the y range
from the smallest to the largest finite loss; a light line shows the raw losses, a dark one
their moving average.
"""
import math

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def _smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _fmt(v):
    return f"{v:.3g}"


def plot_losses(series, path, size=(800, 480), title="training loss"):
    """Writes the PNG; series: {name: [(step, loss), ...]} in stage order. Returns path."""
    if not isinstance(series, dict):
        raise TypeError(f"series must be a dict {{name: [(step, loss)]}}, got "
                        f"{type(series).__name__}")
    W, H = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((left, 12), title, fill="black", font=font)
    points, offset = [], 0
    for name, rows in series.items():
        rows = [(s, v) for s, v in rows if v is not None and math.isfinite(v)]
        points.append((name, [(offset + s, v) for s, v in rows]))
        offset += max((s for s, _ in rows), default=0)
    ys = [v for _, pts in points for _, v in pts]
    x0, x1 = left, W - right
    y0, y1 = H - bottom, top
    draw.rectangle([x0, y1, x1, y0], outline="black")
    if not ys:
        draw.text((x0 + 10, y1 + 10), "no finite losses logged", fill="black", font=font)
        img.save(path)
        return path
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xmax = max(offset, 1)
    sx = lambda s: x0 + (x1 - x0) * s / xmax  # noqa: E731
    sy = lambda v: y0 - (y0 - y1) * (v - lo) / (hi - lo)  # noqa: E731
    for k in range(5):  # horizontal grid and y labels
        v = lo + (hi - lo) * k / 4
        y = sy(v)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.text((8, y - 6), _fmt(v), fill="black", font=font)
    for k in range(5):
        s = xmax * k / 4
        draw.text((sx(s) - 10, y0 + 8), _fmt(s), fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 15, H - 20), "step", fill="black", font=font)
    legend_x = x0 + 10
    for i, (name, pts) in enumerate(points):
        colour = COLOURS[i % len(COLOURS)]
        light = tuple(int(c + (255 - c) * 0.6) for c in colour)
        xy = [(sx(s), sy(v)) for s, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=light, width=1)
            smooth = _smooth([v for _, v in pts], max(1, len(pts) // 20))
            draw.line([(x, sy(v)) for (x, _), v in zip(xy, smooth)], fill=colour, width=2)
        elif xy:
            x, y = xy[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.rectangle([legend_x, y1 + 8, legend_x + 10, y1 + 18], fill=colour)
        draw.text((legend_x + 14, y1 + 7), str(name), fill="black", font=font)
        legend_x += 20 + 7 * len(str(name)) + 10
    img.save(path)
    return path
