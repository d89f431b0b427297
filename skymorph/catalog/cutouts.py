"""The cutouts of picked galaxies, read back from their tile stores: for the gallery and for the
volunteers' subject images (``pick --gallery``, ``pick --images``)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from skymorph.errors import CatalogError

__all__ = ["iter_cutouts", "read_cutouts", "display_pixels", "png_bytes"]


def iter_cutouts(picked, storage_options: dict | None) -> Iterator[tuple[int, np.ndarray]]:
    """``(i, image)`` for each row ``i`` of ``picked`` (columns ``object_id``, ``tile``, ``row``), image
    (C, H, W) uint8, tile by tile and stored chunk by chunk: each tile store is opened once and each
    chunk that holds picked rows is decoded once (a read per galaxy decoded it again for each), and no
    more than one chunk's images are held at a time. Each image's ``object_id`` in the tile must be the
    picked one: a tile written again in another order since the catalog was made would show another
    galaxy under the picked id."""
    from skymorph.tiles import open_tile

    tiles, rows = picked["tile"].to_pylist(), np.asarray(picked["row"].to_pylist(), dtype=np.int64)
    object_id = np.asarray(picked["object_id"].to_pylist(), dtype=np.int64)
    by_tile: dict[str, list[int]] = {}
    for i, tile in enumerate(tiles):
        by_tile.setdefault(tile, []).append(i)
    for tile, members in by_tile.items():
        store = open_tile(tile, storage_options)
        members = np.array(members)
        chunk = rows[members] // store.chunk_size
        for c in np.unique(chunk):
            here = members[chunk == c]
            lo, hi = int(rows[here].min()), int(rows[here].max()) + 1
            block, ids = store.read_images(lo, hi), store.read_coords(lo, hi)[0]
            for i in here:
                if ids[rows[i] - lo] != object_id[i]:
                    raise CatalogError(f"tile {tile!r} holds object_id {int(ids[rows[i] - lo])} at row {int(rows[i])}, where the "
                                       f"catalog has {int(object_id[i])}: the tile was written again since the catalog was "
                                       "made; run the catalog again from the tiles as they are")
                yield int(i), block[rows[i] - lo]


def read_cutouts(picked, storage_options: dict | None) -> list[np.ndarray]:
    """Every row's image from :func:`iter_cutouts`, in the order of ``picked``."""
    images: list[np.ndarray | None] = [None] * picked.num_rows
    for i, image in iter_cutouts(picked, storage_options):
        images[i] = image
    return images


def display_pixels(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(pixels, cmap)`` of a (C, H, W) image for display: three bands as RGB (H, W, 3), any other
    number as the first band in grey (H, W)."""
    if image.shape[0] == 3:
        return np.transpose(image, (1, 2, 0)), None
    return image[0], "gray"


def png_bytes(image: np.ndarray) -> bytes:
    """A (C, H, W) uint8 image as a PNG file (:func:`display_pixels`' pixels), top row first as stored."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(display_pixels(image)[0])).save(buffer, format="PNG")
    return buffer.getvalue()
