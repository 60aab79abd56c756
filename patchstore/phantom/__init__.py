"""Synthetic spine CT phantoms in HU with vertebra masks (``generate``), painted from the tissue
classes and primitives of ``tissue`` by ``anatomy`` (clinical organs: ``organs``), with the
contrast-phase HU of ``contrast``."""

from patchstore.phantom.generate import Phantom, make_phantom, write_dataset

__all__ = ["Phantom", "make_phantom", "write_dataset"]
