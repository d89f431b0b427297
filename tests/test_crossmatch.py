"""``skymorph labels match``: a volunteer table named by its own ids gets the tiles' by position."""

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from skymorph import cli
from skymorph.errors import InputError
from skymorph.schema import get_schema
from skymorph.tiles import open_tile, read_tiles, write_tile, write_tile_list
from skymorph.trainer.crossmatch import match_labels
from skymorph.trainer.data import load_images
from skymorph.trainer.labels import load_labels

GZ2 = get_schema("gz2")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A 32-galaxy synthetic survey and its labels with each galaxy's true position."""
    from skymorph.survey.synth import synthesize

    root = str(tmp_path_factory.mktemp("survey"))
    synthesize(root, n_tiles=2, per_tile=16, size=16, seed=0, schema="gz2", workers=1, progress=False)
    labels = pd.read_parquet(f"{root}/labels.parquet")
    coords = {}
    for url in read_tiles(f"{root}/tiles.txt"):
        object_id, ra, dec = open_tile(url).read_coords()
        coords.update({int(i): (r, d) for i, r, d in zip(object_id, ra, dec)})
    labels["ra"], labels["dec"] = np.array([coords[i] for i in labels.object_id]).T
    return root, labels


def _volunteer_table(labels: pd.DataFrame) -> pd.DataFrame:
    """The labels as Galaxy Zoo publishes them: their own names, hyphenated answers, positions a little off
    (another catalog's centroids), no skymorph ids, in another order."""
    gz = {f"{q.name}_{a}": f"{q.name.replace('_', '-')}_{a.replace('_', '-')}" for q in GZ2.questions for a in q.answers}
    table = labels[["ra", "dec", *gz]].rename(columns=gz)
    offset = 0.1 + 0.3 * (np.arange(len(labels)) % 3) / 2  # arcsec: 0.1, 0.25, 0.4, north
    table.insert(0, "iauname", [f"J{i:06d}" for i in labels.object_id])
    table["dec"] = table["dec"] + offset / 3600
    return table.iloc[::-1].reset_index(drop=True)


def test_a_volunteer_table_gets_each_galaxys_id_tile_and_row_and_then_trains(survey, tmp_path, capsys):
    root, labels = survey
    table = _volunteer_table(labels)
    twice = table.iloc[[0]].assign(dec=table.dec[0] + 0.5 / 3600)  # classified twice, the second time 0.5" further off
    outside = table.iloc[[1]].assign(dec=table.dec[1] + 1.0)  # off the tiles
    nowhere = table.iloc[[2]].assign(ra=np.nan)  # no position
    messy = pd.concat([table, twice, outside, nowhere], ignore_index=True)
    messy.to_csv(tmp_path / "gz.csv", index=False)

    out = str(tmp_path / "matched.parquet")
    matched = match_labels(str(tmp_path / "gz.csv"), f"{root}/tiles.txt", out, progress=False)
    assert (matched.rows, matched.matched, matched.unmatched, matched.duplicates) == (35, 32, 2, 1)
    assert matched.summary() == f'matched 32 of 35 rows to tile galaxies within 1" (median 0.25") -> {out}; rows left out: 3'
    assert capsys.readouterr().err.strip() == (
        f"skymorph: warning: rows of table {str(tmp_path / 'gz.csv')!r} left out, of 35: 2 without a tile galaxy within 1\" "
        "(outside the tiles, or without a position), 1 nearest to a galaxy that a nearer row took (a galaxy classified "
        "twice; its votes are not added)")

    result = pd.read_parquet(out)
    assert list(result.columns[:5]) == ["object_id", "tile", "row", "match_arcsec", "iauname"]
    assert result.iauname.tolist() == table.iauname.tolist()  # the table's order, the nearer of the two rows kept
    truth = labels.set_index("object_id").loc[result.object_id]
    assert result.iauname.tolist() == [f"J{i:06d}" for i in result.object_id]
    assert result.tile.tolist() == truth.tile.tolist() and result.row.tolist() == truth.row.tolist()
    expected_arcsec = 0.1 + 0.3 * (np.arange(32) % 3) / 2
    np.testing.assert_allclose(result.match_arcsec, expected_arcsec[::-1], atol=1e-3)
    record = json.loads(pq.read_schema(out).metadata[b"skymorph.matched"])
    assert record["radius_arcsec"] == 1.0 and record["tile_count"] == 2 and len(record["table_sha256"]) == 64
    assert record["tiles_without_positions"] == 0
    assert (record["rows"], record["matched"], record["unmatched"], record["duplicates"]) == (35, 32, 2, 1)

    # what train reads: the same votes, each image found where the match put it, positions checked
    read = load_labels(out, GZ2)
    ordered = load_labels(f"{root}/labels.parquet", GZ2)
    at = pd.Index(ordered.object_id).get_indexer(read.object_id)
    assert np.array_equal(read.votes, ordered.votes[at])
    images, _ = load_images(read_tiles(f"{root}/tiles.txt"), read, progress=False)
    expected_images, _ = load_images(read_tiles(f"{root}/tiles.txt"), ordered, progress=False)
    assert np.array_equal(images, expected_images[at])

    # a tile overlapping another holds some galaxies twice, at positions measured again (0.6" north): the
    # galaxy classified twice is nearest to one copy from one row and to the other from the other, and is
    # still one galaxy, taken once
    urls = read_tiles(f"{root}/tiles.txt")
    home = open_tile(next(url for url in urls if url.endswith(f"{result.tile[0]}.zarr")))
    object_id, ra, dec = home.read_coords()
    write_tile(str(tmp_path / "overlap.zarr"), home.read_images(), object_id, ra, dec + 0.6 / 3600, survey="test",
               bands=home.attrs["bands"], pixel_scale_arcsec=1.0, stretch="none", resize="none")
    write_tile_list(str(tmp_path / "overlap.txt"), [str(tmp_path / "overlap.zarr"), *urls])
    again = match_labels(str(tmp_path / "gz.csv"), str(tmp_path / "overlap.txt"), str(tmp_path / "o.parquet"), progress=False)
    assert (again.matched, again.unmatched, again.duplicates) == (32, 2, 1)
    assert sorted(pd.read_parquet(tmp_path / "o.parquet").object_id) == sorted(result.object_id)

    # one galaxy in two releases concatenated: the same position twice, and the first row keeps it
    pd.concat([table.iloc[:3].assign(release=1), table.iloc[:3].assign(release=2)]).to_csv(tmp_path / "twice.csv", index=False)
    match_labels(str(tmp_path / "twice.csv"), f"{root}/tiles.txt", str(tmp_path / "t.parquet"), progress=False)
    assert pd.read_parquet(tmp_path / "t.parquet").release.tolist() == [1, 1, 1]

    # the command line; a wider radius takes the second classification's galaxy too, from the nearer row still
    assert cli.main(["labels", "match", str(tmp_path / "gz.csv"), "--tiles", f"{root}/tiles.txt", "--out", out]) == 2
    assert "matched.parquet' exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["labels", "match", str(tmp_path / "gz.csv"), "--tiles", f"{root}/tiles.txt", "--out", out,
                     "--radius", "2", "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith('matched 32 of 35 rows to tile galaxies within 2" (median 0.25")')

    # a tile ingested without positions is not searched, and the warning and the metadata say so
    write_tile(str(tmp_path / "unplaced.zarr"), home.read_images(), object_id, ra, dec, survey="test", bands=home.attrs["bands"],
               pixel_scale_arcsec=1.0, stretch="none", resize="none", extra_attrs={"position_is_placeholder": True})
    write_tile_list(str(tmp_path / "mixed.txt"), [*urls, str(tmp_path / "unplaced.zarr")])  # last: counted all the same
    match_labels(str(tmp_path / "gz.csv"), str(tmp_path / "mixed.txt"), str(tmp_path / "m.parquet"), progress=False)
    assert ("skymorph: warning: tiles with placeholder positions (ingested without ra/dec) are not searched: 1 of 3"
            in capsys.readouterr().err)
    assert json.loads(pq.read_schema(tmp_path / "m.parquet").metadata[b"skymorph.matched"])["tiles_without_positions"] == 1


@pytest.mark.filterwarnings("ignore:No table..len..:astropy.utils.exceptions.AstropyUserWarning")  # it measures the text
def test_a_table_astropy_wrote_matches_into_labels_astropy_reads(survey, tmp_path):
    """astropy's header in the table (and in skymorph's Parquet exports) described its columns only, and was
    carried over: ``Table.read`` of the labels failed with a KeyError on object_id, a column it did not name."""
    from astropy.table import Table

    root, labels = survey
    Table.from_pandas(_volunteer_table(labels)).write(tmp_path / "gz.parquet")
    assert b"table_meta_yaml" in pq.read_schema(tmp_path / "gz.parquet").metadata
    match_labels(str(tmp_path / "gz.parquet"), f"{root}/tiles.txt", str(tmp_path / "m.parquet"), progress=False)
    read = Table.read(tmp_path / "m.parquet").to_pandas()
    written = pd.read_parquet(tmp_path / "m.parquet")
    assert list(read.columns[:4]) == ["object_id", "tile", "row", "match_arcsec"] and read.equals(written)
    assert b"skymorph.matched" in pq.read_schema(tmp_path / "m.parquet").metadata


def test_tables_that_cannot_be_matched_are_one_line_errors(survey, tmp_path):
    root, labels = survey
    table = _volunteer_table(labels)
    tiles = f"{root}/tiles.txt"
    placeholder = str(tmp_path / "placeholder.zarr")
    write_tile(placeholder, np.zeros((2, 1, 16, 16), np.uint8), np.arange(2), np.zeros(2), np.zeros(2), survey="test",
               bands=["grey"], pixel_scale_arcsec=1.0, stretch="none", resize="none", extra_attrs={"position_is_placeholder": True})
    cases = {
        "ids.csv": (table.assign(object_id=1), tiles, "already has an object_id column; train on it as it is if those are "
                                                      "the tiles' ids, else rename it"),
        "row.csv": (table.assign(row=1, Tile="x"), tiles, "already has column\\(s\\) 'row', which labels match adds; rename them"),
        "header.csv": (table.iloc[:0], tiles, "has no rows; give one row per galaxy"),
        "nopos.csv": (table.drop(columns=["ra", "dec"]), tiles, "has no ra and dec columns \\(columns: iauname,"),
        "text.csv": (table.assign(ra="10h00m00s"), tiles, "columns ra and dec are not numbers"),
        "hours.csv": (table.assign(ra=table.ra / 15), tiles, "gives ra, dec in hours, it seems"),
        "radians.csv": (table.assign(ra=np.radians(table.ra), dec=np.radians(table.dec)), tiles, "gives ra, dec in radians, it seems"),
        "moved.csv": (table.assign(dec=table.dec - 2.0), tiles, 'no row of table .* has a tile galaxy within 1" \\(the nearest pair is'),
        "unplaced.csv": (table, placeholder, "the 1 tile\\(s\\) given have placeholder positions"),
        "empty.csv": (table.assign(ra=np.nan), tiles, "has no row with both ra and dec"),
        "arcsec.csv": (table.assign(dec=table.dec * 3600), tiles, "has dec -?[0-9.e+]+ \\(32 rows beyond \\+-90\\); give ra and "
                                                                 "dec in degrees, and leave an unknown position empty"),
    }
    for name, (frame, tile_list, message) in cases.items():
        frame.to_csv(tmp_path / name, index=False)
        with pytest.raises(InputError) as info:
            match_labels(str(tmp_path / name), tile_list, str(tmp_path / "out.parquet"), progress=False)
        assert re.search(message, str(info.value)) and "\n" not in str(info.value), (name, str(info.value))
    table.to_csv(tmp_path / "gz.csv", index=False)
    for kwargs, message in ((dict(out=str(tmp_path / "out.csv")), "labels match writes Parquet; give a .parquet file"),
                            (dict(radius_arcsec=0.0), "--radius 0.0: give a number of arcseconds above 0 and at most 5"),
                            (dict(radius_arcsec=10.0), "--radius 10.0: give a number of arcseconds above 0 and at most 5, the "
                                                       "most train allows between a galaxy's labelled position and its image")):
        with pytest.raises(InputError, match=re.escape(message)):
            match_labels(str(tmp_path / "gz.csv"), tiles, kwargs.pop("out", str(tmp_path / "out.parquet")), progress=False, **kwargs)


def test_tiles_of_two_surveys_sharing_ids_are_refused(survey, tmp_path):
    """Ids are unique only within a survey: resolving "a galaxy classified twice" by id merged two surveys'
    galaxies, and half a review's rows were left out as duplicates."""
    from skymorph.survey.synth import synthesize

    root, labels = survey
    other = str(tmp_path / "other")
    synthesize(other, n_tiles=1, per_tile=16, size=16, seed=7, schema="gz2", workers=1, progress=False)
    write_tile_list(str(tmp_path / "both.txt"), read_tiles(f"{root}/tiles.txt") + read_tiles(f"{other}/tiles.txt"))
    coords = {}
    for url in read_tiles(f"{other}/tiles.txt"):
        object_id, ra, dec = open_tile(url).read_coords()
        coords.update({int(i): (r, d) for i, r, d in zip(object_id, ra, dec)})
    others = pd.read_parquet(f"{other}/labels.parquet")
    others["ra"], others["dec"] = np.array([coords[i] for i in others.object_id]).T
    pd.concat([_volunteer_table(labels), _volunteer_table(others)]).to_csv(tmp_path / "both.csv", index=False)
    with pytest.raises(InputError, match=r"tiles 'hpx5_\d+' and 'hpx5_\d+' hold object_id \d+ at positions [0-9.]+ deg apart "
                                         r"\(16 ids like it\): tiles of two surveys, whose ids are unique only within each; "
                                         "match each survey's tiles on its own"):
        match_labels(str(tmp_path / "both.csv"), str(tmp_path / "both.txt"), str(tmp_path / "out.parquet"), progress=False)
    # one survey's table: each row finds its own survey's galaxy, whose tile and row train then reads
    _volunteer_table(labels).to_csv(tmp_path / "one.csv", index=False)
    match_labels(str(tmp_path / "one.csv"), str(tmp_path / "both.txt"), str(tmp_path / "one.parquet"), progress=False)
    matched = load_labels(str(tmp_path / "one.parquet"), GZ2)
    images, _ = load_images(read_tiles(str(tmp_path / "both.txt")), matched, progress=False)
    expected, _ = load_images(read_tiles(f"{root}/tiles.txt"), matched, progress=False)
    assert len(matched) == 32 and np.array_equal(images, expected)
