"""OP-convNet training from device-resident patchstore shards."""
