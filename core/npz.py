"""Deterministic ``.npz`` files: the same arrays give the same bytes.

``numpy.savez`` stamps every member with the current time, so two builds of
the same corpus differ byte for byte although their arrays are equal.  This
writer uses a fixed timestamp and a fixed member order; ``numpy.load`` reads
the result like any ``.npz``.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path: str | Path, *, compress: bool = False, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=method) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)
    return path
