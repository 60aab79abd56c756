"""patchstore: CT volumes to verifiable 32x32 patch shards for OP-convNet (Qadri et al. 2021)."""

__version__ = "0.1.0"
