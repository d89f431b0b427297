"""User errors of the environment end in one line `skymorph: error: ...` and exit 2, before any work:
an unreachable or malformed S3 endpoint, a file that is not Parquet, an output that cannot be written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from skymorph.cli import main
from skymorph.errors import InputError


@pytest.fixture
def down(refused_port) -> str:
    """An S3 endpoint on 127.0.0.1 where nothing listens: every connection is refused at once."""
    return f"http://127.0.0.1:{refused_port}"


def _down_options(down: str) -> str:
    # one attempt per request: botocore's retries would take seconds against a refused connection
    return json.dumps({"endpoint_url": down, "config_kwargs": {"retries": {"total_max_attempts": 1}}})


def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("skymorph: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def dummy_credentials(monkeypatch, down):
    """Credentials that work nowhere, and the refused loopback port as the default endpoint: a request that
    a regression lets through fails at once, and never reaches AWS."""
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": down}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> str:
    from skymorph.testing.catalogs import write_synthetic_catalog

    out = str(tmp_path_factory.mktemp("cli_errors") / "catalog")
    return write_synthetic_catalog(out, 200, per_tile=100, tile_deg=1.0, order=6, workers=1).url


# ---- S3 endpoint ---------------------------------------------------------------------------------


def test_unreachable_endpoint_from_the_environment_is_one_line_in_a_real_process(down, tmp_path):
    """The bug hunt's repro: botocore's EndpointConnectionError is no OSError and was a traceback."""
    env = {**os.environ, "AWS_ENDPOINT_URL": down, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_MAX_ATTEMPTS": "1"}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    result = subprocess.run([sys.executable, "-m", "skymorph.cli", "catalog", "info", "s3://bucket/cat"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"skymorph: error: cannot reach the S3 endpoint {down} ")
    assert "AWS_ENDPOINT_URL" in lines[0] and "endpoint_url" in lines[0]


@pytest.mark.parametrize("argv", [
    ["catalog", "info", "s3://bucket/cat"],
    ["catalog", "query", "s3://bucket/cat", "--limit", "3"],
    ["catalog", "pick", "s3://bucket/cat", "--n", "3", "--out", "{tmp}/p.csv"],
    ["evaluate", "s3://bucket/model.pt", "--tiles", "s3://bucket/tiles.txt", "--labels", "s3://bucket/l.parquet",
     "--out", "{tmp}/ev"],
], ids=["info", "query", "pick", "evaluate"])
def test_unreachable_endpoint_is_one_line_naming_it(argv, dummy_credentials, down, refused_port, count_connects, tmp_path,
                                                    capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with count_connects("127.0.0.1", refused_port) as connects:
        code = main([*argv, "--storage-options", _down_options(down)])
    line = _one_line_error(capsys, code)
    assert connects.count == 1  # the first refused connection ends the command: no retry, no second request
    assert f"cannot reach the S3 endpoint {down} " in line
    assert "--storage-options endpoint_url" in line
    assert not os.listdir(tmp_path)  # nothing was written


def test_run_against_a_down_endpoint_stops_at_its_first_refused_connection(dummy_credentials, down, refused_port,
                                                                           count_connects, tmp_path, capsys):
    """The driver read its inputs with 10 attempts and backoff: 65-80 s to say that the endpoint is down."""
    with count_connects("127.0.0.1", refused_port) as connects:
        code = main(["run", "--tiles", "s3://bucket/tiles.txt", "--model", "s3://bucket/m.onnx", "--out", str(tmp_path / "cat"),
                     "--storage-options", json.dumps({"endpoint_url": down})])
    line = _one_line_error(capsys, code)
    assert connects.count == 1
    assert line.startswith(f"skymorph: error: --tiles 's3://bucket/tiles.txt': cannot reach the S3 endpoint {down} ")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("options, source", [
    ({"endpoint_url": "not a url"}, "--storage-options endpoint_url"),
    ({"endpoint_url": "127.0.0.1:9000"}, "--storage-options endpoint_url"),
    ({"endpoint_url": "http://127.0.0.1:port"}, "--storage-options endpoint_url"),
    ({"endpoint_url": 9000}, "--storage-options endpoint_url"),
    ({"client_kwargs": {"endpoint_url": "ftp://127.0.0.1"}}, "--storage-options client_kwargs.endpoint_url"),
])
def test_malformed_endpoint_in_storage_options(options, source, dummy_credentials, capsys):
    line = _one_line_error(capsys, main(["catalog", "info", "s3://bucket/cat", "--storage-options", json.dumps(options)]))
    assert f"{source} must be an http:// or https:// URL with a host" in line
    assert "got " in line


@pytest.mark.parametrize("options, name", [
    ({"endpont_url": "{down}"}, "'endpont_url'"),
    ({"client_kwargs": {"endpont_url": "{down}"}}, "'client_kwargs.endpont_url'"),
])
@pytest.mark.parametrize("argv", [["catalog", "info", "s3://bucket/cat"],
                                  ["run", "--tiles", "s3://bucket/tiles.txt", "--model", "s3://bucket/m.onnx", "--out", "s3://bucket/cat"]],
                         ids=["info", "run"])
def test_misspelt_storage_option_is_named(options, name, argv, dummy_credentials, down, capsys):
    """It reached botocore at the first request: a TypeError traceback from AioSession."""
    line = _one_line_error(capsys, main([*argv, "--storage-options", json.dumps(options).replace("{down}", down)]))
    assert line == f"skymorph: error: unknown S3 storage option {name} (see s3fs.S3FileSystem). Did you mean 'endpoint_url'?"


def test_malformed_endpoint_in_the_environment(dummy_credentials, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    line = _one_line_error(capsys, main(["catalog", "info", "s3://bucket/cat"]))
    assert "AWS_ENDPOINT_URL must be an http:// or https:// URL with a host" in line and "'not a url'" in line


def test_synth_to_an_unreachable_endpoint_says_so_quickly(dummy_credentials, down, refused_port, count_connects, monkeypatch,
                                                           tmp_path, capsys):
    """It said "bucket does not exist" after 11-19 s of retries (fs.exists hides the connection error).
    No retry settings here: the bucket probe makes one request of its own. Quickly means without retries,
    counted as connection attempts (a bound on seconds would trip on a loaded machine)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", down)
    with count_connects("127.0.0.1", refused_port) as connects:
        code = main(["survey", "synth", "--out", "s3://bucket/x", "--tiles", "1", "--per-tile", "2", "--size", "16",
                     "--workers", "1"])
    line = _one_line_error(capsys, code)
    assert connects.count == 1  # the bucket probe's one request; botocore's and s3fs's retries made 5 and more
    assert f"--out 's3://bucket/x': cannot reach the S3 endpoint {down} " in line
    assert "does not exist" not in line


def test_synth_to_a_missing_bucket_on_a_live_endpoint(s3, capsys):
    line = _one_line_error(capsys, main(["survey", "synth", "--out", "s3://no-such-bucket-cli/x", "--tiles", "1",
                                         "--per-tile", "2", "--size", "16", "--workers", "1"]))
    assert "bucket 'no-such-bucket-cli' does not exist; create it first" in line


@pytest.mark.parametrize("argv", [
    ["export", "{tmp}/model.ckpt", "--out", "s3://no-such-bucket-cli/m.onnx"],
    ["train", "--tiles", "{tmp}/tiles.txt", "--labels", "{tmp}/l.parquet", "--out", "s3://no-such-bucket-cli/m.ckpt"],
    ["run", "--tiles", "{tiles}", "--model", "{model}", "--out", "s3://no-such-bucket-cli/cat"],
], ids=["export", "train", "run"])
def test_an_output_in_a_missing_bucket_is_named(argv, s3_bucket, tiny_model, tmp_path, capsys):
    """They said only "The specified bucket does not exist", after the work for export and train."""
    from skymorph.tiles import write_tile_list

    write_tile_list(f"{s3_bucket}/tiles.txt", [f"{s3_bucket}/t.zarr"])
    argv = [a.format(tmp=tmp_path, tiles=f"{s3_bucket}/tiles.txt", model=tiny_model) for a in argv]
    line = _one_line_error(capsys, main(argv))
    assert line.endswith("'s3://no-such-bucket-cli/" + argv[-1].rsplit("/", 1)[-1] + "': bucket 'no-such-bucket-cli' does not exist; create it first")


def test_access_denied_by_s3_names_the_object_and_what_to_check(s3, s3_bucket, capsys):
    """It said only "Forbidden": an anonymous read of a bucket that needs credentials. Then it named every S3
    URL of the command; now the object S3 refused."""
    from skymorph.storage import atomic_write_text

    atomic_write_text(f"{s3_bucket}/catalog/hats.properties", "dataset_type=object\n")
    options = json.dumps({"anon": True, "endpoint_url": s3.endpoint_url})  # a URL, but not one of the inputs
    line = _one_line_error(capsys, main(["catalog", "info", f"{s3_bucket}/catalog", "--storage-options", options]))
    assert line.startswith(f"skymorph: error: S3 denied access (Forbidden) to {s3_bucket}/catalog/hats.properties; check the credentials")
    assert 'leave "anon" out of --storage-options' in line


# ---- files that are not Parquet ------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"PAR1 truncated", b"object_id\n1\n2\n"], ids=["empty", "truncated", "csv"])
def test_pick_exclude_that_is_not_parquet(content, small_catalog, tmp_path, capsys):
    exclude = tmp_path / "done.parquet"
    exclude.write_bytes(content)
    out = tmp_path / "batch.csv"
    code = main(["catalog", "pick", small_catalog, "--n", "3", "--exclude", str(exclude), "--out", str(out)])
    line = _one_line_error(capsys, code)
    assert f"--exclude {str(exclude)!r} is not a readable Parquet, CSV, FITS or VOTable table (" in line
    assert not out.exists()


def test_a_table_with_two_columns_of_one_name_is_one_line(small_catalog, tmp_path, capsys):
    """A CasJobs `SELECT g.*, p.ra` repeats a column: `pick --exclude` and `labels match` stopped on pyarrow's
    KeyError, with a traceback."""
    table = tmp_path / "done.csv"
    table.write_text("object_id,ra,dec,ra\n5,150,2,150\n")
    for argv in (["catalog", "pick", small_catalog, "--n", "3", "--exclude", str(table), "--out", str(tmp_path / "b.csv")],
                 ["labels", "match", str(table), "--tiles", str(tmp_path / "tiles.txt"), "--out", str(tmp_path / "m.parquet")]):
        line = _one_line_error(capsys, main(argv))
        assert line.endswith(f"{str(table)!r} has more than one column named 'ra'; keep one of each"), line


def test_a_table_named_as_no_format_says_it_was_read_as_parquet(small_catalog, tmp_path, capsys):
    """A tab-separated done.tsv was "not a readable Parquet ... (Parquet magic bytes not found)": why Parquet?"""
    exclude = tmp_path / "done.tsv"
    exclude.write_text("object_id\tra\n5\t150\n")
    line = _one_line_error(capsys, main(["catalog", "pick", small_catalog, "--n", "3", "--exclude", str(exclude),
                                         "--out", str(tmp_path / "b.csv")]))
    assert line.endswith("; it was read as Parquet, its name ending in none of .csv, .csv.gz, .txt, .fits, .fit, .fts, "
                         ".fits.gz, .fit.gz, .fts.gz, .vot, .xml, .parquet, .pq"), line


def test_a_missing_local_file_is_named_by_its_argument_not_followed_by_the_s3_urls(s3_bucket, tmp_path, capsys, monkeypatch):
    """A local path missing beside S3 arguments (README's own form) was followed by every S3 URL given:
    "'.../nomodel.onnx' does not exist (s3://.../tiles.txt, s3://.../cat)"."""
    from skymorph.tiles import write_tile_list

    monkeypatch.chdir(tmp_path)
    write_tile_list(f"{s3_bucket}/tiles.txt", [f"{s3_bucket}/t.zarr"])
    line = _one_line_error(capsys, main(["run", "--tiles", f"{s3_bucket}/tiles.txt", "--model", "nomodel.onnx",
                                         "--out", f"{s3_bucket}/cat"]))
    assert line == f"skymorph: error: --model {str(tmp_path / 'nomodel.onnx')!r} does not exist", line
    line = _one_line_error(capsys, main(["survey", "ingest", "--catalog", "nocat.csv", "--out", f"{s3_bucket}/ingested"]))
    assert line.startswith("skymorph: error: --catalog 'nocat.csv' does not exist") and "s3://" not in line, line


def test_an_argument_a_command_does_not_take_is_refused_by_that_command(capsys):
    """argparse handed a command's leftovers to `skymorph`, whose error pointed at `skymorph --help`."""
    with pytest.raises(SystemExit) as exit_:
        main(["catalog", "pick", "cat", "--n", "5", "--out", "x.csv", "--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("skymorph catalog pick: error: unrecognized arguments: --bogus "
                                       "(see skymorph catalog pick --help)\n")


def test_a_negative_number_in_exponent_form_is_a_value_not_an_option(small_catalog, capsys):
    """argparse before Python 3.14 read -1e2 as an option: the cone got "expected 3 arguments"."""
    assert main(["catalog", "query", small_catalog, "--cone", "150", "-1e2", "600"]) == 2
    assert capsys.readouterr().err == "skymorph: error: cone Dec must be in [-90, 90] degrees, got -100.0\n"
    assert main(["catalog", "query", small_catalog, "--cone", "150", "-.2e1", "600", "--limit", "1"]) == 0


def test_a_count_beyond_int64_is_refused_by_its_flag(small_catalog, tmp_path, capsys):
    """It reached DuckDB's LIMIT: "Conversion Error: Type INT128 ... can't be cast", naming no flag."""
    for argv in (["pick", small_catalog, "--n", str(10**20), "--out", str(tmp_path / "b.csv")],
                 ["query", small_catalog, "--limit", str(10**20)]):
        with pytest.raises(SystemExit) as exit_:
            main(["catalog", *argv])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"skymorph catalog {argv[0]}: error: argument {argv[2]}: expected a positive integer below 2**63, got "
            f"100000000000000000000 (see skymorph catalog {argv[0]} --help)"]
    with pytest.raises(SystemExit) as exit_:
        main(["catalog", "query", small_catalog, "--limit", "0"])
    assert exit_.value.code == 2 and capsys.readouterr().err == ("skymorph catalog query: error: argument --limit: expected a positive integer, got 0 "
                                       "(see skymorph catalog query --help)\n")


@pytest.mark.parametrize("argv", [
    ["catalog", "pick", "cat", "--n", "5", "--out", "b.csv", "--images", ""],
    ["catalog", "pick", "cat", "--n", "5", "--out", "b.csv", "--gallery", " "],
    ["catalog", "query", "cat", "--out", ""],
    ["run", "--tiles", "t.txt", "--model", "m.onnx", "--out", ""],
    ["evaluate", "m.ckpt", "--tiles", "t.txt", "--labels", "l.parquet", "--out", "eval", "--truth", ""],
    ["train", "--tiles", "t.txt", "--labels", "l.csv", "--out", "m.ckpt", "--schema", ""],
    ["run", "--tiles", "t.txt", "--model", "m.onnx", "--out", "cat", "--scheduler", ""],
    ["labels", "ingest", "v.csv", "--batch", "b.csv", "--out", "l.parquet", "--schema", " "],
], ids=["pick-images", "pick-gallery", "query-out", "run-out", "evaluate-truth", "train-schema", "run-scheduler",
        "labels-schema"])
def test_an_empty_value_is_refused_by_its_flag(argv, capsys):
    """An unset shell variable: `--images ""` wrote no images, `query --out ""` printed to the terminal,
    `train --schema ""` trained a decals model whatever the labels record and `run --scheduler ""` started a
    local cluster, all without a word, as if the flag had not been given."""
    flag = argv[-2]
    command = " ".join(["skymorph", *argv[:2 if argv[0] in ("catalog", "labels") else 1]])
    what = "a value" if flag in ("--schema", "--scheduler") else "a path or URL"
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{command}: error: argument {flag}: give {what}, not an empty string (see {command} --help)"]


@pytest.mark.parametrize(("argv", "flag", "what"), [
    (["train", "--tiles", "t.txt", "--labels", "l.parquet", "--out", "m.ckpt"], "--threads", "torch threads"),
    (["evaluate", "m.ckpt", "--tiles", "t.txt", "--labels", "l.parquet", "--out", "eval"], "--threads", "torch threads"),
    (["survey", "synth", "--out", "survey", "--tiles", "2"], "--workers", "tile-making processes"),
], ids=["train", "evaluate", "synth"])
def test_a_million_threads_or_processes_are_refused_before_any_work(argv, flag, what, tmp_path, monkeypatch, capsys):
    """A million torch threads crashed train and evaluate (a segfault, nothing on stderr); as many synth
    processes would fill the machine."""
    from skymorph.cores import usable_cores

    monkeypatch.chdir(tmp_path)
    cores = usable_cores()
    most = max(64, 4 * cores) if flag == "--threads" else 4 * cores  # not the cores: 8 threads reproduce an 8-thread run
    assert main([*argv, flag, "1000000"]) == 2
    assert capsys.readouterr().err.strip() == (f"skymorph: error: {flag.strip('-')} ({flag}) must be at most {most}, got "
                                               f"1000000: this process may use {cores} cores, and many more {what} only contend")
    assert os.listdir(tmp_path) == []


def test_a_million_ingest_threads_are_refused(tmp_path, capsys):
    (tmp_path / "cutouts.csv").write_text("file,object_id\na.png,1\n")
    assert main(["survey", "ingest", "--catalog", str(tmp_path / "cutouts.csv"), "--out", str(tmp_path / "s"), "--workers", "1000000"]) == 2
    assert capsys.readouterr().err.strip() == ("skymorph: error: workers (--workers) must be at most 256, got 1000000: more "
                                               "decoding threads only contend")


# ---- outputs that cannot be written: refused before the work --------------------------------------


@pytest.fixture
def places(tmp_path):
    """Unwritable outputs: under a regular file, inside /proc (cannot create files, even as root)."""
    (tmp_path / "regular").write_text("x")
    (tmp_path / "adir").mkdir()
    return {"file": str(tmp_path / "regular"), "dir": str(tmp_path / "adir"), "tmp": str(tmp_path)}


# {out} is replaced by the unwritable output; the inputs do not exist, so a check made after
# reading them would report them instead
OUTPUT_COMMANDS = {
    "train": ["train", "--tiles", "{tmp}/nope.txt", "--labels", "{tmp}/nope.parquet", "--out", "{out}"],
    "export": ["export", "{tmp}/nope.pt", "--out", "{out}"],
    "export-onnx-out": ["export", "{tmp}/nope.pt", "--out", "{tmp}/m.plan", "--format", "tensorrt", "--onnx-out", "{out}"],
    "ingest": ["survey", "ingest", "--catalog", "{tmp}/nope.csv", "--out", "{out}"],
    "evaluate": ["evaluate", "{tmp}/nope.pt", "--tiles", "{tmp}/nope.txt", "--labels", "{tmp}/nope.csv", "--out", "{out}"],
    "query": ["catalog", "query", "{tmp}/nope", "--out", "{out}"],
    "pick": ["catalog", "pick", "{tmp}/nope", "--n", "3", "--out", "{out}"],
    "pick-gallery": ["catalog", "pick", "{tmp}/nope", "--n", "3", "--out", "{tmp}/b.csv", "--gallery", "{out}"],
}
FLAG = {"export-onnx-out": "--onnx-out", "pick-gallery": "--gallery"}
SUFFIX = {"train": ".pt", "export": ".onnx", "export-onnx-out": ".onnx", "query": ".parquet", "pick": ".csv",
          "pick-gallery": ".png"}
DIRECTORY_OUTPUT = {"ingest", "evaluate"}


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
@pytest.mark.parametrize("where", ["under-a-file", "proc", "too-long"])
def test_unwritable_output_is_refused_before_the_work(command, where, places, capsys):
    """Too long a name was refused only when written, in an error naming the hidden temporary file."""
    name = ("x" * 300 if where == "too-long" else "sub") + SUFFIX.get(command, "")
    out = {"under-a-file": os.path.join(places["file"], name), "proc": f"/proc/{name}", "too-long": os.path.join(places["tmp"], name)}[where]
    argv = [a.replace("{out}", out).replace("{tmp}", places["tmp"]) for a in OUTPUT_COMMANDS[command]]
    line = _one_line_error(capsys, main(argv))
    assert line.startswith(f"skymorph: error: cannot write to {FLAG.get(command, '--out')} {out!r}: ")
    if where == "under-a-file":
        assert f"{places['file']!r} is a file, not a directory" in line
    elif where == "proc":
        assert "cannot create files in '/proc'" in line
    else:
        assert line.endswith(f"is {len(name)} bytes, more than the 255 this file system allows; give a shorter name")
    assert "nope" not in line and ".tmp" not in line


def test_train_refuses_an_out_whose_metrics_file_name_would_be_too_long(tmp_path, capsys):
    """A 250-byte --out trained an epoch, then failed writing <out>.metrics.json, naming a temporary file."""
    out = str(tmp_path / ("x" * 245 + ".ckpt"))
    line = _one_line_error(capsys, main(["train", "--tiles", str(tmp_path / "nope.txt"), "--labels", str(tmp_path / "nope.csv"), "--out", out]))
    assert line.startswith(f"skymorph: error: cannot write to --out {out + '.metrics.json'!r}: its name ")
    assert line.endswith("is 263 bytes, more than the 255 this file system allows; give a shorter name")


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_output_of_the_wrong_kind_is_refused(command, places, capsys):
    """A file output that is a directory, a directory output that is a file."""
    out = places["file"] if command in DIRECTORY_OUTPUT else places["dir"]
    argv = [a.replace("{out}", out).replace("{tmp}", places["tmp"]) for a in OUTPUT_COMMANDS[command]]
    if command not in DIRECTORY_OUTPUT:  # the format check, by suffix, comes first
        argv = [a + SUFFIX.get(command, "") if a == out else a for a in argv]
        os.rename(out, out + SUFFIX.get(command, ""))
        out += SUFFIX.get(command, "")
    line = _one_line_error(capsys, main(argv))
    expected = "it is a file, not a directory" if command in DIRECTORY_OUTPUT else "it is a directory; give a file path"
    assert f"cannot write to {FLAG.get(command, '--out')} {out!r}: {expected}" in line


# an existing file of each output, which only --overwrite replaces (ingest's rule is its own: test_ingest)
EXISTING_FILE = {"train": "{out}.metrics.json", "evaluate": "{out}/metrics.json"}


@pytest.mark.parametrize("command", [c for c in OUTPUT_COMMANDS if c != "ingest"])
def test_an_existing_output_is_replaced_only_with_overwrite(command, places, capsys):
    """export, train, evaluate, query and pick replaced what was there without a word: a trained model,
    the model a catalog was made with, a labels table given as --out by mistake."""
    out = os.path.join(places["tmp"], "out" + SUFFIX.get(command, ""))
    existing = EXISTING_FILE.get(command, "{out}").replace("{out}", out)
    os.makedirs(os.path.dirname(existing), exist_ok=True)
    with open(existing, "w") as f:
        f.write("precious")
    argv = [a.replace("{out}", out).replace("{tmp}", places["tmp"]) for a in OUTPUT_COMMANDS[command]]
    if command == "pick-gallery":  # the manifest is new; the gallery exists
        argv = [a.replace(f"{places['tmp']}/b.csv", f"{places['tmp']}/new.csv") for a in argv]
    line = _one_line_error(capsys, main(argv))
    assert line == f"skymorph: error: {FLAG.get(command, '--out')} {existing!r} exists; pass --overwrite to replace it, or choose another path"
    line = _one_line_error(capsys, main([*argv, "--overwrite"]))  # then a missing input (or TensorRT) stops it
    assert ("nope" in line or "TensorRT is not installed" in line) and "exists" not in line
    with open(existing) as f:
        assert f.read() == "precious"


def test_train_resume_continues_its_own_out(tmp_path, capsys):
    """--resume writes over its run's files by design: no --overwrite needed, nor accepted as a reason."""
    out = str(tmp_path / "m.ckpt")
    for name in ("m.ckpt", "m.last.ckpt", "m.ckpt.metrics.json"):
        (tmp_path / name).write_text("x")
    line = _one_line_error(capsys, main(["train", "--tiles", f"{tmp_path}/nope.txt", "--labels", f"{tmp_path}/nope.parquet",
                                         "--out", out, "--resume", str(tmp_path / "m.last.ckpt")]))
    assert "exists" not in line


def test_a_reader_that_leaves_early_stops_the_output_quietly(small_catalog):
    """`skymorph catalog info CAT | head -1` said "skymorph: error: [Errno 32] Broken pipe"."""
    proc = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "catalog", "info", small_catalog],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the first line: every write fails
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.decode()) == (141, "")


def test_a_directory_given_as_an_input_file_names_its_argument(tmp_path, capsys, monkeypatch):
    """It said "[Errno 21] Is a directory: '/abs/path/d.onnx'", naming no argument."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.onnx").mkdir()
    (tmp_path / "t.txt").write_text(f"{tmp_path}/t.zarr\n")
    line = _one_line_error(capsys, main(["run", "--tiles", "t.txt", "--model", "d.onnx", "--out", "c"]))
    assert line == "skymorph: error: --model 'd.onnx' is a directory; give a file"
    line = _one_line_error(capsys, main(["export", "d.onnx", "--out", "m.onnx"]))
    assert line == "skymorph: error: checkpoint 'd.onnx' is a directory; give a file"
    # named as the subcommand it shares its name with: "--command 'train' is a directory"
    (tmp_path / "train").mkdir()
    line = _one_line_error(capsys, main(["train", "--tiles", "t.txt", "--labels", "train", "--out", "m.ckpt"]))
    assert line == "skymorph: error: --labels 'train' is a directory; give a file"


@pytest.mark.parametrize(("filename", "where"), [(None, ""), ("/data/catalog/part-1.parquet", " writing '/data/catalog/part-1.parquet'")])
def test_a_full_disk_says_what_to_do(filename, where, monkeypatch, capsys):
    """It said "[Errno 28] No space left on device", naming neither a file nor that a run resumes."""
    import errno

    from skymorph import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(cli, "_cmd_catalog_info", full)
    assert _one_line_error(capsys, main(["catalog", "info", "cat"])) == (
        f"skymorph: error: no space left on the device{where}; free some and run the same command again (`skymorph run` "
        "resumes where it stopped; the others start again)")


def test_a_broken_pipe_that_is_not_stdout_is_reported(monkeypatch, capsys):
    """Only stdout's reader leaving is quiet; stdout stays usable for the caller (a notebook, a script)."""
    from skymorph import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_catalog_info", broken)
    assert _one_line_error(capsys, main(["catalog", "info", "cat"])) == "skymorph: error: [Errno 32] Broken pipe"
    print("still here")
    assert capsys.readouterr().out == "still here\n"


def test_a_bug_exits_3_with_its_traceback_not_1_which_is_a_partial_result(monkeypatch, capsys):
    from skymorph import cli

    def bug(args):
        return 1 // 0

    monkeypatch.setattr(cli, "_cmd_catalog_info", bug)
    assert main(["catalog", "info", "cat"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1] == ("skymorph: internal error (ZeroDivisionError); please report it with the "
                                            "traceback above")


@pytest.mark.parametrize(("raised", "code", "line"), [
    (KeyboardInterrupt(), 130, "demo: interrupted"),
    (InputError("bucket 'x' does not exist"), 2, "demo: error: bucket 'x' does not exist"),
])
def test_the_demo_ends_in_one_line_on_an_interrupt_or_bad_input(raised, code, line, monkeypatch, capsys):
    from skymorph import demo

    def stopped(config):
        raise raised

    monkeypatch.setattr(demo, "run_demo", stopped)
    assert demo.main([]) == code
    assert capsys.readouterr().err.strip() == line


def test_a_missing_s3_input_is_named_by_its_argument(s3_bucket, tmp_path, capsys):
    """It named the URL, then listed every S3 URL given, the missing one included."""
    argv = ["run", "--tiles", f"{s3_bucket}/survey/tiles.txt", "--model", f"{s3_bucket}/nomodel.onnx", "--out", f"{s3_bucket}/cat"]
    from skymorph.storage import atomic_write_text

    atomic_write_text(f"{s3_bucket}/survey/tiles.txt", "t.zarr\n")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"skymorph: error: --model '{s3_bucket}/nomodel.onnx' does not exist"
    # an unknown suffix on S3 is named as such: exists() cannot tell a missing model from an endpoint down
    assert main([*argv[:4], f"{s3_bucket}/nomodel.onx", *argv[5:]]) == 2
    assert "cannot tell the backend of" in capsys.readouterr().err


def test_argument_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--likelihood", "dirichlet", "--tiles", "t", "--labels", "l", "--out", "o"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["skymorph train: error: argument --likelihood: invalid choice: 'dirichlet' (choose from "
                   "'multinomial', 'dirichlet_multinomial') (see skymorph train --help)"]


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_worker_timeout_that_is_no_positive_time_is_refused(value, tmp_path, capsys):
    argv = ["run", "--tiles", str(tmp_path / "tiles.txt"), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "c"),
            "--worker-timeout", value]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"skymorph: error: --worker-timeout must be a positive number of seconds, got {float(value)}")


def test_python_dash_m_skymorph_is_the_command(tmp_path):
    """Where the venv's scripts are not on PATH, `python -m skymorph` runs the same command and exit codes."""
    from skymorph import __version__

    done = subprocess.run([sys.executable, "-m", "skymorph", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and __version__ in done.stdout
    done = subprocess.run([sys.executable, "-m", "skymorph", "catalog", "info", str(tmp_path / "nothing")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and done.stderr.startswith("skymorph: error: ") and len(done.stderr.strip().splitlines()) == 1


def test_an_s3_status_without_a_path_names_the_urls_and_what_to_do():
    """s3fs turns a 503 into OSError(EBUSY, "Service Unavailable"), with no path: the one line said only
    "[Errno 16] Service Unavailable"."""
    import errno

    from botocore.exceptions import ClientError

    from skymorph.cli import _environment_error, build_parser

    def from_s3(code: int, message: str) -> OSError:  # as s3fs raises it: the errno, from botocore's error
        err = OSError(code, message)
        err.__cause__ = ClientError({"Error": {"Code": "x", "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Op")
        return err

    args = build_parser().parse_args(["catalog", "info", "s3://cats/cat1"])
    assert _environment_error(from_s3(errno.EBUSY, "Service Unavailable"), args) == (
        "S3 answered [Errno 16] Service Unavailable to a request for s3://cats/cat1; the endpoint is busy or down for the "
        "moment: run the same command again later")
    assert _environment_error(from_s3(errno.EINVAL, "If-None-Match is not supported."), args) == (
        "S3 answered [Errno 22] If-None-Match is not supported. to a request for s3://cats/cat1")
    # a local disk's error, with S3 among the arguments, is not S3's
    assert _environment_error(OSError(errno.ENOSPC, "No space left on device"), args).startswith("no space left on the device; ")
