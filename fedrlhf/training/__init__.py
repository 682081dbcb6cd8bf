"""Local training (plain and DP) and evaluation of reward models."""

from fedrlhf.training.data import EncodedFeedback, encode, encode_cached
from fedrlhf.training.evaluate import EvalResult, evaluate, score_pairs
from fedrlhf.training.local import TrainResult, train

__all__ = [
    "EncodedFeedback",
    "EvalResult",
    "TrainResult",
    "encode",
    "encode_cached",
    "evaluate",
    "score_pairs",
    "train",
]
