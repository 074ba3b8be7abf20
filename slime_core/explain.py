"""A picture of what SliME looked at: the image with its tile grid, and the local tokens the
text-guided selection kept (clear) or dropped (shaded). Drawn with Pillow alone."""
from PIL import Image, ImageDraw


def token_cells(plan, positions, side, order, width, height):
    """Original-image boxes (x0, y0, x1, y1) of local token positions.

    plan: the image's preprocess Plan (grid, resize-and-pad); positions: indices into the
    image's local tokens in `order` ("raster": one grid row by row, "tile": tile after
    tile); side: tokens per tile side; width, height: the original image's size."""
    S, gw = plan.tile_size, plan.grid_w
    sx, sy = plan.new_w / width, plan.new_h / height
    boxes = []
    for p in positions:
        if order == "raster":
            row, col = divmod(p, gw * side)
        else:
            tile, within = divmod(p, side * side)
            row = (tile // gw) * side + within // side
            col = (tile % gw) * side + within % side
        x0, y0 = col * S / side - plan.off_x, row * S / side - plan.off_y  # canvas -> resized
        x1, y1 = x0 + S / side, y0 + S / side
        boxes.append((x0 / sx, y0 / sy, x1 / sx, y1 / sy))               # resized -> original
    return boxes


def draw_selection(image, plan, kept, n_local, side, order, caption="", max_side=1024):
    """image: the original PIL image; kept: kept local token positions; n_local: how many
    local tokens there were. Returns a new RGB image, at most max_side pixels on a side."""
    scale = min(1.0, max_side / max(image.width, image.height))
    out = image.convert("RGB").resize((max(1, round(image.width * scale)),
                                       max(1, round(image.height * scale))))
    shade = Image.new("L", out.size, 0)
    d = ImageDraw.Draw(shade)
    kept_set = set(kept)
    dropped = [p for p in range(n_local) if p not in kept_set]
    for x0, y0, x1, y1 in token_cells(plan, dropped, side, order, image.width, image.height):
        d.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], fill=150)
    out = Image.composite(Image.new("RGB", out.size, (20, 20, 40)), out, shade)
    draw = ImageDraw.Draw(out)
    S = plan.tile_size
    sx, sy = plan.new_w / image.width, plan.new_h / image.height
    for i in range(plan.grid_w + 1):  # tile borders, mapped back onto the original image
        x = (i * S - plan.off_x) / sx * scale
        draw.line([(x, 0), (x, out.height)], fill=(255, 200, 0), width=2)
    for j in range(plan.grid_h + 1):
        y = (j * S - plan.off_y) / sy * scale
        draw.line([(0, y), (out.width, y)], fill=(255, 200, 0), width=2)
    label = f"{plan.grid_w}x{plan.grid_h} tiles, kept {len(kept_set)}/{n_local} local tokens"
    draw.rectangle([0, 0, out.width, 14], fill=(0, 0, 0))
    draw.text((3, 2), f"{label}  {caption}"[:200], fill=(255, 255, 255))
    return out


def prompt_ids(tokenizer, template, prompt):
    """(1, T) input ids of a one-turn prompt for generation (the image first)."""
    import torch

    from slime_core.text import build_prompt, get_template, tokenize_prompt
    text = prompt if "<image>" in prompt else "<image>\n" + prompt
    ids = tokenize_prompt(tokenizer, build_prompt(get_template(template),
                                                  [{"from": "human", "value": text}]))
    return torch.tensor([ids])


def selection_png(model, tokenizer, processor, image, prompt, out, template="vicuna_v1"):
    """Writes `out`: draw_selection of the local tokens `model` keeps for `prompt` about
    `image` (a PIL image). Returns (kept, local token count). Raises ValueError for a
    global-only model (it selects nothing)."""
    import torch
    images = processor([image])
    ids = prompt_ids(tokenizer, template, prompt)
    model.eval()
    with torch.no_grad():
        text, text_mask = model.selection_text(ids)
        _, _, sel = model.image_tokens(images.pixel_values, images.crops_per_image,
                                       images.grids_wh, text, text_mask, return_selection=True)
    if sel is None:
        raise ValueError("this model runs the global view only: there is no selection")
    indices, kept, local = sel
    draw_selection(image, images.plans[0], indices[0, :int(kept[0])].tolist(), int(local[0]),
                   model.local_side, model.config.local_order, prompt).save(out)
    return int(kept[0]), int(local[0])
