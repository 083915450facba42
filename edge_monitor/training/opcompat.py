"""Which TFLite builtin ops (and op versions) a bundle needs, and whether tflite-runtime 2.14 has them.

tflite-runtime 2.14 is the last release of the standalone runtime and the only TFLite runtime for
32-bit Raspberry Pi OS. A newer converter writes newer op versions when a graph needs them (for
example ``SQRT`` with int8 tensors is version 2, which 2.14 lacks), and such a bundle then fails to
load there with ``Didn't find op for builtin opcode 'SQRT' version '2'``. The exporter checks every
bundle against :data:`TFLITE_RUNTIME_2_14` and warns; ``tests/test_tflite_runtime.py`` checks the
table itself against the real runtime with :func:`single_op_model`.

Needs TensorFlow (the flatbuffer schema); imported only by the training code and tests.
"""

from __future__ import annotations

from typing import Optional

TFLITE_RUNTIME_2_14: dict[str, int] = {
    "ABS": 5, "ADD": 5, "ADD_N": 1, "ARG_MAX": 3, "ARG_MIN": 3, "ASSIGN_VARIABLE": 1, "ATAN2": 1,
    "AVERAGE_POOL_2D": 3, "BATCH_MATMUL": 4, "BATCH_TO_SPACE_ND": 4, "BIDIRECTIONAL_SEQUENCE_LSTM": 3,
    "BIDIRECTIONAL_SEQUENCE_RNN": 3, "BITCAST": 1, "BITWISE_XOR": 1, "BROADCAST_ARGS": 1, "BROADCAST_TO": 3,
    "BUCKETIZE": 1, "CALL_ONCE": 1, "CAST": 5, "CEIL": 1, "COMPLEX_ABS": 1, "CONCATENATION": 4, "CONV_2D": 7,
    "CONV_3D": 1, "CONV_3D_TRANSPOSE": 1, "COS": 1, "CUMSUM": 1, "DENSIFY": 1, "DEPTHWISE_CONV_2D": 7,
    "DEPTH_TO_SPACE": 2, "DEQUANTIZE": 5, "DIV": 2, "DYNAMIC_UPDATE_SLICE": 1, "ELU": 1, "EMBEDDING_LOOKUP": 3,
    "EMBEDDING_LOOKUP_SPARSE": 1, "EQUAL": 4, "EXP": 2, "EXPAND_DIMS": 1, "FAKE_QUANT": 2, "FILL": 4,
    "FLOOR": 1, "FLOOR_DIV": 3, "FLOOR_MOD": 2, "FULLY_CONNECTED": 10, "GATHER": 6, "GATHER_ND": 4, "GELU": 2,
    "GREATER": 2, "GREATER_EQUAL": 3, "HARD_SWISH": 1, "HASHTABLE": 1, "HASHTABLE_FIND": 1,
    "HASHTABLE_IMPORT": 1, "HASHTABLE_LOOKUP": 1, "HASHTABLE_SIZE": 1, "IF": 1, "IMAG": 1,
    "L2_NORMALIZATION": 2, "L2_POOL_2D": 1, "LEAKY_RELU": 2, "LESS": 3, "LESS_EQUAL": 2,
    "LOCAL_RESPONSE_NORMALIZATION": 1, "LOG": 1, "LOGICAL_AND": 1, "LOGICAL_NOT": 1, "LOGICAL_OR": 1,
    "LOGISTIC": 3, "LOG_SOFTMAX": 2, "LSH_PROJECTION": 1, "LSTM": 4, "MATRIX_DIAG": 1, "MATRIX_SET_DIAG": 1,
    "MAXIMUM": 4, "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MIRROR_PAD": 3, "MUL": 7, "MULTINOMIAL": 1,
    "NEG": 1, "NON_MAX_SUPPRESSION_V4": 1, "NON_MAX_SUPPRESSION_V5": 1, "NOT_EQUAL": 3, "ONE_HOT": 1,
    "PACK": 4, "PAD": 4, "PADV2": 4, "POW": 1, "PRELU": 1, "QUANTIZE": 3, "RANDOM_STANDARD_NORMAL": 1,
    "RANDOM_UNIFORM": 1, "RANGE": 2, "RANK": 1, "READ_VARIABLE": 1, "REAL": 1, "REDUCE_ALL": 1,
    "REDUCE_ANY": 1, "REDUCE_MAX": 3, "REDUCE_MIN": 3, "REDUCE_PROD": 2, "RELU": 3, "RELU6": 3,
    "RELU_0_TO_1": 1, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 4,
    "REVERSE_SEQUENCE": 1, "REVERSE_V2": 3, "RFFT2D": 1, "RIGHT_SHIFT": 1, "RNN": 3, "ROUND": 1, "RSQRT": 2,
    "SCATTER_ND": 1, "SEGMENT_SUM": 1, "SELECT": 4, "SELECT_V2": 2, "SHAPE": 1, "SIGN": 2, "SIN": 1,
    "SKIP_GRAM": 1, "SLICE": 6, "SOFTMAX": 3, "SPACE_TO_BATCH_ND": 4, "SPACE_TO_DEPTH": 2,
    "SPARSE_TO_DENSE": 3, "SPLIT": 4, "SPLIT_V": 2, "SQRT": 1, "SQUARE": 1, "SQUARED_DIFFERENCE": 2,
    "SQUEEZE": 2, "STRIDED_SLICE": 8, "SUB": 5, "SUM": 2, "SVDF": 4, "TANH": 3, "TILE": 3, "TOPK_V2": 3,
    "TRANSPOSE": 6, "TRANSPOSE_CONV": 4, "UNIDIRECTIONAL_SEQUENCE_LSTM": 4, "UNIDIRECTIONAL_SEQUENCE_RNN": 3,
    "UNIQUE": 1, "UNPACK": 4, "UNSORTED_SEGMENT_MAX": 1, "UNSORTED_SEGMENT_MIN": 1, "UNSORTED_SEGMENT_PROD": 1,
    "UNSORTED_SEGMENT_SUM": 1, "VAR_HANDLE": 1, "WHERE": 2, "WHILE": 1, "ZEROS_LIKE": 1,
}
"""Highest version of each builtin op that tflite-runtime 2.14.0 registers (measured with
:func:`single_op_model` on its x86_64 wheel; ``BROADCAST_TO`` starts at version 2). Ops missing here
(the StableHLO ops, ``DILATE``, ``REDUCE_WINDOW`` ...) don't exist in it at all."""

TFLITE_RUNTIME_2_14_NAME = "tflite-runtime 2.14"
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def _builtin_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def op_versions(tflite: bytes) -> dict[str, int]:
    """The highest version of each builtin op in a ``.tflite`` (custom ops as ``CUSTOM:<name>``)."""
    from tensorflow.lite.tools import flatbuffer_utils

    names = _builtin_names()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    found: dict[str, int] = {}
    for code in model.operatorCodes or []:
        number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = names.get(number, f"BUILTIN_{number}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
        found[name] = max(found.get(name, 0), int(code.version))
    return found


def unsupported_ops(tflite: bytes, table: Optional[dict[str, int]] = None) -> list[str]:
    """Ops of ``tflite`` that ``table`` (default: tflite-runtime 2.14) lacks, e.g. ``["SQRT v2 (has v1)"]``."""
    have = TFLITE_RUNTIME_2_14 if table is None else table
    problems = []
    for name, version in sorted(op_versions(tflite).items()):
        if name not in have:
            problems.append(f"{name} v{version} (not in the runtime)")
        elif version > have[name]:
            problems.append(f"{name} v{version} (has up to v{have[name]})")
    return problems


def single_op_model(name: str, version: int) -> bytes:
    """A one-operator ``.tflite`` using builtin op ``name`` at ``version`` (float tensors, no options).

    Enough for an interpreter to look the op up: constructing one says "Didn't find op" (or "out of
    range" for an op code it doesn't know) when the op or version isn't registered. Not runnable.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    code = getattr(schema.BuiltinOperator, name)
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES)
    opcode.version = version
    tensors = []
    for i in range(2):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, 0, f"t{i}"
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [1], [op]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.buffers, model.subgraphs = 3, [opcode], [schema.BufferT()], [graph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def all_builtin_ops() -> list[str]:
    """Names of every builtin op in this TensorFlow's schema (without CUSTOM, DELEGATE and the placeholder)."""
    skip = {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}
    return sorted(n for n in _builtin_names().values() if n not in skip)
