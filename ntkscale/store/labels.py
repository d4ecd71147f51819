"""String labels in a Gram store: integer codes plus the class names, read back as strings."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Attributes of a y array that holds string labels as integer codes.
LABEL_CLASSES, LABEL_DTYPE = "classes", "label_dtype"


class LabelArray:
    """String labels stored as integer codes (attribute ``classes``), read back as
    the original strings: ``shape``, ``dtype``, ``ndim`` and slicing like an array,
    so fingerprints and ``np.asarray(y[...])`` see the labels that were given."""

    def __init__(self, codes: Any):
        self.codes = codes
        self.attrs = codes.attrs
        self.dtype = np.dtype(codes.attrs.get(LABEL_DTYPE) or "U")
        self.classes = np.asarray(codes.attrs[LABEL_CLASSES], dtype=self.dtype)
        self.shape = tuple(codes.shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.classes[np.asarray(self.codes[key], dtype=np.intp)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)
