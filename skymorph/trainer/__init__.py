"""skymorph.trainer: train, checkpoint and evaluate Bayesian CNNs on Galaxy Zoo votes.

Heavy imports (torch) happen inside the functions, so importing this package is cheap.
"""

from skymorph.trainer.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from skymorph.trainer.crossmatch import Matched, match_labels
from skymorph.trainer.evaluate import EvaluationReport, evaluate
from skymorph.trainer.loop import TrainConfig, TrainResult, train
from skymorph.trainer.votes import VotesAdded, add_votes

__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "EvaluationReport",
    "load_checkpoint",
    "save_checkpoint",
    "CheckpointMeta",
    "add_votes",
    "VotesAdded",
    "match_labels",
    "Matched",
]
