"""Grid planners: how each image is sliced into a global view and S x S tiles.

A plan is computed on the host from the image size alone and handed to the tile_resize op as
one int32 row (Plan.as_row). Three planners:

- `plan_slime`: SliME's "UHD" picker (SLIME_SPEC section 2): 2 to 7 tiles chosen from the
  factor pairs of the image's area in tiles.
- `plan_pinpoints`: LLaVA-NeXT's anyres, best resolution from a fixed list ("pinpoints").
- `plan_fixed`: a fixed grid for every image.

All three then resize-and-pad: the image is resized to fit the grid canvas keeping its aspect
ratio, pasted centred on black, and cut into tiles row-major; the global view (a plain resize
of the whole image to S x S) comes first.
"""
import dataclasses
import math

DEFAULT_TILE = 336


@dataclasses.dataclass(frozen=True)
class Plan:
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
    def canvas(self):
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


def select_best_resolution(width, height, candidates):
    """The candidate (w, h) that keeps the most of the image's pixels after an aspect-preserving
    fit (`effective`), on a tie the one that wastes the least canvas; else the earlier one."""
    best, best_eff, best_waste = None, -1, math.inf
    for cw, ch in candidates:
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


def plan_pinpoints(width, height, tile_size=DEFAULT_TILE, pinpoints=None, global_view=True):
    """LLaVA-NeXT's anyres plan: the best of `pinpoints` (a list of (width, height) in pixels,
    each a multiple of tile_size; default DEFAULT_PINPOINT_GRIDS times tile_size)."""
    _check_size(width, height)
    _check_tile(tile_size)
    if pinpoints is None:
        pinpoints = [(w * tile_size, h * tile_size) for w, h in DEFAULT_PINPOINT_GRIDS]
    pinpoints = [tuple(p) for p in pinpoints]
    if not pinpoints:
        raise ValueError("pinpoints must not be empty")
    for p in pinpoints:
        if (len(p) != 2 or any(not isinstance(v, int) or v < tile_size or v % tile_size
                               for v in p)):
            raise ValueError(f"pinpoint {p} must be (width, height), positive multiples of "
                             f"tile_size {tile_size}")
    cw, ch = select_best_resolution(width, height, pinpoints)
    return _plan_for_grid(width, height, cw // tile_size, ch // tile_size, tile_size, global_view)


def plan_fixed(width, height, grid=(2, 2), tile_size=DEFAULT_TILE, global_view=True):
    """The same grid (tiles across, tiles down) for every image; (0, 0): global view only."""
    _check_size(width, height)
    _check_tile(tile_size)
    gw, gh = grid
    if gw == 0 and gh == 0:
        if not global_view:
            raise ValueError("a plan needs tiles or a global view")
        return Plan(0, 0, 0, 0, 0, 0, True, tile_size)
    if not (isinstance(gw, int) and isinstance(gh, int)) or not (1 <= gw <= 64 and 1 <= gh <= 64):
        raise ValueError(f"grid must be (0, 0) or two integers in [1, 64], got {grid!r}")
    return _plan_for_grid(width, height, gw, gh, tile_size, global_view)


PLANNERS = {"slime": plan_slime, "pinpoints": plan_pinpoints, "fixed": plan_fixed}
