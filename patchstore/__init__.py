"""patchstore: CT volumes to verifiable 32x32 patch shards for OP-convNet (Qadri et al. 2021).

Public API::

    from patchstore import BuildConfig, ShardReader, read_case, read_manifest
    from patchstore.build import build      # dataset -> shard folder
    from patchstore.verify import verify    # shard folder -> list of problems
    from patchstore.merge import merge      # shard folders -> one
"""

__version__ = "0.1.0"

from patchstore.config import BuildConfig  # noqa: E402
from patchstore.shard import ShardReader, ShardWriter, read_manifest  # noqa: E402
from patchstore.volume import read_case, read_volume, write_mask  # noqa: E402

__all__ = ["BuildConfig", "ShardReader", "ShardWriter", "read_manifest", "read_case", "read_volume",
           "write_mask", "__version__"]
