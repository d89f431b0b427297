"""Training data: the labelled galaxies' images from tile stores, augmentation, and batches.

Images are matched by ``object_id`` in the tile stores of a tile list and held in memory as uint8
(100,000 galaxies at 128 x 128 px are 1.6 GB), so an epoch never waits on storage. Where the labels
also say where each image is (``tile`` and ``row`` columns, as ``survey synth``, ``survey ingest`` and
``catalog pick`` write them), the image is taken from there, and a galaxy found only elsewhere is
refused: object ids are unique within a survey, not across surveys (synthetic surveys all number from
0), so labels given with another survey's tiles would otherwise train on the wrong images without a
word. Where they give ``ra`` and ``dec`` instead, as volunteer tables do, a galaxy far from its image is
refused for the same reason.
"""

from __future__ import annotations

import math
import queue
import threading

import numpy as np

from skymorph.errors import InputError
from skymorph.tables import (
    LABELLED_POSITION_ARCSEC,
    OTHER_UNITS,
    SAME_GALAXY_ARCSEC,
    KeyIndex,
    arcsec_between,
    arcsec_text,
)
from skymorph.trainer.labels import Labels

__all__ = ["BatchLoader", "augment", "batch_starts", "load_images"]


def load_images(tile_urls: list[str], labels: Labels, *, drop_unmatched: bool = False, storage_options=None, progress=True):
    """``(images, labels)``: uint8 (n, C, H, W) images of the labelled galaxies, in labels order.

    Reads each tile's object ids first, then only the stored chunks holding labelled galaxies. Where the
    labels say where a galaxy's image is (``tile`` and ``row``), only that image is taken (a galaxy in two
    overlapping tiles has two), and where every row says so, only the tiles named are read, unless a
    galaxy is not in its own. A labelled galaxy found in no tile, or only elsewhere than its labels
    say (labels of another survey's images), is a one-line :class:`InputError` naming it, unless
    ``drop_unmatched`` (then it is left out of the returned labels). An object id that is another
    galaxy in two of the tiles (two surveys' galaxies: see :func:`_check_same_galaxy`) and tiles of
    different image shapes are errors.
    """
    from skymorph.progress import progress_bar
    from skymorph.tiles import open_tile, tile_name

    images = None
    found = np.zeros(len(labels), dtype=bool)
    found_in = np.full(len(labels), None, dtype=object)  # per labels row: the tile its image was taken from,
    found_at = np.full((len(labels), 2), np.nan)  # and the galaxy's (ra, dec) there, NaN where a placeholder
    # per labels row: the first tile and row where its image was found but the labels do not put it
    elsewhere_tile, elsewhere_row = np.full(len(labels), None, dtype=object), np.full(len(labels), -1, dtype=np.int64)
    index = KeyIndex(labels.object_id)  # sorted once: sorting per tile took 0.28 s a tile at a million labels

    def take(url: str) -> None:
        """The images of ``url`` that the labels want, into ``images``."""
        nonlocal images
        tile = open_tile(url, storage_options=storage_options)
        object_id, ra, dec = tile.read_coords()
        at = np.full((len(object_id), 2), np.nan) if tile.placeholder_positions else np.stack([ra, dec], axis=1)
        label_row = index.find(object_id)  # per tile row: its labels row, or -1
        rows = np.flatnonzero(label_row >= 0)
        if len(rows) == 0:
            return
        if images is None:
            images = np.zeros((len(labels), *tile.shape), dtype=np.uint8)
        elif tuple(tile.shape) != images.shape[1:]:
            raise InputError(f"tile {url!r} holds {tile.shape} images, earlier tiles {images.shape[1:]}; use one image size")
        if labels.tile is not None:
            targets = label_row[rows]
            said_tile, said_row = labels.tile[targets], labels.row[targets]
            name = tile_name(url)
            here = ((said_tile == None) | (said_tile == name)) & ((said_row < 0) | (said_row == rows))  # noqa: E711
            first = elsewhere_row[targets] < 0
            elsewhere_tile[targets[~here & first]] = name
            elsewhere_row[targets[~here & first]] = rows[~here & first]
            rows = rows[here]
        for start, stop, chunk in tile.iter_chunks(rows=rows):  # only the chunks holding wanted images
            sel = rows[(rows >= start) & (rows < stop)]
            targets, taken = label_row[sel], chunk[sel - start]
            if found[targets].any():  # an id seen in an earlier tile
                _check_same_galaxy(labels, targets, found[targets], (found_at[targets], at[sel]),
                                   (images[targets], taken), found_in, url)
            images[targets] = taken
            found[targets] = True
            found_in[targets] = url
            found_at[targets] = np.where(np.isnan(at[sel]), found_at[targets], at[sel])  # a placeholder tells nothing

    named, others = _named_tiles_first(tile_urls, labels)
    for url in progress_bar(named, desc="reading tiles", unit="tile", disable=not progress, leave=False):
        take(url)
    if others and not found.all():  # galaxies to find, or to explain: the other tiles too
        for url in progress_bar(others, desc="reading the other tiles", unit="tile", disable=not progress, leave=False):
            take(url)
    if labels.ra_dec is not None:
        _check_labelled_positions(labels, found, found_at, found_in)
    misplaced = np.flatnonzero(~found & (elsewhere_row >= 0))
    if len(misplaced) and not drop_unmatched:
        target = int(misplaced[0])
        name, row = elsewhere_tile[target], int(elsewhere_row[target])
        said = ", ".join(part for part in (f"tile {labels.tile[target]!r}" if labels.tile[target] is not None else "",
                                           f"row {int(labels.row[target])}" if labels.row[target] >= 0 else "") if part)
        raise InputError(
            f"labels {labels.source!r} put object_id {int(labels.object_id[target])} at {said}, but the tiles given hold it "
            f"only elsewhere (tile {name!r}, row {row}; {len(misplaced) - 1} more like it): these labels are of another "
            "survey's images (object ids are unique only within a survey), or their tiles are not among those given; give "
            "the tiles they were made from, --drop-unmatched to go on without these galaxies, or drop the labels' tile "
            "and row columns if those are out of date"
        )
    if not found.all():
        missing = labels.object_id[~found]
        if not drop_unmatched:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(
                f"labels {labels.source!r}: object_id {int(missing[0])}{more} has no image in the "
                f"{len(tile_urls)} tile(s) given; check --tiles, or pass --drop-unmatched to go on without them"
            )
        if not found.any():
            raise InputError(f"no labelled galaxy of {labels.source!r} is in the {len(tile_urls)} tile(s) given")
        return images[found], labels.subset(np.flatnonzero(found))
    return images, labels  # every galaxy found: no second copy of the images



def _named_tiles_first(tile_urls: list[str], labels: Labels) -> tuple[list[str], list[str]]:
    """``(tiles, other tiles)``: where every labels row names its tile (``tile``), the tiles named and the
    rest, which need reading only if a galaxy is not found in its own (a fine-tune given the whole survey's
    tile list opened every tile store of it); else all of them and none."""
    from skymorph.tiles import tile_name

    if labels.tile is None or (labels.tile == None).any():  # noqa: E711 -- a row without a tile: search them all
        return list(tile_urls), []
    wanted = set(labels.tile.tolist())
    is_named = [tile_name(url) in wanted for url in tile_urls]
    return ([url for url, yes in zip(tile_urls, is_named) if yes], [url for url, yes in zip(tile_urls, is_named) if not yes])


def _check_labelled_positions(labels: Labels, found, found_at, found_in) -> None:
    """Refuse labels whose ``ra``/``dec`` put a galaxy more than :data:`LABELLED_POSITION_ARCSEC` from its
    image in the tiles: labels of another survey, whose object ids name other galaxies here (a volunteer
    table has no ``tile`` and ``row`` to tell). Empty positions and tiles with placeholder positions
    (cutouts ingested without coordinates) are not compared."""
    compared = np.flatnonzero(found & np.isfinite(labels.ra_dec).all(axis=1) & np.isfinite(found_at).all(axis=1))
    if not len(compared):
        return
    said, image = labels.ra_dec[compared], found_at[compared]
    arcsec = arcsec_between(said, image)
    apart = np.flatnonzero(arcsec > LABELLED_POSITION_ARCSEC)
    if len(apart):
        first = int(compared[apart[0]])
        more = f" ({len(apart) - 1} more like it)" if len(apart) > 1 else ""
        for unit, scale in OTHER_UNITS:
            if (arcsec_between(said[apart] * scale, image[apart]) <= LABELLED_POSITION_ARCSEC).all():
                raise InputError(
                    f"labels {labels.source!r} give ra, dec in {unit}, it seems: read as {unit}, each of the "
                    f"{len(apart)} galaxies far from its image (first: object_id {int(labels.object_id[first])}) is "
                    "at it; give them in degrees"
                )
        raise InputError(
            f"labels {labels.source!r} put object_id {int(labels.object_id[first])} at ra, dec = {said[apart[0], 0]:.6f}, "
            f"{said[apart[0], 1]:.6f}, {arcsec_text(arcsec[apart[0]])} from the galaxy of that id in tile "
            f"{found_in[first]!r}{more}: these labels are of another survey's galaxies (object ids are unique only "
            "within a survey); give the tiles they were made from"
        )



def _check_same_galaxy(labels: Labels, targets, found, positions_pair, images_pair, found_in, url: str) -> None:
    """Refuse an object id taken from a second tile where it is another galaxy: more than
    :data:`SAME_GALAXY_ARCSEC` from where the first tile put it, or, where either tile has placeholder
    positions, with another image. Object ids are unique only within a survey, so these are two surveys'
    galaxies, and the labels would train on whichever tile came last. One galaxy in two overlapping tiles
    of a survey passes: at one position (its two cutouts may differ), or, with placeholder positions,
    as the same pixels."""
    again = np.flatnonzero(found)
    if not len(again):
        return
    (before, now), (taken, image) = (p[again] for p in positions_pair), (i[again] for i in images_pair)
    placeholder = np.isnan(before).any(axis=1) | np.isnan(now).any(axis=1)
    apart = arcsec_between(before, now) > SAME_GALAXY_ARCSEC
    other_image = (taken != image).reshape(len(again), -1).any(axis=1)
    differ = again[np.where(placeholder, other_image, apart)]
    if len(differ):
        first = int(targets[differ[0]])
        raise InputError(
            f"labels {labels.source!r}: object_id {int(labels.object_id[first])} is another galaxy in tile {url!r} than "
            f"in {found_in[first]!r}: object ids are unique only within a survey, and these tiles are of two; give the "
            "tiles of the survey the labels are of, or labels with tile and row columns that say where each image is"
        )


def augment(images, generator, *, max_zoom: float = 0.1, max_shift: float = 0.05, brightness: float = 0.02, contrast: float = 0.1):
    """Randomly flip, rotate (any angle), zoom, shift and jitter brightness/contrast a uint8 batch.

    Galaxies have no preferred orientation or handedness, so a flip plus a uniform rotation in
    [0, 2 pi) is a symmetry of the labels; zoom (scale in [1 - max_zoom, 1 + max_zoom]) and shift
    (fraction of the image) mimic different apparent sizes and centring. Pixels are resampled
    bilinearly, with the border padded by reflection so that rotated corners hold sky, not black.
    Photometric jitter: ``x' = (x - mean) * c + mean + b * 255`` with c in [1 - contrast, 1 + contrast]
    and b in [-brightness, brightness] per image; the default offset (a few 8-bit levels) stays below
    the faint outer structure, such as spiral arms, that it would otherwise drown or invent on a sky
    near zero. Returns uint8 of the same shape.
    """
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    x = images.float()

    def uniform(low, high):
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(0, 2 * math.pi)
    scale = uniform(1 - max_zoom, 1 + max_zoom)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    shift = torch.stack([uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)], dim=1) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta acts on coordinates normalised to [-1, 1] along each side: for H != W a rotation there is
    # also a shear and stretch in pixels, unless its off-diagonal terms carry the aspect ratio
    height, width = images.shape[-2:]
    theta = torch.stack(
        [torch.stack([cos * flip, -sin * (height / width), shift[:, 0]], 1),
         torch.stack([sin * flip * (width / height), cos, shift[:, 1]], 1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    shift_b = uniform(-brightness, brightness).view(b, 1, 1, 1) * 255
    x = (x - mean) * c + mean + shift_b
    return x.round_().clamp_(0, 255).to(torch.uint8)


def batch_starts(size: int, batch_size: int) -> list[int]:
    """Where each of an epoch's batches begins among ``size`` galaxies (the last ends at ``size``): every
    ``batch_size``, except that a last batch of one galaxy joins the one before (see :class:`BatchLoader`)."""
    starts = list(range(0, size, batch_size))
    if len(starts) > 1 and size - starts[-1] == 1:
        starts.pop()
    return starts


class BatchLoader:
    """Batches of ``(images uint8 (B, C, H, W), votes int64 (B, A))`` over one epoch.

    The order comes from ``torch.randperm`` seeded with ``seed``; augmentation (if ``augmented``) uses
    a generator seeded from ``seed`` too, so a batch depends only on ``seed`` and the data. A
    background thread prepares up to ``prefetch`` batches ahead while the model trains on the current
    one (torch releases the GIL inside its kernels, so they overlap). ``rows``: batch only these rows of
    ``images`` and ``votes`` (default all), as if they were ``images[rows]`` but without copying them.
    A last batch of one galaxy joins the one before: batch normalisation in training cannot normalise a
    single value per channel (resnet_s on a small input ends in 1 x 1 maps), and failed with a traceback.
    """

    def __init__(
        self, images: np.ndarray, votes: np.ndarray, batch_size: int, *, shuffle: bool, augmented: bool, seed: int,
        prefetch: int = 2, rows: np.ndarray | None = None,
    ):
        import torch

        self.images = torch.from_numpy(images)
        self.votes = torch.from_numpy(votes)
        self.rows = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle, self.augmented, self.seed, self.prefetch = shuffle, augmented, seed, prefetch

    def _size(self) -> int:
        return len(self.images) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        return len(batch_starts(self._size(), self.batch_size))

    def _batches(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self._size(), generator=generator) if self.shuffle else torch.arange(self._size())
        if self.rows is not None:
            order = self.rows[order]
        starts = batch_starts(len(order), self.batch_size)
        for start, stop in zip(starts, [*starts[1:], len(order)]):
            index = order[start:stop]
            images = self.images[index]
            if self.augmented:
                images = augment(images, generator)
            yield images, self.votes[index]

    def __iter__(self):
        done = object()
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for batch in self._batches():
                    if stop.is_set():
                        return
                    batches.put(batch)
            except BaseException as err:  # handed to the consumer, which re-raises it
                batches.put(err)
                return
            batches.put(done)

        thread = threading.Thread(target=produce, name="skymorph-batches", daemon=True)
        thread.start()
        try:
            while (item := batches.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    batches.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()
