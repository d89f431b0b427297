"""A skymorph catalog opens in LSDB, and LSDB's cone search returns the rows `query --cone` does."""

from __future__ import annotations

import lsdb  # in the dev extra: a broken install fails here rather than skipping the check
import pytest

from skymorph.catalog import info, query
from skymorph.testing.catalogs import write_synthetic_catalog


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lsdb") / "catalog")
    write_synthetic_catalog(out, 2000, per_tile=500, tile_deg=1.0, order=6, workers=1)
    return out


def test_lsdb_opens_the_catalog(catalog):
    opened = lsdb.open_catalog(catalog)
    summary = info(catalog)
    assert opened.hc_structure.catalog_info.total_rows == summary.rows
    assert len(opened.get_healpix_pixels()) == summary.partitions
    assert {"object_id", "bald_total", "bar_bald"} <= set(opened.columns)


@pytest.mark.parametrize("cone", [(150.0, 2.0, 1800.0), (149.2, 1.1, 2500.0)])
def test_lsdb_cone_search_equals_query_cone(catalog, cone):
    ours = query(catalog, cone=cone, columns=["object_id"])["object_id"].to_pylist()
    theirs = lsdb.open_catalog(catalog, columns=["object_id", "ra", "dec"]).cone_search(*cone).compute()
    assert len(ours) > 0
    assert sorted(ours) == sorted(theirs["object_id"].tolist())
