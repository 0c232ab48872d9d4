"""The tensor codec: every conversion between V2 protobuf tensors and numpy lives in this
package. ``datatypes`` is the one datatype table (V2, numpy, ONNX, Triton config, typed
contents fields) and the spec type; ``bytes_format`` Triton's BYTES layout; ``validation`` the
payload checks and the gateway's request check; ``codec`` decoding and encoding. Import from
the package: the split is for readers, not callers.
"""

from modelserve.tensors.bytes_format import (
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)
from modelserve.tensors.codec import (
    decode_inputs,
    decode_outputs,
    encode_inputs,
    encode_inputs_typed,
    encode_outputs,
    from_proto_tensor,
    to_proto_tensor,
    v2_datatype_of,
)
from modelserve.tensors.datatypes import (
    DTYPE_BY_ONNX,
    DTYPES,
    MAX_RANK,
    MAX_TENSOR_ELEMENTS,
    MERGED_REQUESTS_PARAMETER,
    DType,
    TensorSpec,
    datatype_from_onnx,
    shape_from_onnx,
)
from modelserve.tensors.validation import (
    Layout,
    PassedLayouts,
    raw_layout,
    validate_infer_request,
)

__all__ = [
    "DTYPES",
    "DTYPE_BY_ONNX",
    "MAX_RANK",
    "MAX_TENSOR_ELEMENTS",
    "MERGED_REQUESTS_PARAMETER",
    "DType",
    "Layout",
    "PassedLayouts",
    "TensorSpec",
    "datatype_from_onnx",
    "decode_inputs",
    "decode_outputs",
    "deserialize_bytes_tensor",
    "encode_inputs",
    "encode_inputs_typed",
    "encode_outputs",
    "from_proto_tensor",
    "raw_layout",
    "serialize_bytes_tensor",
    "shape_from_onnx",
    "to_proto_tensor",
    "v2_datatype_of",
    "validate_infer_request",
]
