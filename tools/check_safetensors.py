#!/usr/bin/env python3
"""Interop check between xtr::safetensors and the reference Python `safetensors` package (with numpy).

Both sides build the same reference content (below): one tensor per dtype numpy supports, a scalar, an empty tensor
and string metadata. Run by hand, not by the test suite:

    python3 tools/check_safetensors.py write OUT.safetensors   # Python writes the reference content
    python3 tools/check_safetensors.py check IN.safetensors    # Python loads a file (e.g. written by xtr) and
                                                               # checks it holds exactly the reference content
"""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

METADATA = {"format": "np", "note": "xtr interop \u20ac"}


def reference():
    return {
        "f32": (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3),
        "f64": np.array([1 / 3, -2.5, 1e300], dtype=np.float64),
        "f16": np.array([[1, -2], [65504, 0.5]], dtype=np.float16),
        "i64": np.array([-1, 2**40, 7], dtype=np.int64),
        "i32": np.array([[1, -2], [3, -4]], dtype=np.int32),
        "i16": np.array([-300, 300], dtype=np.int16),
        "i8": np.array([-128, 127, 0], dtype=np.int8),
        "u8": np.array([0, 255, 1], dtype=np.uint8),
        "mask": np.array([True, False, True], dtype=np.bool_),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def check(path):
    want = reference()
    got = load_file(path)
    assert sorted(got) == sorted(want), f"tensor names differ: {sorted(got)} vs {sorted(want)}"
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, f"{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        assert np.array_equal(g, w), f"{name}: values differ: {g} vs {w}"
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == METADATA, f"metadata differs: {f.metadata()} vs {METADATA}"
    print(f"OK: {path} holds the reference content ({len(want)} tensors, metadata {METADATA})")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        save_file(reference(), sys.argv[2], metadata=METADATA)
        print(f"wrote {sys.argv[2]}")
    else:
        check(sys.argv[2])


if __name__ == "__main__":
    main()
