"""Read scalars back from a TensorBoard event file (tests only), with tensorboardX's protobufs."""

from __future__ import annotations

import struct
from pathlib import Path


def scalars(path: Path, tag: str) -> list[float]:
    from tensorboardX.proto import event_pb2

    values, data = [], Path(path).read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        payload = data[offset + 12: offset + 12 + length]
        offset += 12 + length + 4
        event = event_pb2.Event()
        event.ParseFromString(payload)
        for value in event.summary.value:
            if value.tag == tag:
                values.append(value.simple_value)
    return values
