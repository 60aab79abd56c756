"""Exact stride-1 OP-convNet inference over whole CT volumes.

    from infer import DenseOPConvNet, load_model, segment, segmentation_metrics
"""

from infer.dense import DenseOPConvNet, classify_slices, patch_nonzero
from infer.metrics import segmentation_metrics
from infer.postprocess import postprocess
from infer.predict import load_model, segment, vertebra_probability

__all__ = ["DenseOPConvNet", "classify_slices", "load_model", "patch_nonzero", "postprocess", "segment",
           "segmentation_metrics", "vertebra_probability"]
