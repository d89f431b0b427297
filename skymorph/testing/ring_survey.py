"""A tiny labelled survey that a CNN learns in one epoch: discs, half of them with a ring.

The ring stands in for spiral arms (``has_spiral_arms_yes`` of the gz2 schema), so trainer and
evaluation tests can check that learning happened without a synthetic-survey run.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["disc_image", "write_ring_survey"]


def disc_image(size: int, radius: float, ring: bool) -> np.ndarray:
    """A (size, size) uint8 Gaussian disc of ``radius`` pixels, with a ring at twice the radius if ``ring``."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(x, y)
    image = 200 * np.exp(-((r / radius) ** 2))
    if ring:
        image += 120 * np.exp(-(((r - 2 * radius) / 1.5) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_ring_survey(root: str, n: int = 48, size: int = 32) -> tuple[str, str]:
    """Two tiles of ``n`` noisy discs under ``root`` and their votes; returns ``(tile list, labels)`` paths.

    Odd galaxies have the ring and get 8 of 9 ``has_spiral_arms_yes`` votes, even ones 1 of 9; a quarter
    of the galaxies, half of them with a ring, are in the ``validation`` split.
    """
    import pyarrow as pa

    from skymorph.storage import write_parquet
    from skymorph.tiles import write_tile, write_tile_list

    rng = np.random.default_rng(0)
    ring = np.arange(n) % 2 == 1
    images = np.stack([disc_image(size, 3 + rng.random(), r)[None] for r in ring])
    images = np.clip(images.astype(int) + rng.integers(0, 20, images.shape), 0, 255).astype(np.uint8)
    object_id = np.arange(1000, 1000 + n, dtype=np.int64)
    urls = []
    for t, part in enumerate(np.array_split(np.arange(n), 2)):
        url = os.path.join(root, "tiles", f"t{t}.zarr")
        write_tile(
            url, images[part], object_id[part], np.full(len(part), 10.0), np.full(len(part), -5.0),
            survey="test", bands=["grey"], pixel_scale_arcsec=0.262, stretch="none", resize="none",
        )
        urls.append(url)
    write_tile_list(os.path.join(root, "tiles.txt"), urls)
    yes = np.where(ring, 8, 1)
    table = pa.table({
        "object_id": object_id,
        "has_spiral_arms_yes": yes,
        "has_spiral_arms_no": 9 - yes,
        "split": np.where(np.arange(n) % 8 < 2, "validation", "train"),  # discs and rings alike
    })
    write_parquet(table, os.path.join(root, "labels.parquet"))
    return os.path.join(root, "tiles.txt"), os.path.join(root, "labels.parquet")
