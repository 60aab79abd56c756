"""The build's steps on arrays, in the order data flows: preprocess (window, smooth, quantize),
augment (rotation and shift maps), patches (grid, labels), balance (RUS); ``pipeline`` runs one
volume through them all; the hot loops are the numba kernels in ``kernels``."""
