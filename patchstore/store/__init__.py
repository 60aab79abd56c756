"""The shard format: one HDF5 file per volume (``shard``), the folder's ``manifest``, bulk reading
for training (``shardset``), and ``verify``, ``merge``, ``info`` over shard folders. Only this
sub-package knows dataset names, attribute encodings and manifest keys."""
