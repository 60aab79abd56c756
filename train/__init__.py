"""OP-convNet training from device-resident patchstore shards.

    from train import TrainConfig, train, evaluate_checkpoint
    result = train("shards/", "runs/first", TrainConfig(epochs=30))
    metrics = evaluate_checkpoint("runs/first/best.pt", "test-shards/")

``train.model`` (the network, its Table-1 constants, the device choice) and ``train.checkpoint``
are what inference shares; they import neither the loop, plotting nor torch.distributed.
"""

# Names load on first use (PEP 562): `import train.model` or `train --help` doesn't load the loop.
_API = {
    "CheckpointError": "train.checkpoint", "load_checkpoint": "train.checkpoint", "save_checkpoint": "train.checkpoint",
    "TrainConfig": "train.config", "DataError": "train.data", "PatchSet": "train.data", "load_shards": "train.data",
    "split_patches": "train.data", "evaluate": "train.loop", "evaluate_checkpoint": "train.loop", "train": "train.loop",
    "OPConvNet": "train.model",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_API[name]), name)
