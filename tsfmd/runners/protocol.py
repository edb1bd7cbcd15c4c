"""The wire format between the daemon and a worker process: frames over a pair of pipes.

A frame is a 4-byte big-endian length, a JSON header of that length, then the raw bytes of
the arrays the header lists (`"arrays": [{"dtype": "<f4", "shape": [2, 24]}, ...]`, in
order, C order). Only JSON values and numpy buffers cross: never pickle, so neither side
runs code the other sent. Series, forecasts and errors have one encoding each, here, used
by both sides. This module imports only the stdlib, numpy and tsfmd's plain data classes,
so it runs in a worker environment without tsfmd's own dependencies.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from typing import BinaryIO, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from tsfmd.core.errors import BadInput, ModelFault, Unsupported
from tsfmd.families.base import (
    Capabilities, Forecast, ModelLoadError, SeriesInput, UnsupportedInput,
)

_LENGTH = struct.Struct("!I")
#: a header larger than this is a broken stream, not a message
_MAX_HEADER = 16 * 1024 * 1024


class ProtocolError(RuntimeError):
    """The other side sent something that is not a frame, or the stream ended mid-frame."""


def write_frame(stream: BinaryIO, header: dict, arrays: Sequence[np.ndarray] = ()) -> None:
    """Send `header` and `arrays` as one frame, flushed."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = dict(header, arrays=[{"dtype": a.dtype.str, "shape": list(a.shape)}
                                  for a in arrays])
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    stream.write(_LENGTH.pack(len(text)) + text)
    for array in arrays:
        stream.write(memoryview(array).cast("B"))
    stream.flush()


def read_frame(stream: BinaryIO) -> Optional[Tuple[dict, List[np.ndarray]]]:
    """The next frame's header and arrays; None at a clean end of stream."""
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        return None
    (length,) = _LENGTH.unpack(_exact(stream, prefix, _LENGTH.size))
    if length > _MAX_HEADER:
        raise ProtocolError(f"a frame header of {length} bytes: the stream is out of step")
    header = json.loads(_exact(stream, b"", length).decode("utf-8"))
    arrays = []
    for meta in header.pop("arrays", []):
        dtype, shape = np.dtype(meta["dtype"]), tuple(int(n) for n in meta["shape"])
        if dtype.hasobject:
            raise ProtocolError("object arrays never cross the pipe")
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        data = bytearray(_exact(stream, b"", size))  # writable, owned by this side
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return header, arrays


def _exact(stream: BinaryIO, got: bytes, size: int) -> bytes:
    chunks, have = [got], len(got)
    while have < size:
        chunk = stream.read(size - have)
        if not chunk:
            raise ProtocolError(f"the stream ended inside a frame ({have} of {size} bytes)")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


# -- what crosses: series, forecasts, capabilities, errors ------------------------------

def encode_series(batch: Iterable[SeriesInput], arrays: List[np.ndarray]) -> List[dict]:
    """Each series as a small dict whose arrays are indices into `arrays` (appended to)."""
    def slot(array):
        if array is None:
            return None
        arrays.append(np.asarray(array))
        return len(arrays) - 1

    return [{"values": slot(s.values), "past": slot(s.past_covariates),
             "future": slot(s.future_covariates), "zero": s.zero} for s in batch]


def decode_series(items: Sequence[dict], arrays: Sequence[np.ndarray]) -> List[SeriesInput]:
    def at(index):
        return None if index is None else arrays[index]

    return [SeriesInput(values=at(i["values"]), past_covariates=at(i["past"]),
                        future_covariates=at(i["future"]), zero=i["zero"]) for i in items]


def forecast_arrays(forecast: Forecast) -> Tuple[dict, List[np.ndarray]]:
    arrays = [np.asarray(forecast.point)]
    if forecast.quantiles is not None:
        arrays.append(np.asarray(forecast.quantiles))
    return {"quantiles": forecast.quantiles is not None}, arrays


def forecast_from(header: dict, arrays: Sequence[np.ndarray]) -> Forecast:
    return Forecast(point=arrays[0], quantiles=arrays[1] if header.get("quantiles") else None)


def capabilities_dict(caps: Capabilities) -> dict:
    """Capabilities as plain JSON values, field by field: a field added to Capabilities
    crosses without a change here."""
    return {f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)}


def capabilities_from(values: dict) -> Capabilities:
    """The parent's Capabilities from the worker's dict (lists back to tuples; fields this
    side does not know are left out)."""
    known = {f.name for f in dataclasses.fields(Capabilities)}
    return Capabilities(**{name: tuple(v) if isinstance(v, list) else v
                           for name, v in values.items() if name in known})


def error_header(exc: BaseException) -> dict:
    """A worker-side exception as a typed answer: the request's own fault, a load problem,
    or anything else (the model's fault)."""
    if isinstance(exc, Unsupported):
        kind = "unsupported"
    elif isinstance(exc, BadInput):
        kind = "bad_input"
    elif isinstance(exc, ModelLoadError):
        kind = "load"
    else:
        kind = "fault"
    message = str(exc).strip() or type(exc).__name__
    if kind == "fault":
        message = f"{type(exc).__name__}: {message}"
    return {"ok": False, "kind": kind, "message": message,
            "field": getattr(exc, "field", None)}


def error_from(header: dict, key: str) -> Exception:
    """The parent-side domain error for a worker's typed error answer."""
    message, kind = header.get("message", ""), header.get("kind")
    if kind == "unsupported":
        return UnsupportedInput(message, header.get("field"))
    if kind == "bad_input":
        return BadInput(message, header.get("field"))
    if kind == "load":
        return ModelLoadError(message)
    return ModelFault(f"model {key} failed in its worker: {message}")
