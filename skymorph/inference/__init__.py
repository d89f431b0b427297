"""skymorph.inference: engines (:func:`load_engine`, :func:`read_model_info`) and the survey job (:func:`run_survey`)."""

from skymorph.inference.engines import Engine, ModelInfo, load_engine, read_model_info
from skymorph.inference.job import RunConfig, RunReport, run_survey

__all__ = ["Engine", "ModelInfo", "load_engine", "read_model_info", "RunConfig", "RunReport", "run_survey"]
