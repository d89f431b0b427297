"""skymorph.inference: engines (:func:`load_engine`) and the survey job (:func:`run_survey`)."""

from skymorph.inference.engines import Engine, load_engine
from skymorph.inference.job import RunConfig, RunReport, run_survey

__all__ = ["Engine", "load_engine", "RunConfig", "RunReport", "run_survey"]
