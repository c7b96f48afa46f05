//! The parts of the ONNX protobuf schema (`onnx.proto3`, field numbers as published) that running
//! an inference graph needs, decoded with `prost`; fields we never read are skipped by the decoder.

use prost::Message;

use crate::error::{AvatarError, Result};

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// The main graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets used.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain (empty: the default `ai.onnx`).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Inputs (older IR versions list the initializers here too).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names (empty string: an omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A float.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// An integer.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// A string.
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// A tensor.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// Floats.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// Integers.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// `TensorProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (`TensorProto.DataType`).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Float values (when not in `raw_data`).
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// int32 (and smaller integer, bool, float16 bits) values.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// int64 values.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// Name (initializers).
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian packed values.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// double values.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// 1: stored in an external file.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type (tensors only are read).
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (its `tensor_type` member).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// A tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// Element type.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a fixed size or a symbolic name.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// The size (0 when symbolic).
    #[prost(int64, tag = "1")]
    pub dim_value: i64,
    /// The symbol (`"?"`, `"batch"`, ...).
    #[prost(string, tag = "2")]
    pub dim_param: String,
}

impl ValueInfoProto {
    /// The declared dimensions: `Some(size)` when fixed, `None` when symbolic or unknown.
    pub fn dims(&self) -> Vec<Option<usize>> {
        self.r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| (d.dim_value > 0).then_some(d.dim_value as usize))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `TensorProto.DataType` values we read.
mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
}

/// Whether an ONNX element type is an integer (or bool) type.
pub fn is_integer_type(data_type: i32) -> bool {
    // UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL, UINT32, UINT64.
    matches!(data_type, 2..=7 | 9 | 12 | 13)
}

impl ModelProto {
    /// Decodes an `.onnx` file's bytes.
    pub fn decode_file(bytes: &[u8], label: &str) -> Result<Self> {
        let model = ModelProto::decode(bytes)
            .map_err(|e| AvatarError::Weights(format!("{label}: not an ONNX model: {e}")))?;
        if model.graph.is_none() {
            return Err(AvatarError::Weights(format!(
                "{label}: not an ONNX model: no graph"
            )));
        }
        Ok(model)
    }

    /// The default-domain opset version.
    pub fn opset(&self) -> i64 {
        self.opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version)
    }
}

impl TensorProto {
    /// The shape as `usize`s.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&d| d.max(0) as usize).collect()
    }

    /// Whether the values are integers (or bools).
    pub fn is_integer(&self) -> bool {
        is_integer_type(self.data_type)
    }

    /// The values as `f64` (exact for every type we read), whatever the storage.
    pub fn values(&self) -> Result<Vec<f64>> {
        let bad = |m: String| AvatarError::Weights(format!("ONNX tensor {:?}: {m}", self.name));
        if self.data_location == 1 {
            return Err(bad(
                "stored in an external data file, which is not supported".into(),
            ));
        }
        let count: usize = self.shape().iter().product();
        let raw = &self.raw_data;
        let values: Vec<f64> = if !raw.is_empty() {
            let width = match self.data_type {
                data_type::FLOAT | data_type::INT32 => 4,
                data_type::INT64 | data_type::DOUBLE => 8,
                data_type::FLOAT16 => 2,
                data_type::UINT8 | data_type::INT8 | data_type::BOOL => 1,
                other => return Err(bad(format!("element type {other} is not supported"))),
            };
            if raw.len() != width * count {
                return Err(bad(format!(
                    "{} bytes of data for {count} elements",
                    raw.len()
                )));
            }
            raw.chunks_exact(width)
                .map(|b| match self.data_type {
                    data_type::FLOAT => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    data_type::INT32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    data_type::INT64 => {
                        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
                    }
                    data_type::DOUBLE => {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                    }
                    data_type::FLOAT16 => f64::from(half::f16::from_le_bytes([b[0], b[1]])),
                    data_type::INT8 => f64::from(b[0] as i8),
                    _ => f64::from(b[0]),
                })
                .collect()
        } else {
            match self.data_type {
                data_type::FLOAT => self.float_data.iter().map(|&v| f64::from(v)).collect(),
                data_type::INT64 => self.int64_data.iter().map(|&v| v as f64).collect(),
                data_type::DOUBLE => self.double_data.clone(),
                data_type::FLOAT16 => self
                    .int32_data
                    .iter()
                    .map(|&v| f64::from(half::f16::from_bits(v as u16)))
                    .collect(),
                data_type::INT32 | data_type::UINT8 | data_type::INT8 | data_type::BOOL => {
                    self.int32_data.iter().map(|&v| f64::from(v)).collect()
                }
                other => return Err(bad(format!("element type {other} is not supported"))),
            }
        };
        if values.len() != count {
            return Err(bad(format!(
                "{} values for shape {:?}",
                values.len(),
                self.dims
            )));
        }
        Ok(values)
    }
}
