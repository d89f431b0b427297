"""skymorph: Bayesian CNN galaxy morphology at survey scale."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skymorph")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = ["__version__"]
