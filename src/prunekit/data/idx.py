"""Read and write IDX files, the format of MNIST and Fashion-MNIST (gzipped or not).

An IDX file is: two zero bytes, a type code, the number of dimensions, each dimension as a
big-endian uint32, then the values in row-major order (big-endian for multi-byte types).
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import torch

from ..io import atomic_write_bytes

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    # Sniff the gzip magic rather than trusting the file name: some mirrors serve
    # decompressed files under .gz names and vice versa.
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as err:  # truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot decompress IDX file ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode the bytes of an IDX file into a tensor of its shape and type.

    uint8 data stays uint8; other types become their native-endian torch equivalent.
    Raises ValueError naming ``source`` on a bad magic number or a wrong length.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        codes = ", ".join(f"0x{c:02x}" for c in _DTYPES)
        raise ValueError(
            f"{source}: not an IDX file (magic number {data[:4].hex() or 'empty'}; expected "
            f"00 00 <type> <ndim> with type one of {codes})"
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: IDX header promises {ndim} dimensions but the file ends")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{source}: IDX header says shape {shape} ({expected} bytes of data) but the file "
            f"has {len(data) - header} bytes after the header"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def read_idx(path: str) -> torch.Tensor:
    """Read the IDX file at ``path`` (gzip detected from its content) into a tensor."""
    return parse_idx(_read_bytes(path), source=str(path))


def write_idx(path: str, array) -> None:
    """Write ``array`` (numpy or torch) as an IDX file; gzipped when ``path`` ends in .gz.

    The file is written to a temporary name and renamed, so a reader never sees half of it.
    """
    array = np.asarray(array.numpy() if isinstance(array, torch.Tensor) else array)
    codes = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {list(codes)}")
    payload = (
        bytes([0, 0, codes[native], array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(_DTYPES[codes[native]]).tobytes()
    )
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    atomic_write_bytes(path, payload)
