"""Exact stride-1 OP-convNet inference over whole CT volumes.

    from infer import load_model, segment
    model, build = load_model("runs/first/best.pt", torch.device("cpu"))
    prediction = segment(model, build, patchstore.read_volume("ct.nii.gz"))

    infer/  predict (volume -> probability -> mask), dense / dense_layers / patch_engine (the
            engines), postprocess (the paper's, the spine filter, the bone refinement), mine (hard
            examples), cases / batch / report (many CTs, metrics.csv), metrics, overlay, cli

Inference imports ``train.model`` and ``train.checkpoint`` only, never the training loop.
"""

# Names load on first use (PEP 562): `infer --help` answers without importing torch.
_API = {
    "DenseOPConvNet": "infer.dense", "classify_slices": "infer.dense", "patch_nonzero": "infer.dense",
    "segmentation_metrics": "infer.metrics", "postprocess": "infer.postprocess", "load_model": "infer.predict",
    "segment": "infer.predict", "vertebra_probability": "infer.predict",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'infer' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_API[name]), name)
