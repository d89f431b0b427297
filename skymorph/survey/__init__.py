"""skymorph.survey: make tile stores, from a synthetic survey with known truth or from real cutouts."""

from skymorph.survey.ingest import IngestSummary, ingest
from skymorph.survey.synth import Footprint, SynthSummary, synthesize

__all__ = ["synthesize", "SynthSummary", "Footprint", "ingest", "IngestSummary"]
