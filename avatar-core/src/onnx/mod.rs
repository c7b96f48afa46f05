//! ONNX models run on burn: the protobuf schema ([`proto`]) and an interpreter for inference
//! graphs ([`graph`]), for models whose released weights exist only as ONNX (insightface's face
//! detector and recogniser among them).

pub mod graph;
pub mod proto;

pub use graph::{OnnxGraph, Value};
