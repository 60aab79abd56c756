"""patchstore: CT volumes to verifiable 32x32 patch shards for OP-convNet (Qadri et al. 2021).

    patchstore/
      io/        reading and checking CT + masks: volume, geometry, discover, check, integrity
                 (what ITK reads silently wrong: cut-off files, NIfTI pixdim 0 and NaN)
      stages/    the build's steps, each a function: resample (to the build's pixel size),
                 preprocess, augment (views, intensity), patches (grid, label rules), balance,
                 pipeline (one volume through them all), kernels (numba)
      store/     the shard format: shard (HDF5 writer / reader), manifest, shardset (bulk
                 reading for training), verify, merge, info; remote (a shard folder at a URL:
                 the verified download cache, pull) and download (resumed, checked files)
      phantom/   synthetic spine CT: generate, anatomy, organs, contrast (phases), tissue
      build.py   dataset -> shard folder (orchestrates io, stages and store); output.py which
                 files of the folder are its shards; lock.py one writer per folder; workers.py
                 worker processes that end with the build; cluster.py the build on Dask (--dask)
      config.py  BuildConfig; files.py atomic writes, hashes, names confined to their folder;
                 cli.py the console script; cli_errors.py one-line errors, cli_params.py a shard
                 folder or its URL, and console.py (--threads, progress in logs, strict JSON) for
                 all three scripts

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
