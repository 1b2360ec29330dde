"""Strategy state as JSON, in a typed encoding that can only rebuild plain data, never run code.

A storage file may come from someone else, so what it holds must be safe to load: unlike a pickle,
decoding here only ever builds the types below, and checks each one.

- ``None``, ``bool``, ``int``, ``str`` and finite ``float``: themselves; lists: JSON arrays.
- Every other value is a JSON object ``{"$": type, ...}``: non-finite floats, tuples, sets, frozensets,
  dicts (any hashable keys, insertion order kept), deques (with ``maxlen``), numpy arrays and scalars
  and torch tensors of bool / int / uint / float dtypes (raw bytes, base64: exact, compact),
  ``numpy.random.Generator`` (its bit generator's state) and the strategies' dataclasses
  (:class:`~lightning_nas.strategies.base.Observation`, ``Proposal``, ``Failure``).

Anything else raises ``TypeError`` naming where in the state it sits: a strategy holding other
objects overrides ``state_dict`` / ``load_state_dict`` to store plain data instead.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections import deque
from typing import Any

import numpy as np
import torch

from lightning_nas.strategies.base import Failure, Observation, Proposal

__all__ = ["decode_state", "encode_state"]

_DATACLASSES = {cls.__name__: cls for cls in (Observation, Proposal, Failure)}
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float: bytes that decode to numbers only


def encode_state(state: Any) -> str:
    """``state`` as JSON text (see the module docstring for what it may hold)."""
    return json.dumps(_encode(state, "state"), allow_nan=False, separators=(",", ":"))


def decode_state(text: str | bytes) -> Any:
    """The value :func:`encode_state` encoded.

    Raises:
        ValueError: ``text`` is not such an encoding (damaged, or written by something else).
    """
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from None
    return _decode(raw, "state")


def _array(kind: str, array: np.ndarray, where: str) -> dict[str, Any]:
    if array.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot store {where}: an array of dtype {array.dtype} (allowed: bool, int, uint, float)")
    array = np.ascontiguousarray(array)
    return {"$": kind, "dtype": array.dtype.str, "shape": list(array.shape),
            "b64": base64.b64encode(array.tobytes()).decode("ascii")}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)) or type(value) is int:
        return value
    if isinstance(value, np.generic):
        return _array("npscalar", np.asarray(value), where)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$": "float", "v": repr(float(value))}
    if isinstance(value, int):  # an int subclass (an IntEnum would lose its type): store the plain int
        return int(value)
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"$": "tuple", "v": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        return {"$": type(value).__name__, "v": [_encode(v, f"{where} item") for v in value]}
    if isinstance(value, deque):
        return {"$": "deque", "maxlen": value.maxlen, "v": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        return _array("ndarray", value, where)
    if isinstance(value, torch.Tensor):
        if value.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                               torch.float16, torch.float32, torch.float64):
            raise TypeError(f"cannot store {where}: a tensor of dtype {value.dtype}")
        return _array("tensor", value.detach().cpu().numpy(), where)
    if isinstance(value, np.random.Generator):
        return {"$": "generator", "state": _encode(value.bit_generator.state, f"{where}.bit_generator.state")}
    if type(value).__name__ in _DATACLASSES and type(value) is _DATACLASSES[type(value).__name__]:
        fields = {f.name: _encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        return {"$": type(value).__name__, "v": fields}
    raise TypeError(f"cannot store {where}: a {type(value).__qualname__}. A strategy's state may hold only plain "
                    "data (numbers, strings, lists, tuples, sets, dicts, deques, numpy arrays, tensors, numpy "
                    "Generators, Observation/Proposal/Failure); override state_dict() to leave the rest out")


def _decode(raw: Any, where: str) -> Any:
    if raw is None or isinstance(raw, (bool, str, int, float)):
        return raw
    if isinstance(raw, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(raw)]
    if not isinstance(raw, dict) or not isinstance(raw.get("$"), str):
        raise ValueError(f"{where}: a JSON object without a type tag")
    kind = raw["$"]
    try:
        if kind == "float":
            value = float(raw["v"])
            if math.isfinite(value):
                raise ValueError("a tagged float must be nan or ±inf")
            return value
        if kind in ("tuple", "set", "frozenset", "deque"):
            items = _items(raw, where)
            if kind == "tuple":
                return tuple(items)
            if kind == "deque":
                maxlen = raw["maxlen"]
                if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                    raise ValueError(f"bad maxlen {maxlen!r}")
                return deque(items, maxlen=maxlen)
            return set(items) if kind == "set" else frozenset(items)
        if kind == "dict":
            pairs = raw["v"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise ValueError("a dict must be a list of [key, value] pairs")
            return {_decode(k, f"{where} key"): _decode(v, f"{where}[{k!r}]") for k, v in pairs}
        if kind in ("ndarray", "npscalar", "tensor"):
            dtype = np.dtype(str(raw["dtype"]))
            if dtype.kind not in _ARRAY_KINDS:
                raise ValueError(f"dtype {dtype} is not allowed")
            shape = tuple(int(s) for s in raw["shape"])
            array = np.frombuffer(base64.b64decode(raw["b64"], validate=True), dtype=dtype).reshape(shape).copy()
            if kind == "npscalar":
                return array[()]
            return torch.from_numpy(array) if kind == "tensor" else array
        if kind == "generator":
            state = _decode(raw["state"], f"{where}.state")
            name = state.get("bit_generator") if isinstance(state, dict) else None
            if name not in _BIT_GENERATORS:
                raise ValueError(f"unknown bit generator {name!r}; allowed: {list(_BIT_GENERATORS)}")
            bit_generator = getattr(np.random, name)()
            bit_generator.state = state
            return np.random.Generator(bit_generator)
        if kind in _DATACLASSES:
            fields = raw["v"]
            if not isinstance(fields, dict):
                raise ValueError("dataclass fields must be an object")
            return _DATACLASSES[kind](**{str(k): _decode(v, f"{where}.{k}") for k, v in fields.items()})
    except ValueError as err:
        raise ValueError(f"{where}: damaged {kind!r} value ({err})") from None
    except (KeyError, TypeError, AttributeError, OverflowError) as err:
        raise ValueError(f"{where}: damaged {kind!r} value ({type(err).__name__}: {err})") from None
    raise ValueError(f"{where}: unknown type tag {kind!r}")


def _items(raw: dict, where: str) -> list:
    items = raw["v"]
    if not isinstance(items, list):
        raise ValueError("items must be a list")
    return [_decode(v, f"{where}[{i}]") for i, v in enumerate(items)]
