"""Writing golden fixtures reproducibly: shared by tools/xt_fixture.py and tools/xt_fixture_legacy.py.

Python is only a tool here: nothing in the C++ build or tests runs this.
"""
import hashlib
import json
import os
import struct

import safetensors
import safetensors.torch
import torch


def canonical_safetensors(raw):
    """safetensors writes `__metadata__` in hash-map order, which changes from run to run; rewrite the header with
    sorted metadata keys (tensor entries keep their order, data offsets are relative to the data block)."""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    out = {}
    if meta is not None:
        out["__metadata__"] = dict(sorted(meta.items()))
    out.update(header)
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def write_and_reload(path, tensors, meta):
    """Write `tensors` with `meta` canonically to `path`, read it back and check that every tensor (values and dtype)
    and the metadata survived; return (loaded tensors, loaded metadata)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(canonical_safetensors(safetensors.torch.save(tensors, metadata=meta)))
    loaded = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as fh:
        meta_back = fh.metadata()
    assert meta_back == meta and set(loaded) == set(tensors)
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype, k
    return loaded, meta_back


def file_summary(path):
    """'<bytes> bytes, sha256 <first 16 hex>...' of a written file."""
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    return f"{os.path.getsize(path)} bytes, sha256 {digest}..."
