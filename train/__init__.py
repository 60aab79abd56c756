"""OP-convNet training from device-resident patchstore shards.

    from train import TrainConfig, train, evaluate_checkpoint
    result = train("shards/", "runs/first", TrainConfig(epochs=30))
    metrics = evaluate_checkpoint("runs/first/best.pt", "test-shards/")
"""

from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.data import DataError, PatchSet, load_shards, split_patches
from train.loop import evaluate, evaluate_checkpoint, train
from train.model import OPConvNet

__all__ = ["CheckpointError", "DataError", "OPConvNet", "PatchSet", "TrainConfig", "evaluate",
           "evaluate_checkpoint", "load_checkpoint", "load_shards", "save_checkpoint", "split_patches", "train"]
