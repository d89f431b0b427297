"""Trainer: labels, split, augmentation, batches, learning rate, checkpoints, train/resume/finetune, CLI errors."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skymorph import cli
from skymorph.errors import InputError, ModelError, SchemaError
from skymorph.model_metadata import InputSpec
from skymorph.schema import get_schema
from skymorph.testing.ring_survey import disc_image, write_ring_survey
from skymorph.tiles import read_tiles
from skymorph.trainer import CheckpointMeta, TrainConfig, load_checkpoint, save_checkpoint, train
from skymorph.trainer.checkpoint import read_checkpoint
from skymorph.trainer.data import BatchLoader, augment, load_images
from skymorph.trainer.labels import load_labels, split_masks
from skymorph.trainer.loop import _epoch_seed, learning_rate
from skymorph.trainer.models import build_model

GZ2 = get_schema("gz2")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _config(tmp_path, tiles, labels, **kwargs):
    base = dict(tiles=tiles, labels=labels, out=str(tmp_path / "m.ckpt"), schema="gz2", epochs=1, batch_size=8, threads=1, progress=False)
    return TrainConfig(**{**base, **kwargs})


# ---- labels, split, augmentation, batches ------------------------------------------------------------


def test_load_labels_reads_votes_in_schema_order_and_rejects_unknown_answers(tmp_path, capsys):
    path = tmp_path / "labels.csv"
    path.write_text("object_id,has_spiral_arms_no,has_spiral_arms_yes,bar_yes,bar_no,split\n5,3,1,,,train\n7,0,2,1,0,val\n"
                    "8,,,,,train\n9,0,0,0,0,train\n")
    labels = load_labels(str(path), GZ2)
    # 8 and 9: no votes in any question, a batch still with the volunteers: counted as labelled, they were
    # trained on with no loss and kept out of picks by --exclude
    assert labels.object_id.tolist() == [5, 7]
    assert capsys.readouterr().err.strip() == (
        f"skymorph: warning: labels {str(path)!r}: 2 row(s) hold no votes in any question (first: object_id 8), galaxies "
        "nobody has classified yet, which train and evaluate leave out")
    yes, no = GZ2.answer_index("has_spiral_arms", "yes"), GZ2.answer_index("has_spiral_arms", "no")
    assert labels.votes[:, [yes, no]].tolist() == [[1, 3], [2, 0]]
    assert labels.votes.sum() == 7 and labels.split.tolist() == ["train", "validation"]
    path.write_text("object_id,has_spiral_arms_no,has_spiral_arms_yes,split\n5,3,1,\n7,0,2,\n8,,,train\n")
    assert load_labels(str(path), GZ2).split is None  # the split named only galaxies left out: the hash split, as recorded
    # some of a question's cells empty: votes merged without one answer's column, which would read as 0
    path.write_text("object_id,has_spiral_arms_no,has_spiral_arms_yes\n5,3,1\n7,,2\n9,,4\n")
    with pytest.raises(InputError, match=r"object_id 7 has counts for question 'has_spiral_arms' but an empty "
                                         r"'has_spiral_arms_no' \(1 more row\(s\) like it\); give every answer's count, 0 where "
                                         r"no volunteer chose it \(a pivot or unstack leaves those empty"):
        load_labels(str(path), GZ2)

    path.write_text("object_id,has_spiral_arms_yess\n5,3\n")
    with pytest.raises(SchemaError, match="Did you mean 'has_spiral_arms_yes'"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,-1,0\n")
    with pytest.raises(InputError, match="non-negative"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,abc,0\n6,2,0\n")
    with pytest.raises(InputError, match="'has_spiral_arms_yes' must hold vote counts, not text"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,1e30,0\n6,2,0\n")  # would wrap around in int64
    with pytest.raises(InputError, match=r"holds a count of 1e\+30 votes; counts above 16,777,216 are not volunteer votes"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,inf,0\n6,2,0\n")  # was reported as 1.79769e+308
    with pytest.raises(InputError, match=r"holds a count of inf votes"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,true,0\n6,false,1\n")  # was read as 1 and 0
    with pytest.raises(InputError, match="'has_spiral_arms_yes' must hold vote counts, not bool$"):
        load_labels(str(path), GZ2)
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    exported = tmp_path / "sql.parquet"  # a SQL export's DECIMAL counts, and a dictionary-encoded column
    pq.write_table(pa.table({"object_id": [5], "has_spiral_arms_yes": pa.array([decimal.Decimal(3)], pa.decimal128(10, 0)),
                             "has_spiral_arms_no": pa.array([1]).dictionary_encode()}), exported)
    assert load_labels(str(exported), GZ2).votes[0, GZ2.question_slices[2]].tolist() == [3, 1]
    pq.write_table(pa.table({"object_id": [5], "has_spiral_arms_yes": pa.array([3], pa.timestamp("s")), "has_spiral_arms_no": [1]}), exported)
    with pytest.raises(InputError, match=r"'has_spiral_arms_yes' must hold vote counts, not timestamp"):
        load_labels(str(exported), GZ2)
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n5,16777216,0\n")
    assert load_labels(str(path), GZ2).votes.max() == 2**24
    path.write_text("object_id,bar_yes,bar_no,has_spiral_arms_yes\n5,1,0,3\n")  # read as 0 "no" votes: always spiral
    with pytest.raises(SchemaError, match=r"votes for some answers of question 'has_spiral_arms' but no column 'has_spiral_arms_no'; give every answer's count"):
        load_labels(str(path), GZ2)


def test_labels_of_another_schema_or_a_truth_table_say_so(tmp_path):
    """Both used to name one column and suggest a near-miss answer of the wrong schema ("Did you mean 'bar_no'?")."""
    from skymorph.schema import DECALS

    path = tmp_path / "labels.csv"
    path.write_text("object_id," + ",".join(DECALS.answer_columns) + "\n1," + ",".join("1" for _ in DECALS.answer_columns) + "\n")
    n = len(DECALS.answer_columns)
    with pytest.raises(SchemaError, match=rf"hold votes of schema 'decals' \({n} of its {n} answer columns\), not of 'gz2'; train with --schema decals, or give labels of 'gz2'"):
        load_labels(str(path), GZ2)
    assert load_labels(str(path), DECALS).votes.sum() == n
    with pytest.raises(SchemaError, match=r"not of 'gz2', the tree of checkpoint 'm.ckpt'; give labels of 'gz2', or use a model "
                                          r"of 'decals' \(train one with --schema decals\)$"):
        load_labels(str(path), GZ2, schema_from="checkpoint 'm.ckpt'")
    # a batch file merged in whole: its score column was refused as a misspelt answer ("Did you mean")
    path.write_text("object_id,bar_strong,bar_weak,bar_no,bar_asked_bald\n1,1,0,2,0.3\n")
    with pytest.raises(InputError, match=r"column 'bar_asked_bald' is a catalog's posterior column or a pick's score, not "
                                         "votes; take only object_id, tile and row"):
        load_labels(str(path), DECALS)
    path.write_text("object_id,bar_strong,bar_weak,bar_no,bald_total\n1,1,0,2,0.3\n")  # no question's: ignored, as before
    assert load_labels(str(path), DECALS).votes.sum() == 3
    path.write_text("object_id,label,split\n1,spiral,train\n")  # the GZ2 subset's labels.csv: said "expected columns such as ..."
    with pytest.raises(SchemaError, match=r"no vote column of schema 'decals'; its 'label' column is a hard label, not votes: "
                                          r"`skymorph survey ingest --label-question Q"):
        load_labels(str(path), DECALS)
    path.write_text("object_id,bar_strong_true,bulge_size_ratio\n1,0.2,0.5\n")
    with pytest.raises(InputError, match=r"look like a synthetic survey's truth table \(columns such as 'bar_strong_true'\); give its labels.parquet"):
        load_labels(str(path), DECALS)


def test_hash_split_is_deterministic_and_near_the_fraction(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("object_id,bar_yes,bar_no\n" + "".join(f"{i},1,0\n" for i in range(2000)))
    labels = load_labels(str(path), GZ2)
    train_mask, val_mask = split_masks(labels, 0.2, seed=3)
    assert np.array_equal(val_mask, split_masks(labels, 0.2, seed=3)[1])
    assert not (train_mask & val_mask).any() and (train_mask | val_mask).all()
    assert abs(val_mask.mean() - 0.2) < 0.03  # binomial sd 0.009


def test_empty_split_cells_take_the_hash_split_and_misspelt_ones_are_refused(tmp_path):
    """Rows added to labels with a split column (the active-learning loop's new votes) had an empty split and
    were in neither side: a fine-tune on 300 old and 100 new galaxies trained on the old ones only."""
    path = tmp_path / "labels.csv"
    path.write_text("object_id,bar_yes,bar_no,split\n" + "".join(f"{i},1,0,{'train' if i < 10 else ''}\n" for i in range(2000)))
    labels = load_labels(str(path), GZ2)
    assert labels.split[:10].tolist() == ["train"] * 10 and all(s is None for s in labels.split[10:])
    train_mask, val_mask = split_masks(labels, 0.2, seed=3)
    assert train_mask[:10].all() and not (train_mask & val_mask).any() and (train_mask | val_mask).all()
    hashed = split_masks(dataclasses.replace(labels, split=None), 0.2, seed=3)[1]
    assert np.array_equal(val_mask[10:], hashed[10:])  # each unassigned galaxy on its hash side
    path.write_text("object_id,bar_yes,bar_no,split\n1,1,0,train\n2,1,0,Validaton\n3,0,1,test\n4,0,1,Validaton\n")
    with pytest.raises(InputError, match=r"column 'split' holds 'Validaton' \(2 row\(s\)\), which is not train, validation or "
                                         r"test; correct it, or leave the cell empty for the seed's hash split"):
        load_labels(str(path), GZ2)
    path.write_text("object_id,bar_yes,bar_no,split\n1,1,0,Train\n2,1,0, val \n3,0,1,test\n")
    assert load_labels(str(path), GZ2).split.tolist() == ["train", "validation", "test"]
    path.write_text("object_id,bar_yes,bar_no,split\n1,1,0,\n2,1,0,\n")  # a column of empty cells assigns nothing
    assert load_labels(str(path), GZ2).split is None


@pytest.mark.parametrize("width", [33, 65], ids=["square", "twice as wide"])
def test_augment_keeps_a_round_galaxy_when_only_rotating_and_flipping(width):
    """On a frame twice as wide as high, a rotation stretched the disc into an ellipse up to 50 px across."""
    centre = slice((width - 33) // 2, (width + 33) // 2)
    frame = np.zeros((33, width), dtype=np.uint8)
    frame[:, centre] = disc_image(33, 5, False)
    disc = torch.from_numpy(np.stack([frame[None]] * 16))
    out = augment(disc, torch.Generator().manual_seed(0), max_zoom=0, max_shift=0, brightness=0, contrast=0)
    assert out.dtype == torch.uint8 and out.shape == disc.shape
    # bilinear resampling of a smooth, symmetric image; outside the central square a rotation brings in the
    # reflections that pad the short side
    assert (out[..., centre].int() - disc[..., centre].int()).abs().max() <= 3


def test_augment_varies_and_is_reproducible():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 1, 16, 16), dtype=np.uint8))
    a = augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(2)))


def test_batch_loader_visits_each_galaxy_once():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    votes = np.arange(10).reshape(10, 1)
    loader = BatchLoader(images, votes, 4, shuffle=True, augmented=False, seed=0)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[0]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1][:, 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(torch.cat([b[0].flatten() for b in batches]).long(), seen)


@pytest.mark.parametrize(("size", "sizes"), [(9, [4, 5]), (1, [1]), (5, [5]), (8, [4, 4]), (10, [4, 4, 2])])
def test_a_last_batch_of_one_galaxy_joins_the_one_before(size, sizes):
    loader = BatchLoader(np.zeros((size, 1, 1, 1), np.uint8), np.arange(size).reshape(size, 1), 4, shuffle=True, augmented=False, seed=0)
    batches = [len(votes) for _, votes in loader]
    assert batches == sizes and len(loader) == len(sizes)


def test_resnet_ending_in_one_pixel_maps_trains_when_the_last_batch_would_hold_one_galaxy(tmp_path):
    """121 training galaxies in batches of 8 left one for the last batch; resnet_s at 16 px ends in 1 x 1
    maps, where batch normalisation cannot train on a single galaxy (a ValueError traceback)."""
    tiles, labels = write_ring_survey(str(tmp_path), n=129)
    table = pd.read_parquet(labels)
    table["split"] = ["validation"] * 8 + ["train"] * 121
    table.to_parquet(labels)
    result = train(_config(tmp_path, tiles, labels, arch="resnet_s", resize_px=16))
    assert result.n_train == 121


def test_a_batch_size_of_one_is_refused_for_a_network_that_normalises_batches(tmp_path):
    """A last batch of one joins the one before, but --batch-size 1 made every batch one galaxy: a ValueError
    traceback from torch (exit 3). w20 has no batch normalisation and trains so."""
    tiles, labels = write_ring_survey(str(tmp_path))
    with pytest.raises(InputError, match=r"^resnet_s normalises each training batch, which needs 2 galaxies at least; got a "
                                         r"batch size of 1 and 36 training galaxies: give --batch-size 2 or more"):
        train(_config(tmp_path, tiles, labels, arch="resnet_s", batch_size=1))
    assert train(_config(tmp_path, tiles, labels, batch_size=1, out=str(tmp_path / "w.ckpt"))).n_train == 36


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_the_minimum_at_the_last_step():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=15, min_ratio=0.1)
    assert [learning_rate(s, **kw) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # steps 4..14 are the decay: u = (step - 4) / 10
    assert learning_rate(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(13, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert learning_rate(14, **kw) == pytest.approx(0.1) and learning_rate(99, **kw) == pytest.approx(0.1)
    # one step after warm-up, or none at all: that step is the last and takes the minimum
    assert learning_rate(4, base_lr=1.0, warmup_steps=4, total_steps=5, min_ratio=0.1) == pytest.approx(0.1)
    assert learning_rate(0, base_lr=1.0, warmup_steps=0, total_steps=1, min_ratio=0.1) == pytest.approx(0.1)


def test_input_spec_statistics_are_numpys_in_float64_whatever_the_chunking():
    from skymorph.trainer.loop import _input_spec

    images = np.random.default_rng(0).integers(0, 256, (9, 3, 5, 4), dtype=np.uint8)
    images[:, 2] = 7  # a constant channel: its std is floored at 1e-3
    rows = np.array([0, 2, 3, 5, 8])
    scaled = images[rows].astype(np.float64) / 255
    for chunk_values in (1, 60, 130, 1 << 22):  # one image a chunk, two, all
        spec = _input_spec(images, rows, 0.8, None, chunk_values=chunk_values)
        np.testing.assert_allclose(spec.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-13)
        np.testing.assert_allclose(spec.std[:2], scaled.std(axis=(0, 2, 3))[:2], rtol=1e-12)
        assert spec.std[2] == 1e-3 and spec.mean[2] == 7 / 255
        assert (spec.shape, spec.crop_fraction) == ((3, 5, 4), 0.8)


def test_positions_finds_each_id_or_minus_one():
    from skymorph.tables import index_in

    keys = np.array([40, 10, 30, 20], dtype=np.int64)
    assert index_in(keys, np.array([30, 5, 40, 10, 99, 20])).tolist() == [2, -1, 0, 1, -1, 3]
    assert index_in(keys[:0], np.array([1, 2])).tolist() == [-1, -1]


def test_batch_loader_over_rows_gives_the_batches_of_the_copied_subset():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    votes = np.arange(20).reshape(20, 1)
    rows = np.array([1, 4, 5, 9, 12, 13, 17])
    copied = list(BatchLoader(images[rows], votes[rows], 3, shuffle=True, augmented=False, seed=5))
    viewed = BatchLoader(images, votes, 3, shuffle=True, augmented=False, seed=5, rows=rows)
    assert len(viewed) == 2  # 3 + 4: the last galaxy joins the batch before
    for (a, va), (b, vb) in zip(copied, viewed, strict=True):
        assert torch.equal(a, b) and torch.equal(va, vb)


# ---- checkpoints ---------------------------------------------------------------------------------------


def _meta(schema="gz2"):
    return CheckpointMeta(
        schema=get_schema(schema), arch="w20", likelihood="multinomial", dropout=0.5,
        input=InputSpec(1, 32, 32, mean=(0.2,), std=(0.3,)), provenance={"seed": 1}, metrics=({"epoch": 1, "val_loss": 0.5},),
    )


def test_checkpoint_round_trip_and_weights_only_load(tmp_path):
    meta = _meta()
    model = build_model("w20", meta.schema, meta.input, "multinomial")
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, model, meta, training={"epoch": 3, "rng": torch.get_rng_state()})
    raw = torch.load(path, weights_only=True)
    assert CheckpointMeta.from_json(raw["metadata"]) == meta
    loaded, got_meta, training = load_checkpoint(path, expect_schema="gz2")
    assert got_meta == meta and training["epoch"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_checkpoint_with_a_flipped_byte_is_refused(tmp_path):
    """torch.load does not check the archive's CRC-32s: a checkpoint damaged in storage loaded its wrong
    weights without a word, and was exported and run."""
    import zipfile

    meta = _meta()
    path = tmp_path / "c.ckpt"
    save_checkpoint(str(path), build_model("w20", meta.schema, meta.input, "multinomial"), meta)
    data = bytearray(path.read_bytes())
    (tmp_path / "c.ckpt.orig").write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)  # a weight tensor, stored uncompressed
    start = largest.header_offset + 30 + len(largest.filename.encode()) + len(largest.extra)
    data[start + largest.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"c.ckpt' is damaged: its '{largest.filename.rsplit('/', 1)[-1]}' record fails its CRC-32 "
                                         r"check; give an undamaged copy of the checkpoint$"):
        load_checkpoint(str(path))
    legacy = tmp_path / "legacy.ckpt"  # torch's format before zip archives: no CRC to check, and it still loads
    torch.save(torch.load(tmp_path / "c.ckpt.orig", weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(str(legacy))[1] == meta


def test_numpy_numbers_in_a_checkpoints_metadata_are_saved_as_numbers(tmp_path):
    """json's default=str wrote np.int64(32) as "32": training succeeded and its checkpoint could not be loaded."""
    meta = dataclasses.replace(_meta(), arch_params={"dense": np.int64(16)}, input=InputSpec(1, 32, 32, crop_fraction=np.float32(0.5)))
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, build_model("w20", meta.schema, meta.input, "multinomial", dense=16), meta)
    _, loaded, _ = load_checkpoint(path)
    assert loaded.arch_params == {"dense": 16} and loaded.input.crop_fraction == 0.5


def test_a_checkpoint_whose_weights_or_training_state_are_not_tables_is_one_line(tmp_path):
    model = build_model("w20", GZ2, _meta().input, "multinomial")
    for damage in ({"model": [1, 2]}, {"training": "epoch 3"}):
        payload = {"format": "skymorph-checkpoint", "format_version": 1, "metadata": _meta().to_json(), "model": model.state_dict(), **damage}
        torch.save(payload, tmp_path / "damaged.ckpt")
        with pytest.raises(ModelError, match=r"damaged.ckpt' is a skymorph checkpoint without its weights or with damaged training state"):
            load_checkpoint(str(tmp_path / "damaged.ckpt"))


def test_checkpoint_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    for content in (b"not a checkpoint at all", b""):
        bad.write_bytes(content)
        with pytest.raises(ModelError, match=r"bad.ckpt' is not a checkpoint; give the .ckpt written by `skymorph train`"):
            read_checkpoint(str(bad))
    bad.write_bytes(b"PAR1" + bytes(100))  # torch's message was about unpickling, cut off mid-word
    with pytest.raises(ModelError, match=r"is not a checkpoint \(it is Parquet\)"):
        read_checkpoint(str(bad))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    bad.write_bytes((tmp_path / "other.pt").read_bytes()[:200])  # a torch file cut short
    with pytest.raises(ModelError, match=r"not a readable checkpoint \(corrupt or not a torch file: "):
        read_checkpoint(str(bad))
    with pytest.raises(ModelError, match="not a skymorph checkpoint"):
        read_checkpoint(str(tmp_path / "other.pt"))
    # a whole module: torch's refusal, with terminal colour codes, cut off mid-word
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ModelError, match=r"^'.*module.pt' is a torch file of pickled Python objects \(a whole model saved "
                                         r"with torch.save, say\), which is not loaded: it could run any code; give the "
                                         r"\.ckpt written by `skymorph train`$"):
        read_checkpoint(str(tmp_path / "module.pt"))
    import pickle
    import warnings

    bad.write_bytes(pickle.dumps({"a": 1}, protocol=4))  # torch warned about the protocol on stderr first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match=r"bad.ckpt' is not a checkpoint; give the .ckpt written by `skymorph train`"):
            read_checkpoint(str(bad))
    torch.save({"format": "skymorph-checkpoint", "format_version": 1, "model": {}}, tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="without its metadata") as caught:
        load_checkpoint(str(tmp_path / "bare.pt"))
    assert "\n" not in str(caught.value)
    meta = _meta()
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, build_model("w20", meta.schema, meta.input), meta)
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "c.ckpt").read_bytes()[:5000])
    with pytest.raises(ModelError, match="corrupt"):
        read_checkpoint(str(tmp_path / "cut.ckpt"))
    with pytest.raises(SchemaError, match="trained on schema 'gz2'"):
        load_checkpoint(path, expect_schema="decals")


# ---- training ------------------------------------------------------------------------------------------


def _state(path):
    return load_checkpoint(path)[0].state_dict()


def test_training_learns_the_ring_survey(tmp_path):
    """Nothing checked that training learns: a loss climbed instead of descended passed the suite."""
    import pyarrow.parquet as pq

    from skymorph.tiles import open_tile, read_tile_list
    from skymorph.trainer.evaluate import predict

    tiles, labels = write_ring_survey(str(tmp_path))
    result = train(_config(tmp_path, tiles, labels, arch="resnet_s", epochs=4, lr=3e-3))
    losses = [m["val_loss"] for m in result.metrics]
    assert losses[-1] < 0.6 * losses[0], losses

    table = pq.read_table(labels).to_pandas()
    validation = table[table["split"] == "validation"]
    images = np.concatenate([open_tile(url).read_images() for url in read_tile_list(tiles)])
    ids = np.concatenate([open_tile(url).read_coords()[0] for url in read_tile_list(tiles)])
    rows = np.searchsorted(ids, validation["object_id"].to_numpy())
    model, _, _ = load_checkpoint(result.checkpoint)
    fraction = predict(model, images[rows], samples=8)[:, :, GZ2.answer_index("has_spiral_arms", "yes")].mean(axis=1)
    ring = validation["has_spiral_arms_yes"].to_numpy() > 4
    assert 0 < ring.sum() < len(ring)
    assert fraction[ring].mean() > fraction[~ring].mean() + 0.3
    assert np.mean((fraction > 0.5) == ring) >= 0.9


def test_epoch_seeds_give_distinct_shuffles_across_the_seed_range():
    """torch's generator keeps 32 bits of its seed: seeds s, s + 2**32 and s + 2**63 shared every epoch's
    shuffle. Seeds below 2**32 keep the shuffles they had (torch's 32 bits of the old modulus-2**64 value),
    so earlier runs' weights are reproduced."""
    def order(seed: int) -> list[int]:
        return torch.randperm(50, generator=torch.Generator().manual_seed(_epoch_seed(seed, 4))).tolist()

    assert [_epoch_seed(7, epoch) for epoch in range(3)] == [7_000_021, 7_000_022, 7_000_023]
    for seed in (0, 1, 4295, 2**32 - 1):
        assert _epoch_seed(seed, 4) == (seed * 1_000_003 + 4) % 2**64 % 2**32
        assert order(seed) != order(seed + 2**32) and order(seed) != order(seed + 2**63)
    assert order(2**64 - 1) != order(2**32 - 1)


def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    a = train(_config(tmp_path, tiles, labels, epochs=2, out=str(tmp_path / "a.ckpt")))
    b = train(_config(tmp_path, tiles, labels, epochs=2, out=str(tmp_path / "b.ckpt")))
    wa, wb = _state(a.last_checkpoint), _state(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.epochs_run == 2 and len(a.metrics) == 2

    half = train(_config(tmp_path, tiles, labels, epochs=2, stop_after_epochs=1, out=str(tmp_path / "c.ckpt")))
    assert half.epochs_run == 1 and half.stopped == "stop_after_epochs"
    # --resume takes epochs (and every other run setting) from the checkpoint when not given
    rest = train(_config(tmp_path, tiles, labels, epochs=None, out=str(tmp_path / "c.ckpt"), resume=half.last_checkpoint))
    assert [m["epoch"] for m in rest.metrics] == [1, 2]
    # the summary said "trained 2 epoch(s) ... in" this session's minutes: the run's epochs, one session's time
    assert (rest.epochs_run, rest.resumed_at) == (2, 1) and str(rest).startswith("trained 1 epoch(s) (epoch 2 of the run) on ")
    assert str(half).startswith("trained 1 epoch(s) on ")
    # why it stopped, in words ("(stop_after_epochs)"), and how many galaxies the best loss is of
    assert (f" min (paused by --stop-after-epochs); best epoch 1: validation loss {half.best_val_loss:.4f} on "
            f"{half.n_validation} galaxies -> {half.checkpoint}; continue with --resume {half.last_checkpoint}") in str(half)
    wc = _state(rest.last_checkpoint)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    metrics = json.loads((tmp_path / "c.ckpt.metrics.json").read_text())
    assert [m["val_loss"] for m in metrics["epochs"]] == [m["val_loss"] for m in a.metrics]


def test_a_pause_where_early_stopping_fires_resumes_to_the_same_stop(tmp_path):
    """The pause was tested before the patience: a run paused in the epoch where it stopped early trained
    another epoch when resumed, as did a resume of a run that had stopped early."""
    tiles, labels = write_ring_survey(str(tmp_path))
    settings = dict(epochs=8, patience=1, lr=3e-2)  # a rate high enough that the validation loss soon rises
    full = train(_config(tmp_path, tiles, labels, out=str(tmp_path / "full.ckpt"), **settings))
    assert full.stopped == "early_stopping" and full.epochs_run < 8
    half = train(_config(tmp_path, tiles, labels, out=str(tmp_path / "half.ckpt"), stop_after_epochs=full.epochs_run, **settings))
    assert half.stopped == "early_stopping" and half.epochs_run == full.epochs_run
    for resumed_from in (half, full):
        rest = train(_config(tmp_path, tiles, labels, epochs=None, out=resumed_from.checkpoint, resume=resumed_from.last_checkpoint))
        assert rest.stopped == "early_stopping" and rest.epochs_run == full.epochs_run
        assert [m["val_loss"] for m in rest.metrics] == [m["val_loss"] for m in full.metrics]
    assert str(rest).startswith(f"nothing left to train after the run's {full.epochs_run} epoch(s) on 36 galaxies (stopped early: ")


def test_the_python_api_refuses_to_replace_a_model_or_evaluation_unless_told(tmp_path):
    """The command line refused an existing --out without --overwrite, while train(), evaluate() and
    export_onnx() replaced it: a notebook could lose a trained model."""
    from skymorph.exporter import export_onnx
    from skymorph.trainer import evaluate

    tiles, labels = write_ring_survey(str(tmp_path))
    first = train(_config(tmp_path, tiles, labels))
    before = Path(first.checkpoint).read_bytes()
    with pytest.raises(InputError, match=r"--out '.*m.ckpt' exists \(and 2 more of its files\); pass --overwrite"):
        train(_config(tmp_path, tiles, labels, seed=1))
    assert Path(first.checkpoint).read_bytes() == before
    assert train(_config(tmp_path, tiles, labels, seed=1, overwrite=True)).checkpoint == first.checkpoint
    onnx, evaluation = str(tmp_path / "m.onnx"), str(tmp_path / "eval")
    export_onnx(first.checkpoint, onnx, samples=2)
    evaluate(first.checkpoint, tiles, labels, evaluation, samples=2, progress=False)
    for again in (lambda **kw: export_onnx(first.checkpoint, onnx, samples=2, **kw),
                  lambda **kw: evaluate(first.checkpoint, tiles, labels, evaluation, samples=2, progress=False, **kw)):
        with pytest.raises(InputError, match="exists"):
            again()
        again(overwrite=True)


def test_the_tree_labels_record_is_trained_and_checked_and_one_they_do_not_is_warned_about(tmp_path, capsys):
    """gz2 votes on has_spiral_arms alone fit decals too: without --schema they trained a decals model, and a
    decals checkpoint fine-tuned on them, without a word."""
    import pyarrow.parquet as pq

    from skymorph.trainer import evaluate
    from skymorph.trainer.labels import labels_schema

    tiles, labels = write_ring_survey(str(tmp_path))  # gz2 votes, no tree recorded
    recorded = str(tmp_path / "recorded.parquet")
    table = pq.read_table(labels)
    pq.write_table(table.replace_schema_metadata({"skymorph.schema": GZ2.to_json()}), recorded)
    broken = str(tmp_path / "broken.parquet")
    pq.write_table(table.replace_schema_metadata({"skymorph.schema": "{not json"}), broken)
    pd.read_parquet(labels).to_csv(tmp_path / "labels.csv", index=False)
    assert labels_schema(recorded).name == "gz2"
    assert labels_schema(labels) is None and labels_schema(str(tmp_path / "labels.csv")) is None
    assert labels_schema(str(tmp_path / "missing.parquet")) is None  # load_labels says what is wrong
    with pytest.raises(SchemaError, match="skymorph.schema metadata"):
        labels_schema(broken)

    default = train(_config(tmp_path, tiles, labels, schema=None, out=str(tmp_path / "d.ckpt")))
    assert load_checkpoint(default.checkpoint)[1].schema.name == "decals"
    assert (f"labels {labels!r} name no decision tree, and their votes fit gz2 as well as 'decals', the default, which "
            "this model is trained on; give --schema to choose") in capsys.readouterr().err
    taken = train(_config(tmp_path, tiles, recorded, schema=None, out=str(tmp_path / "g.ckpt")))
    assert load_checkpoint(taken.checkpoint)[1].schema.name == "gz2" and capsys.readouterr().err == ""
    with pytest.raises(SchemaError, match=rf"--finetune '.*d.ckpt' was trained on schema 'decals' .* labels {recorded!r} "
                                          "record votes of 'gz2': give labels of its tree"):
        train(_config(tmp_path, tiles, recorded, schema=None, finetune=default.checkpoint, out=str(tmp_path / "f.ckpt")))
    with pytest.raises(SchemaError, match="record votes of 'gz2': evaluate a model of that tree on them"):
        evaluate(default.checkpoint, tiles, recorded, str(tmp_path / "eval"), samples=2, progress=False)


def test_dropout_0_trains_with_a_warning_that_its_posteriors_have_no_width(tmp_path, capsys):
    tiles, labels = write_ring_survey(str(tmp_path))
    plain = train(_config(tmp_path, tiles, labels, dropout=0.0))
    assert load_checkpoint(plain.checkpoint)[1].dropout == 0.0
    assert ("skymorph: warning: dropout 0: every MC-dropout sample of this model will agree, so its posteriors have no width "
            "and every BALD score is 0; give --dropout in (0, 1), e.g. 0.5, for a Bayesian model") in capsys.readouterr().err
    train(_config(tmp_path, tiles, labels, out=str(tmp_path / "b.ckpt")))
    assert "dropout 0" not in capsys.readouterr().err


def test_resume_keeps_the_runs_patience_unless_given(tmp_path):
    """--resume fell back to patience 5: a run started with --patience 1000 stopped early after its resume."""
    tiles, labels = write_ring_survey(str(tmp_path))
    half = train(_config(tmp_path, tiles, labels, epochs=3, patience=1000, stop_after_epochs=1))
    resumed = dict(epochs=None, resume=half.last_checkpoint)
    assert load_checkpoint(train(_config(tmp_path, tiles, labels, **resumed, stop_after_epochs=1)).last_checkpoint)[1] \
        .provenance["config"]["patience"] == 1000
    again = train(_config(tmp_path, tiles, labels, **resumed, patience=1))  # may change on resume
    assert load_checkpoint(again.last_checkpoint)[1].provenance["config"]["patience"] == 1
    assert _config(tmp_path, tiles, labels).patience is None


def test_ema_saves_the_moving_average_of_the_plain_runs_weights_and_resumes_exactly(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    # 36 training galaxies in one batch: one step per epoch, so after 2 epochs w_ema = d * w1 + (1 - d) * w2.
    run = dict(epochs=2, batch_size=64, arch="resnet_s", arch_params={"widths": [8, 16], "depths": [1, 1]}, patience=5)
    w1 = _state(train(_config(tmp_path, tiles, labels, **run, stop_after_epochs=1, out=str(tmp_path / "p1.ckpt"))).last_checkpoint)
    w2 = _state(train(_config(tmp_path, tiles, labels, **run, out=str(tmp_path / "p2.ckpt"))).last_checkpoint)
    ema = train(_config(tmp_path, tiles, labels, **run, ema_decay=0.75, out=str(tmp_path / "e.ckpt")))
    we = _state(ema.last_checkpoint)
    floats = [k for k in we if we[k].is_floating_point()]
    assert any(k.endswith("running_var") for k in floats)
    for k in floats:
        torch.testing.assert_close(we[k], 0.75 * w1[k] + 0.25 * w2[k], rtol=1e-5, atol=1e-6)
    _, _, training = load_checkpoint(ema.last_checkpoint)
    assert training["ema_n_averaged"] == 2 and all(torch.equal(training["raw_weights"][k], w2[k]) for k in w2)
    assert ema.metrics[-1]["val_loss"] == pytest.approx(json.loads((tmp_path / "e.ckpt.metrics.json").read_text())["epochs"][-1]["val_loss"])

    half = train(_config(tmp_path, tiles, labels, **run, ema_decay=0.75, stop_after_epochs=1, out=str(tmp_path / "h.ckpt")))
    # --ema-decay is the checkpoint's, as the run's other settings (it had to be given again)
    rest = train(_config(tmp_path, tiles, labels, **run, resume=half.last_checkpoint, out=str(tmp_path / "h.ckpt")))
    wr = _state(rest.last_checkpoint)
    assert all(torch.equal(wr[k], we[k]) for k in we)
    with pytest.raises(ModelError, match=r"was trained with ema_decay=0.75 but ema_decay=0.5 was given; drop it"):
        train(_config(tmp_path, tiles, labels, **run, ema_decay=0.5, resume=half.last_checkpoint, out=str(tmp_path / "h.ckpt")))
    with pytest.raises(InputError, match="ema_decay must be in"):
        _config(tmp_path, tiles, labels, ema_decay=1.0)


def test_finetune_starts_from_trained_weights_and_checks_the_schema(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    base = train(_config(tmp_path, tiles, labels, out=str(tmp_path / "base.ckpt")))
    tuned = train(_config(tmp_path, tiles, labels, finetune=base.checkpoint, lr=1e-9, warmup_epochs=0, out=str(tmp_path / "ft.ckpt")))
    _, meta, _ = load_checkpoint(tuned.checkpoint)
    assert meta.provenance["finetuned_from"] == base.checkpoint
    w0, w1 = _state(base.checkpoint), _state(tuned.checkpoint)
    assert all(torch.allclose(w0[k].float(), w1[k].float(), atol=1e-5) for k in w0)

    other = tmp_path / "decals.ckpt"
    meta = CheckpointMeta(get_schema("decals"), "w20", "multinomial", 0.5, InputSpec(1, 32, 32))
    save_checkpoint(str(other), build_model("w20", meta.schema, meta.input), meta)
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--out", str(tmp_path / "x.ckpt"), "--finetune", str(other)]
    _expect_one_line_error(argv, f"--finetune {str(other)!r} was trained on schema 'decals' (34 answers), not 'gz2' (30 answers); "
                                 "drop --schema (--finetune takes the checkpoint's)")
    # labels that do not record their tree: the advice was --schema gz2, which --finetune refuses (above)
    csv = tmp_path / "labels.csv"
    gz2_votes = pd.read_parquet(labels)
    for column in set(get_schema("gz2").answer_columns) - set(gz2_votes.columns):
        gz2_votes[column] = 0
    gz2_votes.to_csv(csv, index=False)
    argv = ["train", "--tiles", tiles, "--labels", str(csv), "--out", str(tmp_path / "x.ckpt"), "--finetune", str(other)]
    _expect_one_line_error(argv, f"not of 'decals', the tree of --finetune {str(other)!r}; give labels of 'decals', or use a "
                                 "model of 'gz2' (train one with --schema gz2)")


def test_resume_and_finetune_take_the_schema_from_the_checkpoint(tmp_path, capsys):
    """Without --schema they checked the checkpoint against decals, the default for a new model, and told
    a user fine-tuning a gz2 model to "use a checkpoint trained on 'decals'"."""
    tiles, labels = write_ring_survey(str(tmp_path))  # gz2 votes
    base = train(_config(tmp_path, tiles, labels, epochs=2, stop_after_epochs=1, out=str(tmp_path / "b.ckpt")))
    common = ["train", "--tiles", tiles, "--labels", labels, "--batch-size", "8", "--threads", "1"]
    assert cli.main([*common, "--finetune", base.checkpoint, "--epochs", "1", "--out", str(tmp_path / "f.ckpt")]) == 0
    assert cli.main([*common, "--resume", base.last_checkpoint, "--out", str(tmp_path / "b.ckpt")]) == 0
    for path in ("f.ckpt", "b.ckpt"):
        meta = load_checkpoint(str(tmp_path / path))[1]
        assert meta.schema.name == meta.provenance["config"]["schema"] == "gz2"
    assert cli.main([*common, "--epochs", "1", "--out", str(tmp_path / "new.ckpt")]) == 0  # its answers are decals' too
    meta = load_checkpoint(str(tmp_path / "new.ckpt"))[1]
    assert meta.schema.name == meta.provenance["config"]["schema"] == "decals"  # a new model's default, recorded



def test_finetune_keeps_the_checkpoints_validation_galaxies(tmp_path, capsys):
    """--finetune used to fall back to seed 0 and --val-fraction 0.1: most of the galaxies the weights were
    validated on went into training, without a word."""
    import pyarrow.parquet as pq

    tiles, labels = write_ring_survey(str(tmp_path))
    hashed = str(tmp_path / "hashed.parquet")  # no split column: the split hashes object ids with the seed
    pq.write_table(pq.read_table(labels).drop_columns(["split"]), hashed)
    base = train(_config(tmp_path, tiles, hashed, seed=5, val_fraction=0.3, out=str(tmp_path / "base.ckpt")))
    tuned = train(_config(tmp_path, tiles, hashed, finetune=base.checkpoint, out=str(tmp_path / "ft.ckpt")))
    base_meta, tuned_meta = load_checkpoint(base.checkpoint)[1], load_checkpoint(tuned.checkpoint)[1]
    assert {k: tuned_meta.provenance["config"][k] for k in ("seed", "val_fraction")} == {"seed": 5, "val_fraction": 0.3}
    assert tuned_meta.provenance["n_validation"] == base_meta.provenance["n_validation"]
    assert capsys.readouterr().err == ""

    train(_config(tmp_path, tiles, hashed, finetune=base.checkpoint, seed=1, out=str(tmp_path / "ft1.ckpt")))
    err = capsys.readouterr().err
    assert "skymorph: warning: --finetune" in err and "seed=5; with seed=1 some of its validation galaxies are trained on" in err
    # labels that split otherwise (a split column here) would train on its validation galaxies too
    train(_config(tmp_path, tiles, labels, finetune=base.checkpoint, out=str(tmp_path / "ft2.ckpt")))
    assert (f"was validated on the seed's hash split and {labels!r} has a split column, which is used: some of its "
            "validation galaxies may be trained on") in capsys.readouterr().err


def test_resume_and_finetune_take_the_model_from_the_checkpoint_and_refuse_other_flags(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    small = dict(arch="resnet_s", arch_params={"widths": [8, 16], "depths": [1, 1]}, dropout=0.3, crop_fraction=0.75)
    base = train(_config(tmp_path, tiles, labels, **small, epochs=2, stop_after_epochs=1, out=str(tmp_path / "b.ckpt")))
    # no model flags: the checkpoint's; the same values given again (lists or tuples): accepted
    for i, run in enumerate(({}, {**small, "arch_params": {"widths": (8, 16), "depths": (1, 1)}})):
        tuned = train(_config(tmp_path, tiles, labels, **run, finetune=base.checkpoint, out=str(tmp_path / f"f{i}.ckpt")))
        _, meta, _ = load_checkpoint(tuned.checkpoint)
        assert (meta.arch, meta.arch_params, meta.dropout, meta.input.crop_fraction) == ("resnet_s", small["arch_params"], 0.3, 0.75)
    for flag, value in (("arch", "w20"), ("dropout", 0.5), ("crop_fraction", 1.0), ("likelihood", "dirichlet_multinomial"),
                        ("arch_params", {"widths": [16, 32], "depths": [1, 1]}), ("resize_px", 16)):
        for start in ({"finetune": base.checkpoint}, {"resume": base.last_checkpoint}):
            with pytest.raises(ModelError, match=f"was trained with {flag}=.* but {flag}=.* was given; drop it"):
                out = str(tmp_path / ("b.ckpt" if "resume" in start else "new.ckpt"))  # a resume continues its own
                train(_config(tmp_path, tiles, labels, **{flag: value}, **start, epochs=2, out=out))
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--out", str(tmp_path / "b.ckpt"),
            "--resume", base.last_checkpoint, "--epochs", "2", "--arch", "w20"]
    _expect_one_line_error(argv, "was trained with arch='resnet_s' but arch='w20' was given")


def test_resume_refuses_other_run_settings_and_labels_and_keeps_the_runs_provenance(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    first = train(_config(tmp_path, tiles, labels, epochs=2, seed=3, val_fraction=0.3, stop_after_epochs=1, lr=2e-3))
    resume = dict(resume=first.last_checkpoint, epochs=None, batch_size=None)
    for flag, value in (("seed", 4), ("val_fraction", 0.2), ("epochs", 3), ("batch_size", 16), ("lr", 1e-3), ("augment", False)):
        with pytest.raises(ModelError, match=f"was trained with {flag}=.* but {flag}={value!r} was given; drop it"):
            train(_config(tmp_path, tiles, labels, **{**resume, flag: value}))
    other = tmp_path / "other.csv"
    pd.read_parquet(labels).assign(has_spiral_arms_yes=lambda t: t["has_spiral_arms_yes"] + 1).to_csv(other, index=False)
    with pytest.raises(InputError, match="trained on labels with sha256 .* resume with the run's labels"):
        train(_config(tmp_path, tiles, str(other), **resume))
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--out", str(tmp_path / "m.ckpt"),
            "--threads", "1", "--resume", first.last_checkpoint, "--seed", "0"]
    _expect_one_line_error(argv, "was trained with seed=3 but seed=0 was given")

    # nothing given: the checkpoint's settings, so the validation set is the one the run started with
    rest = train(_config(tmp_path, tiles, labels, **resume))
    assert (rest.epochs_run, rest.n_train, rest.n_validation) == (2, first.n_train, first.n_validation)
    _, before, _ = load_checkpoint(first.last_checkpoint)
    _, after, _ = load_checkpoint(rest.last_checkpoint)
    assert {k: after.provenance["config"][k] for k in ("seed", "val_fraction", "epochs", "batch_size", "lr")} == {
        "seed": 3, "val_fraction": 0.3, "epochs": 2, "batch_size": 8, "lr": 2e-3}
    assert after.provenance["created"] == before.provenance["created"] and after.provenance["seed"] == 3
    # --finetune starts a new run: its settings are free
    tuned = train(_config(tmp_path, tiles, labels, finetune=first.checkpoint, seed=4, out=str(tmp_path / "ft.ckpt")))
    assert load_checkpoint(tuned.checkpoint)[1].provenance["seed"] == 4


def test_non_finite_settings_are_refused_before_reading_anything(tmp_path):
    for key, value in (("warmup_epochs", math.inf), ("warmup_epochs", math.nan), ("lr", math.inf), ("weight_decay", math.inf)):
        with pytest.raises(InputError, match=f"{key} must be a finite number"):
            _config(tmp_path, "tiles.txt", "labels.csv", **{key: value})
    argv = ["train", "--tiles", str(tmp_path / "none.txt"), "--labels", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.ckpt"),
            "--warmup-epochs", "inf"]
    _expect_one_line_error(argv, "warmup_epochs must be a finite number >= 0, got inf")


def test_arch_params_from_the_command_line(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    out = str(tmp_path / "wide.ckpt")
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--arch", "resnet_s", "--epochs", "1",
            "--threads", "1", "--out", out]
    assert cli.main([*argv, "--arch-params", '{"widths": [8, 16], "depths": [1, 2]}']) == 0
    model, meta, _ = load_checkpoint(out)
    assert meta.arch_params == {"widths": [8, 16], "depths": [1, 2]} and model.num_features == 16
    _expect_one_line_error([*argv, "--arch-params", '{"width": [8, 16]}'], "takes no parameter 'width'")
    _expect_one_line_error([*argv, "--arch", "w20", "--arch-params", '{"widths": [8]}'], "architecture 'w20' takes no parameter 'widths'")

def _expect_one_line_error(argv, text):
    """``cli.main(argv)`` exits 2 with exactly one ``skymorph: error:`` line holding ``text``, no traceback
    (progress bars, also on stderr, are ignored)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    lines = re.split(r"[\r\n]", err.getvalue())
    errors = [line for line in lines if line.startswith("skymorph: error: ")]
    assert code == 2 and len(errors) == 1 and text in errors[0] and "Traceback" not in err.getvalue(), err.getvalue()


def test_cli_train_bad_labels_are_one_line_errors(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    base = ["train", "--tiles", tiles, "--schema", "gz2", "--out", str(tmp_path / "m.ckpt"), "--epochs", "1", "--threads", "1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("object_id,has_spiral_arm_yes\n1000,1\n")
    _expect_one_line_error(base + ["--labels", str(bad)], "Did you mean 'has_spiral_arms_yes'")
    orphan = tmp_path / "orphan.csv"
    orphan.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no,split\n1000,1,0,train\n1001,0,1,validation\n99,1,0,train\n")
    _expect_one_line_error(base + ["--labels", str(orphan)], "orphan.csv': object_id 99 has no image in the 2 tile(s) given; check "
                                                            "--tiles, or pass --drop-unmatched to go on without them")
    assert cli.main(base + ["--labels", str(orphan), "--drop-unmatched"]) == 0
    _, meta, _ = load_checkpoint(str(tmp_path / "m.ckpt"))
    assert meta.provenance["n_train"] == 1 and meta.provenance["n_validation"] == 1
    _expect_one_line_error(base + ["--labels", str(tmp_path / "missing.parquet"), "--overwrite"], "missing.parquet")
    _expect_one_line_error(["train", "--tiles", tiles, "--labels", labels, "--out", "x.ckpt", "--schema", "gz3"], "unknown schema 'gz3'")


def test_labels_of_another_surveys_images_are_refused(tmp_path):
    """Synthetic surveys all number their galaxies from 0: one survey's labels trained on another's images
    without a word. The labels' tile and row columns now have to agree with where each image is found."""
    from skymorph.survey.synth import synthesize

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out, seed in ((a, 0), (b, 1)):
        synthesize(out, n_tiles=2, per_tile=8, size=16, seed=seed, schema="gz2", workers=1, progress=False)
    base = ["train", "--schema", "gz2", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "m.ckpt")]
    _expect_one_line_error([*base, "--tiles", f"{b}/tiles.txt", "--labels", f"{a}/labels.parquet"],
                           "put object_id 0 at tile 'hpx5_06879', row 0, but the tiles given hold it only elsewhere (tile "
                           "'hpx5_01056', row 0; 15 more like it): these labels are of another survey's images")
    assert cli.main([*base, "--tiles", f"{a}/tiles.txt", "--labels", f"{a}/labels.parquet"]) == 0


def test_labels_without_locations_are_refused_when_two_surveys_share_object_ids(tmp_path):
    """Without tile and row columns, the last tile holding an id gave its image: all 128 of a review's labels of
    one synthetic survey trained on another's galaxies. One galaxy in two overlapping tiles stays fine."""
    from skymorph.survey.synth import synthesize
    from skymorph.tiles import write_tile

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out, seed in ((a, 0), (b, 1)):
        synthesize(out, n_tiles=1, per_tile=8, size=16, seed=seed, schema="gz2", workers=1, progress=False)
    votes = str(tmp_path / "votes.parquet")
    pd.read_parquet(f"{a}/labels.parquet").drop(columns=["tile", "row"]).to_parquet(votes)
    both = read_tiles(f"{a}/tiles.txt") + read_tiles(f"{b}/tiles.txt")
    with pytest.raises(InputError, match=r"object_id 0 is another galaxy in tile '.*/b/tiles/hpx5_\d+.zarr' than in "
                                         r"'.*/a/tiles/hpx5_\d+.zarr': object ids are unique only within a survey, and these tiles "
                                         "are of two"):
        load_images(both, load_labels(votes, GZ2), progress=False)
    images, _ = load_images(read_tiles(f"{a}/tiles.txt") * 2, load_labels(votes, GZ2), progress=False)  # overlap: same galaxies
    assert np.array_equal(images, load_images(read_tiles(f"{a}/tiles.txt"), load_labels(votes, GZ2), progress=False)[0])

    # placeholder positions say nothing: another image is another galaxy, the same one (an overlap) is not
    urls = [str(tmp_path / f"p{t}.zarr") for t in range(3)]
    for url, value in zip(urls, (1, 1, 2)):
        write_tile(url, np.full((2, 1, 16, 16), value, np.uint8), np.arange(2), np.zeros(2), np.zeros(2), survey="test",
                   bands=["grey"], pixel_scale_arcsec=1.0, stretch="none", resize="none", extra_attrs={"position_is_placeholder": True})
    votes = str(tmp_path / "votes.csv")
    Path(votes).write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no\n0,1,0\n1,0,1\n")
    assert load_images(urls[:2], load_labels(votes, GZ2), progress=False)[0].max() == 1
    with pytest.raises(InputError, match="object_id 0 is another galaxy in tile"):
        load_images(urls, load_labels(votes, GZ2), progress=False)


def test_only_the_tiles_and_chunks_holding_labelled_galaxies_are_read(tmp_path):
    """A fine-tune is given the whole survey's tile list: every tile store of it was opened, and every chunk
    of a tile holding one labelled galaxy decoded. Labels that name each galaxy's tile now read only those
    tiles, and only their chunks with a labelled galaxy: a tile that is not there, or a chunk whose file is
    lost, is never touched when no labelled galaxy is in it."""
    from skymorph.tiles import open_tile, write_tile

    url = str(tmp_path / "tiles" / "t0.zarr")
    images = np.arange(64, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 16, 16), np.uint8)
    write_tile(url, images, np.arange(100, 164), np.full(64, 10.0), np.full(64, -5.0), survey="test", bands=["grey"],
               pixel_scale_arcsec=0.262, stretch="none", resize="none", chunk_size=16)
    (Path(url) / "images" / "c" / "2" / "0" / "0" / "0").unlink()  # rows 32-47: no labelled galaxy there
    labels = str(tmp_path / "labels.csv")
    Path(labels).write_text("object_id,tile,row,has_spiral_arms_yes,has_spiral_arms_no\n105,t0,5,1,0\n160,t0,60,0,1\n")
    tiles = [str(tmp_path / "tiles" / "gone.zarr"), url]
    got, _ = load_images(tiles, load_labels(labels, GZ2), progress=False)
    assert got[:, 0, 0, 0].tolist() == [5, 60]
    with pytest.raises(Exception, match="missing"):  # the lost chunk is there to be found
        open_tile(url).read_images(32, 48)


def test_tile_names_that_look_like_numbers_stay_locations_in_a_csv(tmp_path):
    """tiles/06879.zarr is tile '06879', which a CSV read as the number 6879: the labels' tile and row were then
    ignored, and a stale row trained on whatever image the id matched."""
    from skymorph.tiles import write_tile

    url = str(tmp_path / "tiles" / "06879.zarr")
    write_tile(url, np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 16, 16), np.uint8), np.arange(100, 104),
               np.full(4, 10.0), np.full(4, -5.0), survey="test", bands=["grey"], pixel_scale_arcsec=0.262, stretch="none",
               resize="none")
    labels = tmp_path / "labels.csv"
    labels.write_text("object_id,tile,row,has_spiral_arms_yes,has_spiral_arms_no\n101,06879,1,1,0\n102,06879,3,0,1\n")
    read = load_labels(str(labels), GZ2)
    assert read.tile.tolist() == ["06879", "06879"]
    with pytest.raises(InputError, match=r"put object_id 102 at tile '06879', row 3, but the tiles given hold it only elsewhere"):
        load_images([url], read, progress=False)


def test_a_csv_over_one_block_with_a_line_break_in_a_quoted_cell_reads(tmp_path):
    """Valid CSV (RFC 4180) was refused once it passed pyarrow's 1 MiB block: "CSV parser got out of sync
    with chunker"."""
    from skymorph.tables import read_table

    path = tmp_path / "labels.csv"
    rows = "".join(f'{i},1,0,"seen twice:\nonce in {i}"\n' for i in range(40_000))
    path.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no,comment\n" + rows)
    assert path.stat().st_size > 2**20
    table, _ = read_table(str(path), None)
    assert table.num_rows == 40_000 and table.column("comment")[39_999].as_py() == "seen twice:\nonce in 39999"
    assert load_labels(str(path), GZ2).object_id.tolist() == list(range(40_000))


def test_labels_locate_images_by_tile_name_or_url_and_row(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))  # t0 holds object ids 1000-1023 in rows 0-23, t1 1024-1047
    table = pd.read_parquet(labels)
    n = len(table)
    first = np.arange(n) < n // 2
    table["tile"] = np.where(first, "s3://copy/survey/tiles/t0.zarr/", "t1")  # a catalog's URL (anywhere) or a name
    table["row"] = np.where(first, np.arange(n), np.arange(n) - n // 2)
    table.loc[3, ["tile", "row"]] = [None, None]  # unknown: not checked
    at = str(tmp_path / "at.parquet")
    gz2 = get_schema("gz2")
    table.to_parquet(at)
    images, located = load_images(read_tiles(tiles), load_labels(at, gz2), progress=False)
    assert located.tile[0] == "t0" and located.row[n - 1] == n // 2 - 1 and located.tile[3] is None and located.row[3] == -1
    table.assign(row=table["row"].where(table.index != 30, 5)).to_parquet(at)
    with pytest.raises(InputError, match=r"put object_id 1030 at tile 't1', row 5, but the tiles given hold it only elsewhere "
                                         r"\(tile 't1', row 6; 0 more like it\): these labels are of another survey's images"):
        load_images(read_tiles(tiles), load_labels(at, gz2), progress=False)
    # columns of other kinds are not locations: no check (they trained before the check existed)
    for other in (table.assign(tile=7), table.assign(tile="field 3", row=np.arange(n, dtype=np.uint64) + 2**63),
                  table.assign(row=table["row"] + 0.5), table.drop(columns=["row"])):
        other.to_parquet(at)
        assert load_labels(at, gz2).tile is None
        load_images(read_tiles(tiles), load_labels(at, gz2), progress=False)
    table.assign(tile=table["tile"].astype("category")).to_parquet(at)  # a pandas categorical is still text
    assert list(load_labels(at, gz2).tile[:2]) == ["t0", "t0"]


def test_a_galaxy_in_two_overlapping_tiles_takes_the_image_its_labels_name(tmp_path):
    """`catalog pick` names one row of a galaxy seen in two overlapping tiles; the check refused the other."""
    from skymorph.tiles import write_tile, write_tile_list

    urls = [str(tmp_path / f"t{t}.zarr") for t in range(2)]
    for t, url in enumerate(urls):  # object 5 is row 5 of t0 and row 0 of t1, with different pixels
        ids = np.arange(6) if t == 0 else np.arange(5, 10)
        images = np.full((len(ids), 1, 16, 16), 10 * t + 1, dtype=np.uint8) + ids[:, None, None, None].astype(np.uint8)
        write_tile(url, images, ids, np.zeros(len(ids)), np.zeros(len(ids)), survey="test", bands=["grey"],
                   pixel_scale_arcsec=1.0, stretch="none", resize="none")
    write_tile_list(str(tmp_path / "tiles.txt"), urls)
    at = str(tmp_path / "at.csv")
    for said, pixel in (("t0,5", 6), ("t1,0", 16)):
        Path(at).write_text(f"object_id,has_spiral_arms_yes,has_spiral_arms_no,tile,row\n5,1,0,{said}\n")
        images, _ = load_images(read_tiles(str(tmp_path / "tiles.txt")), load_labels(at, get_schema("gz2")), progress=False)
        assert images[0, 0, 0, 0] == pixel, said
    # training on a subset of the tiles: galaxy 5 is named in t0, which is not given
    Path(at).write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no,tile,row\n5,1,0,t0,5\n7,0,1,,\n")
    labels = load_labels(at, get_schema("gz2"))
    assert list(labels.tile) == ["t0", None]  # an empty CSV cell is no location, not a tile named ""
    with pytest.raises(InputError, match="or their tiles are not among those given; give the tiles they were made from, "
                                         "--drop-unmatched to go on without these galaxies"):
        load_images([urls[1]], labels, progress=False)
    images, kept = load_images([urls[1]], labels, drop_unmatched=True, progress=False)
    assert list(kept.object_id) == [7] and images[0, 0, 0, 0] == 18


def test_cli_train_writes_checkpoint_and_metrics(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    out = str(tmp_path / "m.ckpt")
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--arch", "resnet_s", "--epochs", "2",
            "--batch-size", "16", "--lr", "3e-3", "--warmup-epochs", "0.5", "--threads", "1", "--out", out]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "m.ckpt.metrics.json").read_text())
    assert len(metrics["epochs"]) == 2
    _, meta, training = load_checkpoint(out)
    assert meta.arch == "resnet_s" and meta.input.shape == (1, 32, 32) and training == {}
    assert meta.provenance["labels_sha256"] and meta.provenance["seed"] == 0
    assert meta.provenance["pixels"] == [{"bands": ["grey"], "stretch": "none", "pixel_scale_arcsec": 0.262}]  # run compares
    best = min(metrics["epochs"], key=lambda m: m["val_loss"])
    assert best["epoch"] == metrics["best_epoch"]


def test_train_reads_tiles_and_labels_from_s3_and_writes_the_checkpoint_there(tmp_path, s3_bucket):
    from skymorph.storage import filesystem

    tiles, labels = write_ring_survey(str(tmp_path / "local"))
    fs, root = filesystem(s3_bucket)
    fs.put(str(tmp_path / "local") + "/", f"{root}/survey/", recursive=True)
    out = f"{s3_bucket}/models/m.ckpt"
    result = train(_config(tmp_path, f"{s3_bucket}/survey/tiles.txt", f"{s3_bucket}/survey/labels.parquet", out=out))
    assert result.n_train == 36 and result.n_validation == 12
    _, meta, _ = load_checkpoint(out)
    assert meta.provenance["labels"] == f"{s3_bucket}/survey/labels.parquet"
    assert fs.exists(f"{root}/models/m.ckpt.metrics.json") and fs.exists(f"{root}/models/m.last.ckpt")
    # the survey's prefix, or its local directory, for --labels: "does not exist" or "is a directory", no pointer
    for survey in (f"{s3_bucket}/survey", str(tmp_path / "local")):
        with pytest.raises(InputError, match=rf"^labels '{re.escape(survey)}' is a survey's directory, not a table; its labels "
                                             rf"are '{re.escape(survey)}/labels.parquet'$"):
            load_labels(survey, get_schema("gz2"))
    # The same images and votes read from the local copy train the same weights.
    local = train(_config(tmp_path, tiles, labels, out=str(tmp_path / "local.ckpt")))
    remote_state, local_state = _state(out), _state(local.checkpoint)
    assert remote_state.keys() == local_state.keys()
    for name, tensor in local_state.items():
        assert torch.equal(remote_state[name], tensor), name


# ---- errors a user can make: one line, before the work where possible, and no output claimed ----------


def test_bad_seeds_sizes_and_widths_are_refused_when_the_config_is_made(tmp_path):
    for kwargs, error, message in (
        ({"seed": 10**23}, InputError, "--seed must be a non-negative integer below 2**64, got 100000000000000000000000"),
        ({"seed": -1}, InputError, "--seed must be a non-negative integer below 2**64, got -1"),
        ({"resize_px": 100_000}, InputError, "resize_px (--resize) must be at most 1024 pixels, got 100000"),
        ({"arch": "resnet_s", "arch_params": {"widths": [-1, 0, 2, 3]}}, ModelError, "every one of widths to be an integer from 1 to 4096, got -1"),
        ({"arch": "resnet_s", "arch_params": {"widths": [8, 16], "depths": [1, 0]}}, ModelError, "got 0 in depths=[1, 0]"),
        ({"arch": "resnet_s", "arch_params": {"widths": [8, 16]}}, ModelError, "as many widths as depths"),
        ({"arch_params": {"dense": 0}}, ModelError, "w20 needs dense to be an integer from 1 to 8192, got 0"),
    ):
        with pytest.raises(error) as info:
            _config(tmp_path, "no-tiles.txt", "no-labels.csv", **kwargs)  # neither file exists: nothing is read
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert _config(tmp_path, "t.txt", "l.csv", seed=2**64 - 1).seed == 2**64 - 1


def test_a_galaxy_zoo_volunteer_table_reads_as_its_counts(tmp_path):
    """GZ DECaLS volunteer tables spell answers with hyphens and carry fractions, debiased fractions and
    totals beside the counts; all were refused, the first as "not an answer" of the schema."""
    from skymorph.schema import DECALS

    rng = np.random.default_rng(0)
    questions = ("smooth_or_featured", "has_spiral_arms", "bar")
    counts = {c: rng.integers(0, 20, 6) for q in questions for c in DECALS.answer_columns[DECALS.question_slices[DECALS.question_index(q)]]}
    plain = pd.DataFrame({"object_id": np.arange(6) + 100, **counts})
    plain.to_csv(tmp_path / "plain.csv", index=False)

    export = pd.DataFrame({"iauname": [f"J{i:06d}" for i in range(6)], "object_id": plain.object_id, "ra": 150.0, "dec": 2.0})
    for q in questions:
        answers = DECALS.question(q).answers
        total = sum(counts[f"{q}_{a}"] for a in answers)
        export[f"{q.replace('_', '-')}_total-votes"] = total + 3  # DR5's totals are not always the counts' sum
        for a in answers:
            gz_name = f"{q.replace('_', '-')}_{a.replace('_', '-')}"
            export[gz_name] = counts[f"{q}_{a}"]
            export[f"{gz_name}_fraction"] = counts[f"{q}_{a}"] / np.maximum(total, 1)
            export[f"{gz_name}_debiased"] = rng.uniform(size=6)
    export["Bar Length (kpc)"] = export["Merging-Flag"] = 1.0  # a survey's own columns: not votes, ignored
    export.to_csv(tmp_path / "export.csv", index=False)
    assert "smooth-or-featured_featured-or-disk_fraction" in export and "bar_total-votes" in export

    read, expected = load_labels(str(tmp_path / "export.csv"), DECALS), load_labels(str(tmp_path / "plain.csv"), DECALS)
    assert read.object_id.tolist() == expected.object_id.tolist()
    assert np.array_equal(read.votes, expected.votes) and read.votes.sum() == sum(v.sum() for v in counts.values())

    # labels in the schema's spelling with a volunteer table's rows added: each answer in two columns
    both = pd.concat([plain.iloc[:3], export.iloc[3:]], ignore_index=True)
    both.to_parquet(tmp_path / "both.parquet")
    assert np.array_equal(load_labels(str(tmp_path / "both.parquet"), DECALS).votes, expected.votes)
    both.drop(columns="iauname").fillna(0).to_parquet(tmp_path / "both.parquet")  # as the whole-question error advises: 0 for the other spelling
    assert np.array_equal(load_labels(str(tmp_path / "both.parquet"), DECALS).votes, expected.votes)

    for columns, message in (
        # a galaxy with counts in both spellings: which would be its votes?
        ({"bar_no": [1], "bar-no": [2], "bar_strong": [0], "bar_weak": [0]},
         "object_id 1 has counts in both 'bar_no' and 'bar-no', two spellings of one answer; keep one count per galaxy"),
        # fractions only (GZ2's Kaggle table): ignored, the question's votes would be lost
        ({"bar_strong": [1], "bar_weak": [0], "bar_no": [2], "has-spiral-arms_yes_fraction": [0.4]},
         "column 'has-spiral-arms_yes_fraction' is derived from vote counts, but question 'has_spiral_arms' has no count columns"),
        ({"bar-medium": [1]}, "column 'bar-medium' is not an answer of schema 'decals'. Question 'bar' has answers strong, weak, no."),
        ({"bar_yes": [1], "bar_no": [1]}, "column 'bar_yes' is not an answer of schema 'decals'. It is an answer of schema 'gz2' "
                                          "(--schema gz2 if these are its votes); 'bar' of 'decals' has answers strong, weak, no."),
        ({"smooth-or-featured-dr12_smooth": [1]}, "column 'smooth-or-featured-dr12_smooth' is not an answer of schema 'decals'. "
                                                   "It is smooth_or_featured_smooth with Zoobot's campaign suffix 'dr12', a "
                                                   "campaign that did not ask 'decals''s tree."),
        ({"Class1.1": [0.3], "Class1.2": [0.7]}, "they are the Kaggle Galaxy Zoo challenge's table (Class1.1, ...), vote "
                                                 "fractions without counts"),
        # a galaxy zoo name for the galaxy, or pandas' float ids with an empty cell
        ({"object_id": ["J160453.70-041937.4"], "bar_no": [1], "bar_strong": [0], "bar_weak": [0]},
         "object_id holds text ('J160453.70-041937.4'), not the integer ids of the tile stores"),
        ({"object_id": [1.0, None], "bar_no": [1, 0], "bar_strong": [0, 1], "bar_weak": [0, 0]}, "object_id is empty in 1 row(s)"),
        ({"object_id": [1.5], "bar_no": [1], "bar_strong": [0], "bar_weak": [0]}, "object_id must hold whole numbers within int64"),
        # an SDSS-sized id as a float has lost its last digits: it would name a neighbouring galaxy
        ({"object_id": [587722981742084103.0], "bar_no": [1], "bar_strong": [0], "bar_weak": [0]},
         "object_id is stored as floats, which hold whole numbers only up to 2^53, and these go beyond"),
    ):
        pd.DataFrame({"object_id": [1] * len(next(iter(columns.values()))), **columns}).to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises((InputError, SchemaError)) as info:
            load_labels(str(tmp_path / "bad.csv"), DECALS)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    # pandas' ids after a merge with a missing value: whole-number floats
    plain.assign(object_id=plain.object_id.astype(float)).to_parquet(tmp_path / "floats.parquet")
    assert load_labels(str(tmp_path / "floats.parquet"), DECALS).object_id.tolist() == expected.object_id.tolist()
    plain.assign(object_id=plain.object_id.astype(str)).to_parquet(tmp_path / "digits.parquet")  # integers kept as text
    assert load_labels(str(tmp_path / "digits.parquet"), DECALS).object_id.tolist() == expected.object_id.tolist()
    # Zoobot's spelling of a campaign that asked this tree (DR5, DR8), and gzipped CSV as catalogues are published
    gz_questions = [q.replace("_", "-") for q in questions]
    zoobot = export.rename(columns=lambda c: next((f"{q}-dr5{c[len(q):]}" for q in gz_questions if c.startswith(f"{q}_")), c))
    assert "smooth-or-featured-dr5_featured-or-disk" in zoobot
    zoobot.to_csv(tmp_path / "zoobot.csv.gz", index=False, compression="gzip")
    assert np.array_equal(load_labels(str(tmp_path / "zoobot.csv.gz"), DECALS).votes, expected.votes)
    (tmp_path / "cut.csv.gz").write_bytes((tmp_path / "zoobot.csv.gz").read_bytes()[:-20])
    with pytest.raises(InputError, match=r"cut.csv.gz' is not a readable Parquet, CSV, FITS or VOTable table"):
        load_labels(str(tmp_path / "cut.csv.gz"), DECALS)
    # one galaxy in DR5's columns, others in DR8's, as Zoobot writes them: read; a galaxy in both is two
    # campaigns' votes, which answer by answer would be neither's
    dr8 = export.rename(columns=lambda c: next((f"{q}-dr8{c[len(q):]}" for q in gz_questions if c.startswith(f"{q}_")), c))
    campaigns = pd.concat([zoobot.iloc[:2], dr8.iloc[2:]], ignore_index=True)
    campaigns.to_parquet(tmp_path / "campaigns.parquet")
    assert np.array_equal(load_labels(str(tmp_path / "campaigns.parquet"), DECALS).votes, expected.votes)
    campaigns.loc[0, [c for c in dr8 if c.startswith("bar_") or c.startswith("smooth-or-featured-dr8_")]] = dr8.iloc[1]
    campaigns.to_parquet(tmp_path / "campaigns.parquet")
    with pytest.raises(InputError, match=r"object_id 100 has votes for question 'smooth_or_featured' in columns "
                                         r"'smooth-or-featured-dr5'_... and 'smooth-or-featured-dr8'_... \(0 more like it\): "
                                         r"two tables' or campaigns' votes for one galaxy"):
        load_labels(str(tmp_path / "campaigns.parquet"), DECALS)


def test_galaxy_zoo_2s_own_table_reads_as_gz2_votes(tmp_path):
    """GZ2's table (Willett et al. 2013; Hart et al. 2016) numbers its tasks and answers
    (t04_spiral_a08_spiral_count) and gives six columns per answer; it had no vote column of any tree."""
    from skymorph.gz_tables import GZ2_TABLE
    from skymorph.schema import DECALS

    rng = np.random.default_rng(1)
    counts = {answer: rng.integers(0, 30, 5) for answer in GZ2_TABLE.values()}
    pd.DataFrame({"object_id": np.arange(5), **counts}).to_csv(tmp_path / "plain.csv", index=False)
    columns = {"dr7objid": 587722981742084096 + np.arange(5), "object_id": np.arange(5), "ra": 150.0, "dec": 2.0,
               "total_classifications": 44, "total_votes": 150}
    for task_answer, answer in GZ2_TABLE.items():
        columns[f"{task_answer}_count"] = counts[answer]
        for derived in ("weight", "fraction", "weighted_fraction", "debiased", "flag"):
            columns[f"{task_answer}_{derived}"] = rng.uniform(size=5)
    columns["t08_odd_feature_a19_ring_count"] = 3  # the kind of odd feature: not a question of the tree
    table = pd.DataFrame(columns)
    table.to_csv(tmp_path / "gz2.csv", index=False)
    assert len(table.columns) == 6 + 6 * 30 + 1
    expected = load_labels(str(tmp_path / "plain.csv"), GZ2)
    assert np.array_equal(load_labels(str(tmp_path / "gz2.csv"), GZ2).votes, expected.votes) and expected.votes.sum() > 0
    assert GZ2.answer_columns == tuple(sorted(GZ2_TABLE.values(), key=GZ2.answer_columns.index))  # every answer mapped
    with pytest.raises(SchemaError, match=r"has no vote column of schema 'decals'; they are Galaxy Zoo 2's own table "
                                          r"\(tNN_..._aNN_..._count\): train with --schema gz2"):
        load_labels(str(tmp_path / "gz2.csv"), DECALS)
    # its FITS release, upper-case as IDL writes it
    from astropy.table import Table

    fits_table = table.rename(columns=lambda c: c if c == "object_id" else c.upper()).assign(split="validation")
    Table.from_pandas(fits_table).write(tmp_path / "gz2.fits")
    from_fits = load_labels(str(tmp_path / "gz2.fits"), GZ2)
    assert np.array_equal(from_fits.votes, expected.votes) and from_fits.split.tolist() == ["validation"] * 5  # text, not bytes
    table.drop(columns="object_id").to_csv(tmp_path / "gz2.csv", index=False)  # keyed by SDSS's id only
    with pytest.raises(InputError, match=r"has no object_id column \(columns: dr7objid, ra, .*\); give each galaxy the "
                                         r"integer id its tiles hold it by, as object_id"):
        load_labels(str(tmp_path / "gz2.csv"), GZ2)
    fits_table.rename(columns={"object_id": "OBJECT_ID"}).to_csv(tmp_path / "upper.csv", index=False)  # no hint
    with pytest.raises(InputError, match=r"has no object_id column .* into a table with ra and dec\) Did you mean 'OBJECT_ID'\?$"):
        load_labels(str(tmp_path / "upper.csv"), GZ2)


def test_labels_that_put_a_galaxy_elsewhere_on_the_sky_than_its_image_are_refused(tmp_path, capsys):
    """A volunteer table has no tile and row, only ra and dec: labels of another survey whose object ids
    coincide trained on that survey's images without a word (both surveys number from 0)."""
    tiles, labels = write_ring_survey(str(tmp_path))  # every galaxy at ra, dec = 10, -5
    table = pd.read_parquet(labels).assign(ra=10 + 3 / 3600, dec=-5.0)  # another catalog's centres: 3" off
    at = str(tmp_path / "at.parquet")
    table.to_parquet(at)
    images, located = load_images(read_tiles(tiles), load_labels(at, GZ2), progress=False)
    assert len(images) == len(table) and located.ra_dec[0].tolist() == [10 + 3 / 3600, -5.0]
    table.loc[[4, 9], "ra"] = 10.5
    table.loc[5, "dec"] = None  # no position: not compared
    table.to_parquet(at)
    with pytest.raises(InputError, match=r"put object_id 1004 at ra, dec = 10.500000, -5.000000, 29.9' from the galaxy of that "
                                         r"id in tile '.*t0.zarr' \(1 more like it\): these labels are of another survey's"):
        load_images(read_tiles(tiles), load_labels(at, GZ2), progress=False)
    table.assign(ra=10 / 15).to_parquet(at)  # hours: not another survey
    with pytest.raises(InputError, match=r"give ra, dec in hours, it seems: read as hours, each of the 47 galaxies far from "
                                         r"its image \(first: object_id 1000\) is at it; give them in degrees"):
        load_images(read_tiles(tiles), load_labels(at, GZ2), progress=False)
    table.rename(columns={"ra": "RA", "dec": "DEC"}).to_parquet(at)  # as FITS tables spell them
    with pytest.raises(InputError, match=r"put object_id 1004 at ra, dec = 10.500000"):
        load_images(read_tiles(tiles), load_labels(at, GZ2), progress=False)
    table.assign(ra="0:40:00.0").to_parquet(at)  # sexagesimal text: not compared, as before the check
    assert len(load_images(read_tiles(tiles), load_labels(at, GZ2), progress=False)[0]) == len(table)
    assert "columns ra and dec are not numbers" in capsys.readouterr().err


def test_a_galaxy_also_in_a_tile_without_positions_is_still_checked_against_the_labels(tmp_path):
    """The tile read last, with placeholder positions, overwrote the known position: whether the labels were
    checked depended on the order of the tile list."""
    from skymorph.tiles import write_tile

    urls = [str(tmp_path / f"t{t}.zarr") for t in range(2)]
    for url, placeholder in zip(urls, (False, True)):  # one galaxy, the same pixels, its position known in t0 only
        write_tile(url, np.full((1, 1, 16, 16), 7, np.uint8), np.array([5]), np.array([10.0]), np.array([-5.0]), survey="test",
                   bands=["grey"], pixel_scale_arcsec=1.0, stretch="none", resize="none",
                   extra_attrs={"position_is_placeholder": placeholder})
    at = tmp_path / "at.csv"
    at.write_text("object_id,has_spiral_arms_yes,has_spiral_arms_no,ra,dec\n5,1,0,40.0,-5.0\n")
    for order in (urls, urls[::-1]):
        with pytest.raises(InputError, match="put object_id 5 at ra, dec = 40.000000, -5.000000, 29.88 deg from the galaxy"):
            load_images(order, load_labels(str(at), GZ2), progress=False)


def test_a_batchs_votes_are_added_to_the_labels_where_the_batch_says_each_image_is(tmp_path, capsys):
    """The loop's return leg, a pandas merge in the README until now: votes in a Galaxy Zoo table, the
    batch `catalog pick` wrote, and the labels so far give the next labels."""
    import json

    from skymorph.trainer.votes import add_votes

    tiles, ring_labels = write_ring_survey(str(tmp_path))  # 48 galaxies, ids 1000-1047, rows 0-23 of t0 and t1
    table = pd.read_parquet(ring_labels)
    old = str(tmp_path / "labels-1.parquet")
    table.iloc[:30].to_parquet(old)
    picked = np.arange(30, 48)
    batch = pd.DataFrame({"rank": np.arange(1, 19), "object_id": 1000 + picked, "ra": 10.0, "dec": -5.0,
                          "tile": [str(tmp_path / "tiles" / f"t{i // 24}.zarr") for i in picked], "row": picked % 24,
                          "bald_total": 0.5})
    batch.to_csv(tmp_path / "batch.csv", index=False)
    votes = table.iloc[30:46].drop(columns="split").rename(columns=lambda c: c.replace("has_spiral_arms_", "has-spiral-arms_"))
    votes.assign(ra=10.0 + 1 / 3600, dec=-5.0).to_csv(tmp_path / "votes.csv", index=False)  # a volunteer export, two still out

    out = str(tmp_path / "labels-2.parquet")
    added = add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), out, labels=old, schema="gz2")
    assert (added.added, added.total, added.unvoted) == (16, 46, 2)
    assert added.summary().endswith("2 of the batch's galaxies have no votes yet: give the batch to `catalog pick --exclude` "
                                    "beside the labels until they do")
    merged = load_labels(out, GZ2)
    expected = load_labels(ring_labels, GZ2)
    assert merged.object_id.tolist() == expected.object_id[:46].tolist()
    assert np.array_equal(merged.votes, expected.votes[:46])
    assert merged.split[:30].tolist() == table.split[:30].map({"train": "train", "validation": "validation"}).tolist()
    assert (merged.split[30:] == None).all()  # noqa: E711 -- the new rows take the hash split
    assert merged.tile[30:].tolist() == [f"t{i // 24}" for i in range(30, 46)] and merged.row[30:].tolist() == [i % 24 for i in range(30, 46)]
    images, _ = load_images(read_tiles(tiles), merged, progress=False)  # every image where the batch said
    assert len(images) == 46 and len(pd.read_parquet(out)) == 46  # as the README's loop reads it
    import pyarrow.parquet as pq

    metadata = pq.read_schema(out).metadata
    assert json.loads(metadata[b"skymorph.schema"])["name"] == "gz2"
    (history,) = json.loads(metadata[b"skymorph.votes_added"])
    assert history["galaxies"] == 16 and history["batch"].endswith("batch.csv") and len(history["votes_sha256"]) == 64
    # the command line; the next round reads the tree the labels now record
    argv = ["labels", "ingest", str(tmp_path / "votes.csv"), "--batch", str(tmp_path / "batch.csv"), "--out", str(tmp_path / "again.parquet")]
    assert cli.main([*argv, "--labels", old, "--schema", "gz2"]) == 0
    assert capsys.readouterr().out.startswith(f"added 16 galaxies' votes: 46 labelled galaxies -> {tmp_path / 'again.parquet'}")
    assert cli.main([*argv, "--labels", out, "--overwrite"]) == 2
    assert "object_id 1030 (16 galaxies in all) is labelled in" in capsys.readouterr().err

    for kwargs, message in (
        (dict(labels=old), "give --schema: the tree the votes are of (the labels so far record none)"),
        (dict(labels=str(tmp_path / "gone.parquet")), "gone.parquet' does not exist; check --labels"),
        (dict(labels=out, schema="decals"), "record votes of 'gz2', not of --schema 'decals'"),
        (dict(labels=old, schema="gz2", out=out), "labels-2.parquet' exists; pass --overwrite"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), kwargs.pop("out", str(tmp_path / "x.parquet")), **kwargs)
    # old labels as pandas leaves them (categorical tile, its saved index) with a row for a galaxy that was
    # still with the volunteers: that row gives way to the votes, once
    waiting = pd.concat([table.iloc[:30], table.iloc[[30]].assign(has_spiral_arms_yes=None, has_spiral_arms_no=None)])
    waiting.assign(tile=pd.Categorical([f"t{i // 24}" for i in range(31)]), row=np.arange(31) % 24).set_index(np.arange(31) + 5).to_parquet(old)
    added = add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "w.parquet"), labels=old, schema="gz2")
    merged = load_labels(str(tmp_path / "w.parquet"), GZ2)
    assert added.total == 46 and merged.object_id.tolist() == expected.object_id[:46].tolist()
    assert np.array_equal(merged.votes, expected.votes[:46]) and "__index_level_0__" not in pd.read_parquet(tmp_path / "w.parquet")
    assert len(load_images(read_tiles(tiles), merged, progress=False)[0]) == 46
    with pytest.raises(InputError, match=r"--out '.*w.csv': labels ingest writes Parquet; give a .parquet file"):
        add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "w.csv"), labels=old, schema="gz2")
    batch.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"votes '.*votes.csv' are for object_id 1030 \(1 galaxies in all\), which batch"):
        add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "short.csv"), str(tmp_path / "x.parquet"), labels=old, schema="gz2")
    # votes that say which galaxies validate: the new rows still take the hash split the fine-tuned model validates by
    votes.assign(split=["validation", "round2"] * 8).to_csv(tmp_path / "split.csv", index=False)  # not read: any value
    capsys.readouterr()
    add_votes(str(tmp_path / "split.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "s.parquet"), labels=old, schema="gz2")
    split = load_labels(str(tmp_path / "s.parquet"), GZ2).split
    assert split[30] == table.split[30] and (split[31:] == None).all()  # noqa: E711 -- 1030's row keeps its own
    assert "have a split column, which is not used: new rows take the seed's hash split" in capsys.readouterr().err
    # labels with a galaxy nobody has classified (a cutout ingested without a label): kept as it is, not counted
    table.iloc[:30].assign(tile=[f"t{i // 24}" for i in range(30)], row=np.arange(30) % 24).pipe(
        lambda t: pd.concat([t, t.iloc[[0]].assign(object_id=5000, has_spiral_arms_yes=None, has_spiral_arms_no=None)])
    ).to_parquet(tmp_path / "unlabelled.parquet")
    added = add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "u.parquet"),
                      labels=str(tmp_path / "unlabelled.parquet"), schema="gz2")
    assert (added.added, added.total) == (16, 46) and 5000 in pd.read_parquet(tmp_path / "u.parquet").object_id.tolist()
    batch.assign(ra=12.0).to_csv(tmp_path / "elsewhere.csv", index=False)
    with pytest.raises(InputError, match=r"put object_id 1030 more than 5\" from where batch .* has it"):
        add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "elsewhere.csv"), str(tmp_path / "x.parquet"), labels=old, schema="gz2")


def test_votes_added_to_labels_astropy_wrote_leave_astropys_header_behind(tmp_path):
    """astropy's header in the old labels described their columns only (``split`` as 10 characters), and was
    carried over to labels of more columns (``tile``, ``row``), which it did not name to ``Table.read``."""
    import pyarrow.parquet as pq
    from astropy.table import Table

    from skymorph.trainer.votes import add_votes

    _, ring_labels = write_ring_survey(str(tmp_path))  # 48 galaxies, ids 1000-1047, rows 0-23 of t0 and t1
    table = pd.read_parquet(ring_labels)
    Table.from_pandas(table.iloc[:30]).write(tmp_path / "old.parquet")
    assert pq.read_schema(tmp_path / "old.parquet").metadata[b"table::len::split"] == b"10"
    batch = pd.DataFrame({"object_id": 1000 + np.arange(30, 48), "tile": [str(tmp_path / "tiles" / f"t{i // 24}.zarr") for i in range(30, 48)],
                          "row": np.arange(30, 48) % 24})
    batch.to_csv(tmp_path / "batch.csv", index=False)
    table.iloc[30:46].drop(columns="split").to_csv(tmp_path / "votes.csv", index=False)
    out = tmp_path / "new.parquet"
    add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), str(out), labels=str(tmp_path / "old.parquet"), schema="gz2")
    keys = set(pq.read_schema(out).metadata)
    assert {b"skymorph.schema", b"skymorph.votes_added"} <= keys and b"table_meta_yaml" not in keys
    assert not [key for key in keys if key.startswith(b"table::len::")]
    assert len(load_labels(str(out), GZ2).object_id) == 46


def test_votes_are_added_under_a_tree_of_another_name_with_the_same_questions(tmp_path):
    """labels ingest compared the trees' JSON, names included: a custom tree's file given by another path
    (its default name) refused the next round's votes as another tree's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skymorph.schema import Schema
    from skymorph.trainer.votes import _tree

    labels = str(tmp_path / "labels.parquet")
    pq.write_table(pa.table({"object_id": [1]}).replace_schema_metadata({"skymorph.schema": GZ2.to_json()}), labels)
    assert _tree(Schema("renamed", GZ2.questions), labels, None).name == "renamed"
    with pytest.raises(InputError, match="record votes of 'gz2', not of --schema 'decals'"):
        _tree("decals", labels, None)


def test_votes_for_unclassified_galaxies_fill_their_rows_and_keep_the_rest(tmp_path):
    """An end-to-end loop on GZ2 cutouts, 60% unlabelled: the votes replaced each such row by a new one with an
    empty split, so galaxies of the catalog's validation split were trained on at --finetune, and their file
    and label cells were lost; the second round said 40 of 50 were still out when none was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skymorph.trainer.votes import add_votes

    _, ring_labels = write_ring_survey(str(tmp_path))  # 48 galaxies, ids 1000-1047, rows 0-23 of t0 and t1
    table = pd.read_parquet(ring_labels)
    votes = ["has_spiral_arms_yes", "has_spiral_arms_no"]
    ingested = table.assign(file=[f"{i}.jpg" for i in table.object_id], tile=[f"t{i // 24}" for i in range(48)],
                            row=np.arange(48) % 24, **{v: table[v].astype("Int64").where(table.object_id < 1030) for v in votes})
    ingested.to_parquet(tmp_path / "ingested.parquet")
    batch = ingested.iloc[30:].assign(ra=10.0, dec=-5.0)[["object_id", "tile", "row", "ra", "dec"]]
    batch.to_csv(tmp_path / "batch.csv", index=False)
    for n, (rows, labels, out) in enumerate(((slice(30, 40), "ingested.parquet", "labels-2.parquet"),
                                             (slice(40, 48), "labels-2.parquet", "labels-3.parquet"))):
        table.iloc[rows][["object_id", *votes]].to_csv(tmp_path / f"votes{n}.csv", index=False)
        added = add_votes(str(tmp_path / f"votes{n}.csv"), str(tmp_path / "batch.csv"), str(tmp_path / out),
                          labels=str(tmp_path / labels), schema="gz2")
        assert (added.added, added.total, added.unvoted) == ((10, 40, 8), (8, 48, 0))[n]
    result = pd.read_parquet(tmp_path / "labels-3.parquet")
    assert result.object_id.tolist() == table.object_id.tolist()  # filled in place, in the catalog's order
    assert result.split.tolist() == table.split.tolist() and result.file.tolist() == ingested.file.tolist()
    assert result[votes].astype(int).values.tolist() == table[votes].values.tolist()
    assert np.array_equal(load_labels(str(tmp_path / "labels-3.parquet"), GZ2).votes, load_labels(ring_labels, GZ2).votes)
    # a first round on a survey nobody has classified: vote columns of empty cells only (Arrow's null type)
    ingested.assign(**{v: None for v in votes}).to_parquet(tmp_path / "none.parquet")
    assert pq.read_schema(tmp_path / "none.parquet").field(votes[0]).type == pa.null()
    added = add_votes(str(tmp_path / "votes0.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "first.parquet"),
                      labels=str(tmp_path / "none.parquet"), schema="gz2")
    assert (added.added, added.total, added.unvoted) == (10, 10, 8)
    first = pd.read_parquet(tmp_path / "first.parquet")
    assert first.object_id.tolist() == table.object_id.tolist() and first.split.tolist() == table.split.tolist()
    assert load_labels(str(tmp_path / "first.parquet"), GZ2).object_id.tolist() == list(range(1030, 1040))


def test_labels_with_repeated_columns_no_rows_or_no_votes_are_one_line_errors(tmp_path):
    path = tmp_path / "labels.csv"
    for text, message in (
        ("object_id,bar_yes,bar_no,bar_yes\n1,2,3,4\n", "has more than one column named 'bar_yes'; keep one of each"),
        ("object_id,bar_yes,bar_no\n", "has no rows, only a header"),
        ("object_id,bar_yes,bar_no\n1,0,0\n2,,\n", "hold no votes at all"),
    ):
        path.write_text(text)
        with pytest.raises(InputError) as info:
            load_labels(str(path), GZ2)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_diverged_run_is_an_error_that_names_the_learning_rate_and_writes_nothing(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    with pytest.raises(InputError, match=r"training diverged: the training loss became nan in epoch 1 .* nothing was written to .*m\.ckpt.*lower --lr than 1e\+30"):
        train(_config(tmp_path, tiles, labels, lr=1e30, warmup_epochs=0))
    assert not (tmp_path / "m.ckpt").exists() and not (tmp_path / "m.last.ckpt").exists()
    argv = ["train", "--tiles", tiles, "--labels", labels, "--schema", "gz2", "--epochs", "1", "--threads", "1",
            "--lr", "1e30", "--out", str(tmp_path / "e.ckpt")]
    _expect_one_line_error(argv, "lower --lr than 1e+30")
    assert not (tmp_path / "e.ckpt").exists()


def test_resume_needs_the_last_checkpoint_of_an_unfinished_schedule(tmp_path):
    tiles, labels = write_ring_survey(str(tmp_path))
    done = train(_config(tmp_path, tiles, labels, out=str(tmp_path / "ck" / "model.pt")))
    other = str(tmp_path / "f.pt")
    with pytest.raises(InputError) as info:
        train(_config(tmp_path, tiles, labels, epochs=None, batch_size=None, resume=done.last_checkpoint, out=done.checkpoint))
    message = str(info.value)
    assert "all 1 epoch(s) of its schedule are done" in message and f"--finetune {done.checkpoint}" in message, message
    # Into another --out, a resumed run reported a best checkpoint there that it never wrote.
    with pytest.raises(InputError, match=re.escape(f"--resume {done.last_checkpoint!r} continues the run whose --out is "
                                                   f"{done.checkpoint!r}; give that --out (not {other!r})")):
        train(_config(tmp_path, tiles, labels, epochs=None, batch_size=None, resume=done.last_checkpoint, out=other))
    with pytest.raises(ModelError) as info:
        train(_config(tmp_path, tiles, labels, epochs=None, batch_size=None, resume=done.checkpoint, out=other))
    message = str(info.value)
    assert f"--resume {done.checkpoint!r} is a best-epoch checkpoint" in message, message
    assert f"the .last checkpoint of the run (the one beside it is {done.last_checkpoint!r})" in message, message
    assert not (tmp_path / "f.pt").exists()


def test_ctrl_c_during_training_says_how_to_resume(tmp_path):
    """An interrupted train said only "skymorph: interrupted", though its last finished epoch is saved."""
    import signal
    import subprocess
    import sys
    import time

    tiles, labels = write_ring_survey(str(tmp_path))
    out = tmp_path / "model.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "skymorph", "train", "--tiles", tiles, "--labels", labels, "--out", str(out),
                                "--epochs", "400", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "model.last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    lines = err.splitlines()  # a progress line may come between them
    assert (f"skymorph: the last finished epoch is saved: continue with `skymorph train --resume {last}` and the same --tiles, "
            "--labels and --out") in lines and "skymorph: interrupted" in lines, err[-2000:]
