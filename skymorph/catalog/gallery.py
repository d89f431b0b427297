"""A PNG of picked galaxies, each beside its predicted vote fractions (``pick --gallery``).

For each galaxy: its cutout, read from its tile store (``tile`` and ``row`` of the pick), and a small
bar chart of one question's predicted vote fractions with their 5%-95% predictive interval, titled with its
``asked`` and ``bald`` (their product ranks a pick by question). The
question is the one picked by; with ``bald_total`` it is, per galaxy, the question contributing most
to it (largest ``asked * bald``). Drawn on a matplotlib Figure of its own, without pyplot: no display is
needed, and a notebook's backend is left as it was.
"""

from __future__ import annotations

import io

import numpy as np

from skymorph.catalog.cutouts import display_pixels, read_cutouts
from skymorph.catalog.info import Catalog, open_catalog
from skymorph.catalog.query import query
from skymorph.errors import CatalogError, InputError

__all__ = ["gallery", "gallery_figure", "gallery_png", "check_png", "MAX_GALAXIES"]

MAX_GALAXIES = 64
_COLUMNS = 4
_KEYS = ["object_id", "tile", "row"]


def check_png(out: str) -> str:
    """``out`` if it names a .png file; a one-line error otherwise (checked before any work)."""
    if not str(out).lower().endswith(".png"):
        raise InputError(f"--gallery {out!r}: give a .png file")
    return out


def _picked_posteriors(picked, catalog: Catalog, questions):
    """The posterior columns of each ``picked`` row, in pick order, as a pandas DataFrame. Rows are
    matched on ``(object_id, tile, row)``: a galaxy seen in two overlapping tiles has two rows with one
    ``object_id``, and the one drawn must be the one picked."""
    import pandas as pd

    schema = catalog.metadata.schema
    columns = _KEYS + [
        f"{q}_{a}_fraction{s}" for q in questions for a in schema.question(q).answers for s in ("", "_q05", "_q95")
    ] + [f"{q}_{kind}" for q in questions for kind in ("asked", "bald")]
    ids = ", ".join(str(int(i)) for i in picked["object_id"].to_pylist())
    found = query(catalog, where=f"object_id IN ({ids})", columns=columns).to_pandas()
    # The same (tile, row) twice is one galaxy written by two plans of its range: identical rows.
    found = found.drop_duplicates(_KEYS).set_index(_KEYS)
    wanted = pd.MultiIndex.from_arrays([picked[k].to_pylist() for k in _KEYS], names=_KEYS)
    missing = np.flatnonzero(~wanted.isin(found.index))
    if len(missing):
        object_id, tile, row = wanted[missing[0]]
        raise CatalogError(f"picked galaxy {object_id} (tile {tile!r}, row {row}) is not in catalog {catalog.url!r}; "
                           "pick from this catalog")
    return found.loc[wanted]


def gallery_figure(picked, catalog: str | Catalog, question: str | None = None, storage_options: dict | None = None):
    """The matplotlib Figure :func:`gallery` saves: the first :data:`MAX_GALAXIES` rows of ``picked``,
    galaxy ``i`` drawn on axes ``2 i`` (cutout) and ``2 i + 1`` (vote fractions) of ``figure.axes``."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend is left as it was

    catalog = catalog if isinstance(catalog, Catalog) else open_catalog(catalog, storage_options)
    schema = catalog.metadata.schema
    picked = picked.slice(0, MAX_GALAXIES)
    n = picked.num_rows
    if n == 0:
        raise InputError("nothing was picked, so there is no gallery to draw")
    posteriors = _picked_posteriors(picked, catalog, [question] if question else list(schema.question_names))
    images = read_cutouts(picked, catalog.storage_options)

    rows = -(-n // _COLUMNS)
    height = 2.2 * rows
    # Fixed spacing instead of tight_layout: that costs more than drawing on a loaded machine. Margins in
    # inches, as fractions of the height: a fixed fraction left a band of blank paper above many rows.
    fig = Figure(figsize=(4.6 * _COLUMNS, height))
    axes = fig.subplots(rows, 2 * _COLUMNS, squeeze=False,
                        gridspec_kw={"width_ratios": [1, 1.2] * _COLUMNS, "wspace": 0.9, "hspace": 0.5,
                                     "left": 0.02, "right": 0.98, "top": 1 - 0.4 / height, "bottom": 0.2 / height})
    for ax in axes.flat:
        ax.set_axis_off()
    for i, ((object_id, _, row), record) in enumerate(posteriors.iterrows()):
        q = question or max(schema.question_names, key=lambda name: record[f"{name}_asked"] * record[f"{name}_bald"])
        answers = schema.question(q).answers
        image_ax, bar_ax = axes[i // _COLUMNS, 2 * (i % _COLUMNS)], axes[i // _COLUMNS, 2 * (i % _COLUMNS) + 1]
        pixels, cmap = display_pixels(images[i])
        image_ax.imshow(pixels, cmap=cmap, origin="upper")  # tiles hold images top row first
        image_ax.set_title(f"#{i + 1} id {object_id} row {row}", fontsize=7)
        fraction = np.array([record[f"{q}_{a}_fraction"] for a in answers], dtype=float)
        low = np.array([record[f"{q}_{a}_fraction_q05"] for a in answers], dtype=float)
        high = np.array([record[f"{q}_{a}_fraction_q95"] for a in answers], dtype=float)
        y = np.arange(len(answers))
        bar_ax.set_axis_on()
        bar_ax.barh(y, fraction, color="tab:blue", alpha=0.7)
        bar_ax.errorbar(fraction, y, xerr=[np.clip(fraction - low, 0, None), np.clip(high - fraction, 0, None)],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        bar_ax.set_yticks(y, answers, fontsize=6)
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=6)
        bar_ax.set_title(f"{q}\nasked {record[f'{q}_asked']:.2f}, bald {record[f'{q}_bald']:.3f}", fontsize=7)
    return fig


def gallery_png(picked, catalog: str | Catalog, question: str | None = None, storage_options: dict | None = None) -> bytes:
    """The PNG file :func:`gallery` writes, as bytes."""
    buffer = io.BytesIO()
    gallery_figure(picked, catalog, question, storage_options).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def gallery(picked, catalog: str | Catalog, out: str, question: str | None = None,
            storage_options: dict | None = None) -> str:
    """Draw the first :data:`MAX_GALAXIES` rows of ``picked`` (a :func:`~skymorph.catalog.pick` table) to
    PNG ``out`` (local or S3); returns ``out``."""
    from skymorph.storage import atomic_write_bytes

    check_png(out)
    atomic_write_bytes(out, gallery_png(picked, catalog, question, storage_options), storage_options)
    return out
