"""patchstore: CT volumes to verifiable 32x32 patch shards for OP-convNet (Qadri et al. 2021).

    patchstore/
      io/        reading and checking CT + masks: volume, geometry, discover, check
      stages/    the build's steps, each a function: preprocess, augment, patches, balance,
                 pipeline (one volume through them all), kernels (numba)
      store/     the shard format: shard (HDF5 writer / reader), manifest, shardset (bulk
                 reading for training), verify, merge, info
      phantom/   synthetic spine CT: generate, anatomy, tissue
      build.py   dataset -> shard folder (orchestrates io, stages and store)
      config.py  BuildConfig; files.py atomic writes and hashes; cli.py the console script

Public API::

    from patchstore import BuildConfig, ShardReader, ShardSet, read_case, read_manifest, verify
    from patchstore.build import build     # dataset -> shard folder
"""

__version__ = "0.1.0"

# Names load on first use (PEP 562), so `patchstore --help` doesn't import numba, h5py or SimpleITK.
_API = {
    "BuildConfig": "patchstore.config", "ShardError": "patchstore.store.shard",
    "ShardReader": "patchstore.store.shard", "ShardSet": "patchstore.store.shardset",
    "ShardWriter": "patchstore.store.shard", "merge": "patchstore.store.merge",
    "read_case": "patchstore.io.volume", "read_manifest": "patchstore.store.manifest",
    "read_volume": "patchstore.io.volume", "verify": "patchstore.store.verify", "write_mask": "patchstore.io.volume",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'patchstore' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_API[name]), name)
