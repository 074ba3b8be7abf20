"""Grid planners: how each image is sliced into a global view and S x S tiles.

A plan is computed on the host from the image size alone and handed to the tile_resize op as
one int32 row (Plan.as_row). Three planners:

- `plan_slime`: SliME's "UHD" picker: 2 to 7 tiles chosen from the factor pairs of the
  image's area in tiles.
- `plan_pinpoints`: LLaVA-NeXT's anyres, best resolution from a fixed list ("pinpoints"),
  bit for bit the original LLaVA-NeXT code (or HF transformers', given pinpoints_hw).
- `plan_fixed`: a fixed grid for every image.

Every size says its order in its name: `width, height` arguments, `*_wh` and `*_hw` pairs.

All three then resize-and-pad: the image is resized to fit the grid canvas keeping its aspect
ratio, pasted centred on black, and cut into tiles row-major; the global view (a plain resize
of the whole image to S x S) comes first.
"""
import dataclasses
import math

DEFAULT_TILE = 336


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one image is sliced: a grid_w x grid_h grid of tile_size tiles cut from a canvas on
    which the image, resized to new_w x new_h, is pasted at (off_x, off_y); with global_view
    the whole image resized to tile_size x tile_size comes first."""
    grid_w: int        # tiles across
    grid_h: int        # tiles down
    new_w: int         # size the image is resized to before padding
    new_h: int
    off_x: int         # where the resized image is pasted on the (grid_w*S, grid_h*S) canvas
    off_y: int
    global_view: bool  # a global view (plain resize to S x S) is the first crop
    tile_size: int

    @property
    def num_crops(self):
        return int(self.global_view) + self.grid_w * self.grid_h

    @property
    def canvas_wh(self):
        """(width, height) of the padded canvas the tiles are cut from."""
        return self.grid_w * self.tile_size, self.grid_h * self.tile_size

    def as_row(self):
        """The int32 row the op reads (slime/tile_resize.h PlanField order)."""
        return [self.grid_w, self.grid_h, self.new_w, self.new_h, self.off_x, self.off_y,
                int(self.global_view)]


def _check_size(width, height):
    if not (isinstance(width, int) and isinstance(height, int)) or width < 1 or height < 1:
        raise ValueError(f"image size must be positive integers, got {width}x{height}")


def _check_tile(tile_size):
    if not isinstance(tile_size, int) or tile_size < 16 or tile_size > 1024:
        raise ValueError(f"tile_size must be an integer in [16, 1024], got {tile_size!r}")


def select_best_resolution(width, height, candidates_wh):
    """The candidate (width, height) that keeps the most of the image's pixels after an
    aspect-preserving fit (`effective`), on a tie the one that wastes the least canvas; else the
    earlier one (LLaVA-NeXT's select_best_resolution)."""
    best, best_eff, best_waste = None, -1, math.inf
    for cw, ch in candidates_wh:
        s = min(cw / width, ch / height)
        eff = min(int(width * s) * int(height * s), width * height)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    return best


def resize_and_pad(width, height, canvas_w, canvas_h):
    """(new_w, new_h, off_x, off_y): the aspect-preserving fit of the image in the canvas
    (rounded up, as the released code does) and where it is pasted, centred."""
    sw, sh = canvas_w / width, canvas_h / height
    if sw < sh:
        new_w, new_h = canvas_w, min(math.ceil(height * sw), canvas_h)
    else:
        new_h, new_w = canvas_h, min(math.ceil(width * sh), canvas_w)
    return new_w, new_h, (canvas_w - new_w) // 2, (canvas_h - new_h) // 2


def _plan_for_grid(width, height, grid_w, grid_h, tile_size, global_view):
    nw, nh, ox, oy = resize_and_pad(width, height, grid_w * tile_size, grid_h * tile_size)
    return Plan(grid_w, grid_h, nw, nh, ox, oy, bool(global_view), tile_size)


def slime_grid(width, height, tile_size=DEFAULT_TILE):
    """SliME's UHD grid (tiles across, tiles down) for an image of width x height."""
    _check_size(width, height)
    _check_tile(tile_size)
    scale = math.ceil(width * height / (tile_size * tile_size))
    scale = 6 if scale > 6 else (2 if scale == 1 else scale)
    counts = [scale, scale + 1] if scale <= 2 else [scale - 1, scale, scale + 1]
    pairs = [(i, n // i) for n in counts for i in range(1, n + 1) if n % i == 0]
    cw, ch = select_best_resolution(width, height,
                                    [(w * tile_size, h * tile_size) for w, h in pairs])
    return cw // tile_size, ch // tile_size


def plan_slime(width, height, tile_size=DEFAULT_TILE, global_view=True):
    """SliME's plan: UHD grid, resize-and-pad, tiles, global view first."""
    gw, gh = slime_grid(width, height, tile_size)
    return _plan_for_grid(width, height, gw, gh, tile_size, global_view)


# LLaVA-NeXT's default pinpoints, in tiles (w, h): 1x2, 2x1, 2x2, 3x1, 1x3.
DEFAULT_PINPOINT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def _refuse_unordered(kwargs, name, ordered):
    """A size argument whose order is not in its name is refused: (w, h) and (h, w) lists are
    both in use and a wrong guess gives a transposed grid, not an error."""
    if name in kwargs:
        raise TypeError(f"{name}= is ambiguous; pass {ordered}")
    if kwargs:
        raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}")


def pinpoints_to_wh(tile_size, pinpoints_wh=None, pinpoints_hw=None):
    """The pinpoints as a list of (width, height) tuples, validated.

    pinpoints_wh: [(width, height), ...] in pixels, the order of the original LLaVA-NeXT code.
    pinpoints_hw: [(height, width), ...] in pixels, the order of HF transformers'
                  `image_grid_pinpoints`. Each pair is swapped; the list order is kept, since
                  ties between candidates go to the earlier one.
    Neither: DEFAULT_PINPOINT_GRIDS times tile_size (LLaVA-NeXT's list, read as (w, h))."""
    if pinpoints_wh is not None and pinpoints_hw is not None:
        raise TypeError("pass pinpoints_wh or pinpoints_hw, not both")
    if pinpoints_wh is None and pinpoints_hw is None:
        return [(w * tile_size, h * tile_size) for w, h in DEFAULT_PINPOINT_GRIDS]
    name, given = ("pinpoints_wh", pinpoints_wh) if pinpoints_hw is None else ("pinpoints_hw",
                                                                                pinpoints_hw)
    pairs = [tuple(p) for p in given]
    if not pairs:
        raise ValueError(f"{name} must not be empty")
    for p in pairs:
        if (len(p) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < tile_size
                               or v % tile_size for v in p)):
            raise ValueError(f"{name}: {list(p)} must be two positive multiples of tile_size "
                             f"{tile_size}")
    return pairs if name == "pinpoints_wh" else [(w, h) for h, w in pairs]


def plan_pinpoints(width, height, tile_size=DEFAULT_TILE, *, pinpoints_wh=None,
                   pinpoints_hw=None, global_view=True, **unordered):
    """LLaVA-NeXT's anyres plan for an image of width x height: the best pinpoint
    (select_best_resolution), resize-and-pad, tiles, global view first.

    Give the candidates as pinpoints_wh ((width, height) pairs, the original LLaVA-NeXT code's
    order) or pinpoints_hw ((height, width) pairs, HF transformers' `image_grid_pinpoints`);
    see pinpoints_to_wh. The two orders only disagree on ties (e.g. every image with both sides
    at most 336 on LLaVA-NeXT's list: (w, h) gives 1 tile across and 2 down, (h, w) 2 across
    and 1 down), so a bare `pinpoints=` is refused rather than guessed."""
    _refuse_unordered(unordered, "pinpoints", "pinpoints_wh=[(width, height), ...] (original "
                      "LLaVA-NeXT order) or pinpoints_hw=[(height, width), ...] (HF's "
                      "image_grid_pinpoints)")
    _check_size(width, height)
    _check_tile(tile_size)
    cw, ch = select_best_resolution(width, height,
                                    pinpoints_to_wh(tile_size, pinpoints_wh, pinpoints_hw))
    return _plan_for_grid(width, height, cw // tile_size, ch // tile_size, tile_size, global_view)


def plan_fixed(width, height, grid_wh=(2, 2), tile_size=DEFAULT_TILE, global_view=True,
               **unordered):
    """The same grid_wh (tiles across, tiles down) for every image of width x height;
    (0, 0): global view only."""
    _refuse_unordered(unordered, "grid", "grid_wh=(tiles across, tiles down)")
    _check_size(width, height)
    _check_tile(tile_size)
    gw, gh = grid_wh
    if gw == 0 and gh == 0:
        if not global_view:
            raise ValueError("a plan needs tiles or a global view")
        return Plan(0, 0, 0, 0, 0, 0, True, tile_size)
    if not (isinstance(gw, int) and isinstance(gh, int)) or not (1 <= gw <= 64 and 1 <= gh <= 64):
        raise ValueError(f"grid_wh must be (0, 0) or two integers in [1, 64], got {grid_wh!r}")
    return _plan_for_grid(width, height, gw, gh, tile_size, global_view)


PLANNERS = {"slime": plan_slime, "pinpoints": plan_pinpoints, "fixed": plan_fixed}
