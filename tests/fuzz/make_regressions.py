#!/usr/bin/env python3
"""Writes issue 13's crash and corruption inputs into the fuzz seed corpus (tests/fuzz/corpus/), as regression cases
the harnesses replay at every CI run. Each checkpoint variant starts from corpus/checkpoint/small.safetensors (the
fuzz_checkpoint harness's model) and changes one thing; where only the metadata changes, or where the data changes
on purpose, the CRC-32C is kept or recomputed so that the check under test is the one that must refuse it.
    python3 tests/fuzz/make_regressions.py            # rewrites the issue13_* files, byte-identical on every run
"""
import io
import json
import pathlib
import struct
import zipfile
import zlib

HERE = pathlib.Path(__file__).resolve().parent / "corpus"


TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def checksum(header: dict, data: bytes) -> str:
    """xtr's tensor_checksum: CRC-32C over every tensor by name order, its name, a NUL, its bytes."""
    crc = 0
    for name in sorted(k for k in header if k != "__metadata__"):
        begin, end = header[name]["data_offsets"]
        crc = crc32c(name.encode() + b"\0", crc)
        crc = crc32c(data[begin:end], crc)
    return f"{crc:08x}"


def split(blob: bytes):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), bytearray(blob[8 + n:])


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data)


def variant(name, edit, recompute_crc=True):
    header, data = split((HERE / "checkpoint" / "small.safetensors").read_bytes())
    edit(header, data)
    if recompute_crc:
        header["__metadata__"]["xtr.crc32c"] = checksum(header, bytes(data))
    (HERE / "checkpoint" / f"issue13_{name}.safetensors").write_bytes(join(header, data))


def put_float(header, data, tensor, index, value):
    begin = header[tensor]["data_offsets"][0]
    struct.pack_into("<f", data, begin + 4 * index, value)


def meta(key, value):
    return lambda header, data: header["__metadata__"].__setitem__(key, value)


def main():
    header, data = split((HERE / "checkpoint" / "small.safetensors").read_bytes())
    assert header["__metadata__"]["xtr.crc32c"] == checksum(header, bytes(data)), "xtr's checksum"
    variant("nan_weight", lambda h, d: put_float(h, d, "token_emb.emb.weight", 3, float("nan")))
    variant("inf_moment", lambda h, d: put_float(h, d, "optimizer.exp_avg_sq.to_logits.weight", 0, float("inf")))
    variant("flipped_byte", lambda h, d: d.__setitem__(len(d) // 2, d[len(d) // 2] ^ 0x10), recompute_crc=False)
    variant("beta1_one", meta("optimizer.beta1", "1"))
    variant("negative_lr", meta("optimizer.lr", "-5"))
    variant("steps_int64_max", meta("optimizer.steps", "9223372036854775807"))
    variant("random_state_sign", meta("xtr.random_state", "+5,0"))
    variant("step_letters", meta("step", "abc"))
    variant("step_negative", meta("data_position", "-1"))
    # decompression bombs: 80 MiB of zeros (the fuzz harness caps output at 64 MiB), gzip and zip
    zeros = bytes(80 << 20)
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    (HERE / "archive" / "issue13_gzip_bomb.gz").write_bytes(gz.compress(zeros) + gz.flush())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        info = zipfile.ZipInfo("enwik8", date_time=(2026, 12, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, zeros)
    (HERE / "archive" / "issue13_zip_bomb.zip").write_bytes(buffer.getvalue())


if __name__ == "__main__":
    main()
