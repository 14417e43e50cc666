"""Element types of IR values.

The integer codes are ONNX's ``TensorProto.DataType`` codes, so the frontend and the ORT backend
convert with ``DType(code)`` and ``dtype.value`` without the IR importing ``onnx``.
"""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.IntEnum):
    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23

    @property
    def short(self) -> str:
        """Short name used by the printer: f32, i64, u8, ..."""
        return _SHORT.get(self, self.name.lower())

    def to_numpy(self) -> np.dtype:
        """The numpy dtype that holds this element type (int4 widens to int8)."""
        try:
            return np.dtype(_TO_NUMPY[self])
        except KeyError:
            raise TypeError(f"no numpy dtype for {self.name}") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        dt = np.dtype(dtype)
        for k, v in _TO_NUMPY.items():
            if np.dtype(v) == dt and k not in (DType.INT4, DType.UINT4):
                return k
        if dt.name == "bfloat16":
            return DType.BFLOAT16
        raise TypeError(f"numpy dtype {dt} has no IR element type")

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)


_SHORT = {
    DType.FLOAT: "f32",
    DType.DOUBLE: "f64",
    DType.FLOAT16: "f16",
    DType.BFLOAT16: "bf16",
    DType.INT8: "i8",
    DType.UINT8: "u8",
    DType.INT16: "i16",
    DType.UINT16: "u16",
    DType.INT32: "i32",
    DType.UINT32: "u32",
    DType.INT64: "i64",
    DType.UINT64: "u64",
    DType.INT4: "i4",
    DType.UINT4: "u4",
    DType.BOOL: "bool",
    DType.STRING: "str",
    DType.UNDEFINED: "?",
}

_TO_NUMPY = {
    DType.FLOAT: np.float32,
    DType.DOUBLE: np.float64,
    DType.FLOAT16: np.float16,
    DType.INT8: np.int8,
    DType.UINT8: np.uint8,
    DType.INT16: np.int16,
    DType.UINT16: np.uint16,
    DType.INT32: np.int32,
    DType.UINT32: np.uint32,
    DType.INT64: np.int64,
    DType.UINT64: np.uint64,
    DType.BOOL: np.bool_,
    DType.INT4: np.int8,
    DType.UINT4: np.uint8,
    DType.COMPLEX64: np.complex64,
    DType.COMPLEX128: np.complex128,
    DType.STRING: np.object_,
}
