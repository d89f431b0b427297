"""The ``skymorph`` command line: argument parsing only.

Each subcommand parses its arguments and calls one public function of a package; logic lives there.
Errors a user can fix (:class:`skymorph.errors.SkymorphError`, missing files) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from skymorph.errors import SkymorphError

__all__ = ["main", "build_parser"]


def _storage_options(args) -> dict:
    from skymorph.storage import parse_storage_options

    return parse_storage_options(getattr(args, "storage_options", None))


def _add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        help='s3fs options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
        "(default: AWS environment variables / profile, AWS_ENDPOINT_URL)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- survey ------------------------------------------------------------------------------------


def _add_survey_commands(sub) -> None:
    survey = sub.add_parser("survey", help="make tile stores: a synthetic survey, or ingest real cutouts")
    survey_sub = survey.add_subparsers(dest="survey_command", metavar="{synth,ingest}", required=True)

    synth = survey_sub.add_parser("synth", help="write a synthetic survey with known truth and simulated votes")
    synth.add_argument("--out", required=True, metavar="URL", help="output location (local path or s3://bucket/prefix)")
    synth.add_argument("--tiles", type=_positive_int, default=16, help="number of sky tiles (default 16)")
    synth.add_argument("--per-tile", type=_positive_int, default=512, help="galaxies per tile (default 512)")
    synth.add_argument("--size", type=_positive_int, default=128, help="cutout size in pixels (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes (default 0)")
    synth.add_argument("--schema", default="decals", help="decision tree of the simulated votes: gz2, decals or a JSON file")
    synth.add_argument("--volunteers", type=_positive_int, default=40, help="mean volunteers per galaxy (default 40)")
    synth.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    _add_storage_option(synth)
    synth.set_defaults(func=_cmd_survey_synth)


def _cmd_survey_synth(args) -> int:
    from skymorph.survey import synthesize

    summary = synthesize(
        args.out,
        n_tiles=args.tiles,
        per_tile=args.per_tile,
        size=args.size,
        seed=args.seed,
        schema=args.schema,
        n_volunteers=args.volunteers,
        workers=args.workers,
        storage_options=_storage_options(args),
    )
    print(summary)
    return 0


# ---- train, evaluate (skymorph.trainer) ----------------------------------------------------------


def _add_train_commands(sub) -> None:
    """``skymorph train`` and ``skymorph evaluate``; ``survey ingest`` is added in _add_survey_commands."""


# ---- export (skymorph.exporter) --------------------------------------------------------------------


def _add_export_commands(sub) -> None:
    """``skymorph export``."""


# ---- run (skymorph.inference) ----------------------------------------------------------------------


def _add_run_commands(sub) -> None:
    """``skymorph run``."""


# ---- catalog (skymorph.catalog) --------------------------------------------------------------------


def _add_catalog_commands(sub) -> None:
    """``skymorph catalog info|query|pick``."""


# ---- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from skymorph import __version__

    parser = argparse.ArgumentParser(
        prog="skymorph",
        description="Galaxy morphology posteriors at survey scale (Bayesian CNN, MC dropout, BALD).",
    )
    parser.add_argument("--version", action="version", version=f"skymorph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_survey_commands(sub)
    _add_train_commands(sub)
    _add_export_commands(sub)
    _add_run_commands(sub)
    _add_catalog_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SkymorphError as err:
        print(f"skymorph: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        print(f"skymorph: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skymorph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
