#!/usr/bin/env python3
"""Writes the safetensors fuzzer's seed inputs: small valid files of every dtype the reader takes, and the first
bytes of each bundled model (a real header, truncated data)."""
import json
import pathlib
import struct
import sys

root = pathlib.Path(__file__).resolve().parents[2]
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/fuzz/corpus/safetensors"
out.mkdir(parents=True, exist_ok=True)


def file_of(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


seeds = {
    "f32": file_of({"w": ("F32", [2, 3], struct.pack("<6f", *range(6)))}, {"format": "pt"}),
    "f16_bf16": file_of({"a": ("F16", [4], b"\x00\x3c" * 4), "b": ("BF16", [2, 1], b"\x80\x3f" * 2)}),
    "i32": file_of({"ids": ("I32", [3], struct.pack("<3i", 1, -2, 3))}),
    "empty_tensor": file_of({"z": ("F32", [0, 5], b"")}),
    "scalar": file_of({"s": ("F32", [], struct.pack("<f", 1.5))}),
    "no_tensors": file_of({}, {"k": "v"}),
}
# Inputs the reader once mishandled: an element count that wraps (2^62 x 2 bytes), a float dimension, metadata that
# is not an object.
bad = json.dumps({"t": {"dtype": "F16", "shape": [2**62], "data_offsets": [0, 8]}}).encode()
seeds["overflow_shape"] = struct.pack("<Q", len(bad)) + bad + bytes(8)
bad = json.dumps({"t": {"dtype": "F32", "shape": [1e300], "data_offsets": [0, 4]}}).encode()
seeds["float_dim"] = struct.pack("<Q", len(bad)) + bad + bytes(4)
bad = json.dumps({"__metadata__": [1, 2]}).encode()
seeds["metadata_array"] = struct.pack("<Q", len(bad)) + bad
for path in sorted((root / "examples/models").glob("*.safetensors")):
    seeds["head_" + path.stem.replace(".", "_")] = path.read_bytes()[:4096]
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"{len(seeds)} seeds in {out}")
