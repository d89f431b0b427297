"""skymorph.catalog: the HATS-layout morphology catalog.

Readers: :func:`info` (what a catalog holds), :func:`query` (SQL and cone, out of core with DuckDB;
:func:`query_reader` streams the result),
:func:`pick` (the next Galaxy Zoo batch by BALD; :func:`pick_to` writes it, with its cutouts as PNG files
for Zooniverse), :func:`export_table` (CSV/Parquet/FITS/VOTable) and :func:`gallery` (a PNG of picked
galaxies with their posteriors). The writer is in
:mod:`skymorph.catalog.writer`, paths and metadata in :mod:`skymorph.catalog.layout`.
"""

from skymorph.catalog.export import export_table
from skymorph.catalog.gallery import gallery
from skymorph.catalog.info import Catalog, CatalogInfo, info, open_catalog
from skymorph.catalog.pick import pick, pick_to
from skymorph.catalog.query import Cone, query, query_reader, query_to

__all__ = [
    "Catalog",
    "CatalogInfo",
    "Cone",
    "export_table",
    "gallery",
    "info",
    "open_catalog",
    "pick",
    "pick_to",
    "query",
    "query_reader",
    "query_to",
]
