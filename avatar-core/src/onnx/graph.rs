//! Runs an ONNX inference graph on burn tensors, node by node.
//!
//! Float tensors of rank 0-4 live on the device (padded to rank 4 with leading ones; the logical
//! shape travels beside them). Shape arithmetic (`Shape`, `Gather`, `Concat`, `Slice`, `Cast`,
//! ... on integer tensors) runs on the host, as exporters with dynamic axes emit it. The operator
//! set is the one convolutional detectors and recognisers use (insightface's SCRFD and ArcFace
//! exports among them); any other operator is a clear error naming the node, never a wrong
//! result.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::module::{avg_pool2d, conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::proto::{AttributeProto, ModelProto, NodeProto, TensorProto, is_integer_type};
use crate::error::{AvatarError, Result};

/// Host values with at most this many elements stay on the host (shape arithmetic).
const HOST_LIMIT: usize = 64;

/// A value flowing through the graph.
// The device variant is a tensor handle (larger than the host one's vectors); values live in one
// map per run, so boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Value {
    /// A float tensor on the device, padded to rank 4; `shape` is its logical shape.
    Device {
        /// The padded tensor.
        tensor: Tensor<4>,
        /// The logical shape (rank 0-4).
        shape: Vec<usize>,
    },
    /// A small tensor on the host (integers, or floats used as shape arithmetic).
    Host {
        /// Row-major values.
        data: Vec<f64>,
        /// The shape.
        shape: Vec<usize>,
        /// Whether the element type is an integer type.
        integer: bool,
    },
}

fn padded(shape: &[usize]) -> Result<[usize; 4]> {
    if shape.len() > 4 {
        return Err(AvatarError::Config(format!(
            "ONNX: tensors of rank {} are not supported (at most 4)",
            shape.len()
        )));
    }
    let mut out = [1; 4];
    out[4 - shape.len()..].copy_from_slice(shape);
    Ok(out)
}

impl Value {
    /// A device value from a logical shape.
    pub fn device(tensor: Tensor<4>, shape: Vec<usize>) -> Self {
        Value::Device { tensor, shape }
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Device { shape, .. } | Value::Host { shape, .. } => shape,
        }
    }

    fn from_proto(tensor: &TensorProto, device: &Device) -> Result<Self> {
        let data = tensor.values()?;
        let shape = tensor.shape();
        let integer = tensor.is_integer();
        if integer || data.len() <= HOST_LIMIT {
            return Ok(Value::Host {
                data,
                shape,
                integer,
            });
        }
        let values: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        Ok(Value::Device {
            tensor: Tensor::from_data(TensorData::new(values, padded(&shape)?), device),
            shape,
        })
    }

    /// The value as a padded device tensor.
    fn on_device(&self, device: &Device) -> Result<(Tensor<4>, Vec<usize>)> {
        match self {
            Value::Device { tensor, shape } => Ok((tensor.clone(), shape.clone())),
            Value::Host { data, shape, .. } => {
                let values: Vec<f32> = data.iter().map(|&v| v as f32).collect();
                Ok((
                    Tensor::from_data(TensorData::new(values, padded(shape)?), device),
                    shape.clone(),
                ))
            }
        }
    }

    /// The values on the host (device tensors are read back).
    pub fn to_host(&self) -> Result<(Vec<f64>, Vec<usize>, bool)> {
        match self {
            Value::Host {
                data,
                shape,
                integer,
            } => Ok((data.clone(), shape.clone(), *integer)),
            Value::Device { tensor, shape } => {
                let values = tensor
                    .clone()
                    .into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| AvatarError::Backend(format!("{e:?}")))?;
                Ok((
                    values.into_iter().map(f64::from).collect(),
                    shape.clone(),
                    false,
                ))
            }
        }
    }

    /// The values as integers (shape arguments).
    fn ints(&self) -> Result<Vec<i64>> {
        Ok(self.to_host()?.0.into_iter().map(|v| v as i64).collect())
    }
}

/// A loaded ONNX graph, ready to run.
#[derive(Debug)]
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    constants: HashMap<String, Value>,
    /// The float constants kept on the host (at most [`HOST_LIMIT`] values: PRelu slopes, tiny
    /// layers' weights, scalars), uploaded once for the operators that use them on the device.
    uploaded: HashMap<String, Value>,
    inputs: Vec<String>,
    input_dims: Vec<Vec<Option<usize>>>,
    outputs: Vec<String>,
    opset: i64,
    /// For every value name, the index of the last node that reads it.
    last_use: HashMap<String, usize>,
    device: Device,
    label: String,
}

impl OnnxGraph {
    /// Reads an `.onnx` file; its initializers go to `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let path = &*crate::hub::resolve(path)?;
        let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), device)
    }

    /// Reads an ONNX model from its bytes; `label` names it in errors.
    pub fn from_bytes(bytes: &[u8], label: &str, device: &Device) -> Result<Self> {
        let model = ModelProto::decode_file(bytes, label)?;
        let opset = model.opset();
        let graph = model.graph.expect("checked by decode_file");
        let mut constants = HashMap::new();
        for tensor in &graph.initializer {
            let value = Value::from_proto(tensor, device)
                .map_err(|e| AvatarError::Weights(format!("{label}: {e}")))?;
            constants.insert(tensor.name.clone(), value);
        }
        let uploaded = constants
            .iter()
            .filter(|(_, value)| matches!(value, Value::Host { integer: false, .. }))
            .map(|(name, value)| {
                let (tensor, shape) = value.on_device(device)?;
                Ok((name.clone(), Value::device(tensor, shape)))
            })
            .collect::<Result<_>>()?;
        let (inputs, input_dims) = graph
            .input
            .iter()
            .filter(|v| !constants.contains_key(&v.name))
            .map(|v| (v.name.clone(), v.dims()))
            .unzip();
        let outputs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
        let mut last_use = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for name in &node.input {
                last_use.insert(name.clone(), i);
            }
        }
        for output in &outputs {
            last_use.insert(output.clone(), usize::MAX);
        }
        let graph = OnnxGraph {
            nodes: graph.node,
            constants,
            uploaded,
            inputs,
            input_dims,
            outputs,
            opset,
            last_use,
            device: device.clone(),
            label: label.to_owned(),
        };
        graph.check_operators()?;
        Ok(graph)
    }

    /// Refuses a graph with an operator we do not implement, before anything runs.
    fn check_operators(&self) -> Result<()> {
        for node in &self.nodes {
            if !SUPPORTED.contains(&node.op_type.as_str())
                || !(node.domain.is_empty() || node.domain == "ai.onnx")
            {
                return Err(AvatarError::Weights(format!(
                    "{}: ONNX operator {}{} (node {:?}) is not supported",
                    self.label,
                    if node.domain.is_empty() {
                        String::new()
                    } else {
                        format!("{}.", node.domain)
                    },
                    node.op_type,
                    node.name
                )));
            }
        }
        Ok(())
    }

    /// The graph's input names (initializers excluded).
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The declared dimensions of each input (`None`: symbolic).
    pub fn input_dims(&self) -> &[Vec<Option<usize>>] {
        &self.input_dims
    }

    /// The graph's output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Node names in order (the first few identify how a model expects its input scaled).
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The device the graph runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the graph on `inputs` (by name, logical shapes) and returns every graph output.
    pub fn run(&self, inputs: Vec<(String, Value)>) -> Result<Vec<Value>> {
        crate::worker_pool::on_worker(&self.device, || self.run_here(inputs))
    }

    fn run_here(&self, inputs: Vec<(String, Value)>) -> Result<Vec<Value>> {
        let mut values: HashMap<String, Value> = inputs.into_iter().collect();
        for name in &self.inputs {
            if !values.contains_key(name) {
                return Err(AvatarError::Config(format!(
                    "{}: input {name:?} was not given",
                    self.label
                )));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let uploaded = takes_device_operands(node, &values);
            let args = node
                .input
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(name)
                        .or_else(|| uploaded.then(|| self.uploaded.get(name)).flatten())
                        .or_else(|| self.constants.get(name))
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| {
                            AvatarError::Config(format!(
                                "{}: node {:?} reads {name:?}, which nothing produced",
                                self.label, node.name
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let results = self.run_node(node, args).map_err(|e| {
                AvatarError::Backend(format!(
                    "{}: {} node {:?}: {e}",
                    self.label, node.op_type, node.name
                ))
            })?;
            for (name, value) in node.output.iter().zip(results) {
                if !name.is_empty() {
                    values.insert(name.clone(), value);
                }
            }
            for name in &node.input {
                if self.last_use.get(name) == Some(&i) {
                    values.remove(name);
                }
            }
        }
        self.outputs
            .iter()
            .map(|name| {
                values
                    .remove(name)
                    .or_else(|| self.constants.get(name).cloned())
                    .ok_or_else(|| {
                        AvatarError::Config(format!(
                            "{}: output {name:?} was not produced",
                            self.label
                        ))
                    })
            })
            .collect()
    }

    fn run_node(&self, node: &NodeProto, args: Vec<Option<Value>>) -> Result<Vec<Value>> {
        let attrs = Attributes(&node.attribute);
        let arg = |i: usize| -> Result<&Value> {
            args.get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| AvatarError::Config(format!("input {i} is missing")))
        };
        let opt = |i: usize| args.get(i).and_then(Option::as_ref);
        let device = &self.device;
        let one = |v: Value| Ok(vec![v]);
        match node.op_type.as_str() {
            "Identity" | "Dropout" => one(arg(0)?.clone()),
            "Constant" => one(constant(&attrs, device)?),
            "Relu" => unary(arg(0)?, device, relu, |v| v.max(0.0)),
            "Sigmoid" => unary(arg(0)?, device, sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            "Tanh" => unary(arg(0)?, device, |t| t.tanh(), f64::tanh),
            "Exp" => unary(arg(0)?, device, |t| t.exp(), f64::exp),
            "Sqrt" => unary(arg(0)?, device, |t| t.sqrt(), f64::sqrt),
            "Neg" => unary(arg(0)?, device, |t| t.neg(), |v| -v),
            "Floor" => unary(arg(0)?, device, |t| t.floor(), f64::floor),
            "Ceil" => unary(arg(0)?, device, |t| t.ceil(), f64::ceil),
            "LeakyRelu" => {
                let alpha = attrs.f("alpha", 0.01);
                unary(
                    arg(0)?,
                    device,
                    move |t| burn::tensor::activation::leaky_relu(t, alpha),
                    move |v| if v < 0.0 { v * alpha } else { v },
                )
            }
            "Clip" => {
                let (lo, hi) = if self.opset >= 11 {
                    let bound = |i: usize| -> Result<Option<f64>> {
                        opt(i).map(|v| Ok(v.to_host()?.0[0])).transpose()
                    };
                    (bound(1)?, bound(2)?)
                } else {
                    (
                        attrs.get("min").map(|a| f64::from(a.f)),
                        attrs.get("max").map(|a| f64::from(a.f)),
                    )
                };
                let (lo, hi) = (lo.unwrap_or(f64::MIN), hi.unwrap_or(f64::MAX));
                unary(
                    arg(0)?,
                    device,
                    move |t| t.clamp(lo.max(f32::MIN as f64), hi.min(f32::MAX as f64)),
                    move |v| v.clamp(lo, hi),
                )
            }
            "Add" => binary(arg(0)?, arg(1)?, device, |a, b| a + b, |a, b, _| a + b),
            "Sub" => binary(arg(0)?, arg(1)?, device, |a, b| a - b, |a, b, _| a - b),
            "Mul" => binary(arg(0)?, arg(1)?, device, |a, b| a * b, |a, b, _| a * b),
            "Div" => binary(
                arg(0)?,
                arg(1)?,
                device,
                |a, b| a / b,
                |a, b, integer| if integer { (a / b).trunc() } else { a / b },
            ),
            "PRelu" => {
                let (x, shape) = arg(0)?.on_device(device)?;
                if broadcast_shape(&shape, arg(1)?.shape())? != shape {
                    return Err(bad(format!(
                        "slope {:?} does not broadcast to {shape:?}",
                        arg(1)?.shape()
                    )));
                }
                let slope = broadcast_to_rank(arg(1)?, shape.len(), device)?;
                let negative = x.clone().clamp_max(0.0) * slope;
                one(Value::device(x.clamp_min(0.0) + negative, shape))
            }
            "Conv" => self.conv(&attrs, arg(0)?, arg(1)?, opt(2)),
            "BatchNormalization" => {
                let (x, shape) = arg(0)?.on_device(device)?;
                let eps = attrs.f("epsilon", 1e-5);
                let channels = *shape.get(1).ok_or_else(|| bad("needs a channel axis"))?;
                let mut param_shape = vec![1; shape.len()];
                param_shape[1] = channels;
                let param = |i: usize| -> Result<Tensor<4>> {
                    Ok(arg(i)?.on_device(device)?.0.reshape(padded(&param_shape)?))
                };
                let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
                let factor = scale / (var + eps).sqrt();
                let out = (x - mean) * factor + bias;
                one(Value::device(out, shape))
            }
            "MaxPool" | "AveragePool" => self.pool(node, &attrs, arg(0)?),
            "GlobalAveragePool" => {
                let (x, shape) = arg(0)?.on_device(device)?;
                check_rank(&shape, 4)?;
                let out = x.mean_dim(3).mean_dim(2);
                one(Value::device(out, vec![shape[0], shape[1], 1, 1]))
            }
            "Resize" | "Upsample" => self.resize(node, &attrs, &args),
            "Concat" => {
                let values: Vec<&Value> = args.iter().flatten().collect();
                one(concat(&values, attrs.i("axis", 0), device)?)
            }
            "Reshape" => {
                let data = arg(0)?;
                let target = arg(1)?.ints()?;
                let shape = reshape_target(data.shape(), &target, attrs.i("allowzero", 0) != 0)?;
                one(reshape(data, shape)?)
            }
            "Flatten" => {
                let data = arg(0)?;
                let rank = data.shape().len() as i64;
                let mut axis = attrs.i("axis", 1);
                if axis < 0 {
                    axis += rank;
                }
                let axis = axis.clamp(0, rank) as usize;
                let outer: usize = data.shape()[..axis].iter().product();
                let inner: usize = data.shape()[axis..].iter().product();
                one(reshape(data, vec![outer, inner])?)
            }
            "Unsqueeze" => {
                let data = arg(0)?;
                let axes = match opt(1) {
                    Some(v) => v.ints()?,
                    None => attrs.ints("axes"),
                };
                let rank = (data.shape().len() + axes.len()) as i64;
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| (if a < 0 { a + rank } else { a }) as usize)
                    .collect();
                axes.sort_unstable();
                let mut shape = data.shape().to_vec();
                for a in axes {
                    if a > shape.len() {
                        return Err(bad(format!("axis {a} out of range")));
                    }
                    shape.insert(a, 1);
                }
                one(reshape(data, shape)?)
            }
            "Squeeze" => {
                let data = arg(0)?;
                let rank = data.shape().len() as i64;
                let axes: Vec<usize> = match opt(1) {
                    Some(v) => v.ints()?,
                    None => attrs.ints("axes"),
                }
                .iter()
                .map(|&a| (if a < 0 { a + rank } else { a }) as usize)
                .collect();
                let shape = data
                    .shape()
                    .iter()
                    .enumerate()
                    .filter(|&(i, &d)| {
                        !(if axes.is_empty() {
                            d == 1
                        } else {
                            axes.contains(&i)
                        })
                    })
                    .map(|(_, &d)| d)
                    .collect();
                one(reshape(data, shape)?)
            }
            "Transpose" => {
                let (x, shape) = arg(0)?.on_device(device)?;
                let rank = shape.len();
                let perm: Vec<usize> = match attrs.get("perm") {
                    Some(_) => attrs.ints("perm").iter().map(|&p| p as usize).collect(),
                    None => (0..rank).rev().collect(),
                };
                if perm.len() != rank {
                    return Err(bad(format!("perm {perm:?} for rank {rank}")));
                }
                let pad = 4 - rank;
                let mut full = [0, 1, 2, 3];
                for (i, &p) in perm.iter().enumerate() {
                    full[pad + i] = pad + p;
                }
                let out_shape = perm.iter().map(|&p| shape[p]).collect();
                one(Value::device(x.permute(full), out_shape))
            }
            "Shape" => {
                let shape = arg(0)?.shape();
                let rank = shape.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clampi(attrs.i("start", 0));
                let end = clampi(attrs.i("end", rank));
                let dims: Vec<f64> = shape[start..end.max(start)]
                    .iter()
                    .map(|&d| d as f64)
                    .collect();
                one(Value::Host {
                    shape: vec![dims.len()],
                    data: dims,
                    integer: true,
                })
            }
            "Gather" => gather(arg(0)?, arg(1)?, attrs.i("axis", 0), device),
            "Slice" => {
                let data = arg(0)?;
                let (starts, ends, axes, steps) = if self.opset >= 10 {
                    let ints = |i: usize| opt(i).map(Value::ints).transpose();
                    (arg(1)?.ints()?, arg(2)?.ints()?, ints(3)?, ints(4)?)
                } else {
                    let axes = attrs.get("axes").map(|_| attrs.ints("axes"));
                    (attrs.ints("starts"), attrs.ints("ends"), axes, None)
                };
                one(slice(data, &starts, &ends, axes, steps, device)?)
            }
            "Cast" => {
                let to = attrs.i("to", 1) as i32;
                let value = arg(0)?;
                if is_integer_type(to) {
                    let (data, shape, _) = value.to_host()?;
                    one(Value::Host {
                        data: data.into_iter().map(f64::trunc).collect(),
                        shape,
                        integer: true,
                    })
                } else {
                    one(match value {
                        Value::Host { data, shape, .. } => Value::Host {
                            data: data.clone(),
                            shape: shape.clone(),
                            integer: false,
                        },
                        device_value => device_value.clone(),
                    })
                }
            }
            "ConstantOfShape" => {
                let shape: Vec<usize> = arg(0)?.ints()?.iter().map(|&d| d as usize).collect();
                let (fill, integer) = match attrs.get("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => (t.values()?.first().copied().unwrap_or(0.0), t.is_integer()),
                    None => (0.0, false),
                };
                let count: usize = shape.iter().product();
                let value = if integer || count <= HOST_LIMIT {
                    Value::Host {
                        data: vec![fill; count],
                        shape,
                        integer,
                    }
                } else {
                    Value::device(Tensor::full(padded(&shape)?, fill, device), shape)
                };
                one(value)
            }
            "Gemm" => {
                let (a, a_shape) = arg(0)?.on_device(device)?;
                let (b, b_shape) = arg(1)?.on_device(device)?;
                check_rank(&a_shape, 2)?;
                check_rank(&b_shape, 2)?;
                let mut a: Tensor<2> = a.reshape([a_shape[0], a_shape[1]]);
                let mut b: Tensor<2> = b.reshape([b_shape[0], b_shape[1]]);
                if attrs.i("transA", 0) != 0 {
                    a = a.transpose();
                }
                if attrs.i("transB", 0) != 0 {
                    b = b.transpose();
                }
                let [m, k] = a.dims();
                let [k2, n] = b.dims();
                if k != k2 {
                    return Err(bad(format!("Gemm of [{m}, {k}] and [{k2}, {n}]")));
                }
                let mut y = a.matmul(b) * attrs.f("alpha", 1.0);
                if let Some(c) = opt(2) {
                    let c = broadcast_to_rank(c, 2, device)?;
                    let [.., ch, cw] = c.dims();
                    let c: Tensor<2> = c.reshape([ch, cw]);
                    y = y + c * attrs.f("beta", 1.0);
                }
                one(Value::device(y.reshape([1, 1, m, n]), vec![m, n]))
            }
            "MatMul" => {
                let (a, a_shape) = arg(0)?.on_device(device)?;
                let (b, b_shape) = arg(1)?.on_device(device)?;
                if a_shape.len() < 2 || b_shape.len() < 2 {
                    return Err(bad("1-d MatMul operands are not supported"));
                }
                if a_shape[a_shape.len() - 1] != b_shape[b_shape.len() - 2] {
                    return Err(bad(format!("MatMul of {a_shape:?} and {b_shape:?}")));
                }
                let y = a.matmul(b);
                let mut shape =
                    broadcast_shape(&a_shape[..a_shape.len() - 2], &b_shape[..b_shape.len() - 2])?;
                shape.push(a_shape[a_shape.len() - 2]);
                shape.push(b_shape[b_shape.len() - 1]);
                one(Value::device(y, shape))
            }
            "Softmax" => {
                let (x, shape) = arg(0)?.on_device(device)?;
                let rank = shape.len() as i64;
                let default = if self.opset >= 13 { -1 } else { 1 };
                let mut axis = attrs.i("axis", default);
                if axis < 0 {
                    axis += rank;
                }
                if self.opset < 13 && axis != rank - 1 {
                    return Err(bad("Softmax before opset 13 is supported on the last axis"));
                }
                let dim = 4 - shape.len() + axis as usize;
                one(Value::device(softmax(x, dim), shape))
            }
            other => Err(bad(format!("operator {other} is not supported"))),
        }
    }

    fn conv(
        &self,
        attrs: &Attributes,
        x: &Value,
        w: &Value,
        b: Option<&Value>,
    ) -> Result<Vec<Value>> {
        let device = &self.device;
        let (x, shape) = x.on_device(device)?;
        let (w, w_shape) = w.on_device(device)?;
        check_rank(&shape, 4)?;
        check_rank(&w_shape, 4)?;
        let bias = b
            .map(|b| b.on_device(device))
            .transpose()?
            .map(|(t, s)| t.reshape([s.iter().product::<usize>()]));
        let groups = attrs.i("group", 1).max(1) as usize;
        if shape[1] != w_shape[1] * groups || w_shape[0] % groups != 0 {
            return Err(bad(format!(
                "input {shape:?} does not fit weight {w_shape:?} with {groups} groups"
            )));
        }
        let kernel = [w_shape[2], w_shape[3]];
        let strides = pair(&attrs.ints("strides"), 1);
        let dilations = pair(&attrs.ints("dilations"), 1);
        let padding = padding_pairs(attrs, [shape[2], shape[3]], kernel, strides, dilations)?;
        let options = ConvOptions::new_with_padding(strides, padding, dilations, groups);
        let y = conv2d(x, w, bias, options);
        let dims = y.dims().to_vec();
        Ok(vec![Value::device(y, dims)])
    }

    fn pool(&self, node: &NodeProto, attrs: &Attributes, x: &Value) -> Result<Vec<Value>> {
        let (x, shape) = x.on_device(&self.device)?;
        check_rank(&shape, 4)?;
        let k = attrs.ints("kernel_shape");
        if k.len() != 2 {
            return Err(bad(format!("kernel_shape {k:?}: only 2-d pooling")));
        }
        let kernel = [k[0] as usize, k[1] as usize];
        let strides = pair(&attrs.ints("strides"), 1);
        let dilations = pair(&attrs.ints("dilations"), 1);
        let padding = padding_pairs(attrs, [shape[2], shape[3]], kernel, strides, dilations)?;
        let ceil = attrs.i("ceil_mode", 0) != 0;
        let y = if node.op_type == "MaxPool" {
            max_pool2d(
                x,
                MaxPoolOptions::new(kernel)
                    .with_stride(strides)
                    .with_padding_pairs(padding)
                    .with_dilation(dilations)
                    .with_ceil_mode(ceil),
            )
        } else {
            if dilations != [1, 1] {
                return Err(bad("dilated AveragePool is not supported"));
            }
            avg_pool2d(
                x,
                AvgPoolOptions::new(kernel)
                    .with_stride(strides)
                    .with_padding_pairs(padding)
                    .with_count_include_pad(attrs.i("count_include_pad", 0) != 0)
                    .with_ceil_mode(ceil),
            )
        };
        let dims = y.dims().to_vec();
        Ok(vec![Value::device(y, dims)])
    }

    /// `Resize` (opset 10+) and `Upsample` on the two spatial axes: nearest with every
    /// coordinate transform and rounding mode, linear as bilinear (half-pixel or align-corners).
    fn resize(
        &self,
        node: &NodeProto,
        attrs: &Attributes,
        args: &[Option<Value>],
    ) -> Result<Vec<Value>> {
        let device = &self.device;
        let x = args[0].as_ref().ok_or_else(|| bad("input 0 is missing"))?;
        let (x, shape) = x.on_device(device)?;
        check_rank(&shape, 4)?;
        let present = |i: usize| args.get(i).and_then(Option::as_ref);
        let nonempty = |i: usize| present(i).filter(|v| v.shape().iter().product::<usize>() > 0);
        let (scales, sizes) = if node.op_type == "Upsample" || self.opset < 11 {
            let scales = match present(1) {
                Some(v) => v.to_host()?.0,
                None => attrs
                    .floats("scales")
                    .iter()
                    .map(|&f| f64::from(f))
                    .collect(),
            };
            (Some(scales), None)
        } else {
            let scales = nonempty(2).map(|v| v.to_host().map(|h| h.0)).transpose()?;
            let sizes = nonempty(3).map(Value::ints).transpose()?;
            (scales, sizes)
        };
        let (out_h, out_w, scale_h, scale_w) = match (sizes, scales) {
            (Some(sizes), _) if sizes.len() == 4 => {
                let (oh, ow) = (sizes[2] as usize, sizes[3] as usize);
                (
                    oh,
                    ow,
                    oh as f64 / shape[2] as f64,
                    ow as f64 / shape[3] as f64,
                )
            }
            (_, Some(scales)) if scales.len() == 4 => {
                if scales[0] != 1.0 || scales[1] != 1.0 {
                    return Err(bad("only the two spatial axes can be resized"));
                }
                (
                    (shape[2] as f64 * scales[2]).floor() as usize,
                    (shape[3] as f64 * scales[3]).floor() as usize,
                    scales[2],
                    scales[3],
                )
            }
            _ => return Err(bad("needs 4 scales or 4 sizes")),
        };
        let mode = attrs.s("mode", "nearest");
        let default_transform = if node.op_type == "Upsample" || self.opset < 11 {
            "asymmetric"
        } else {
            "half_pixel"
        };
        let transform = attrs.s("coordinate_transformation_mode", default_transform);
        let out = match mode.as_str() {
            "nearest" => {
                let default_rounding = if node.op_type == "Upsample" || self.opset < 11 {
                    "floor"
                } else {
                    "round_prefer_floor"
                };
                let rounding = attrs.s("nearest_mode", default_rounding);
                let rows =
                    nearest_indices(shape[2], out_h, scale_h, &transform, &rounding, device)?;
                let cols =
                    nearest_indices(shape[3], out_w, scale_w, &transform, &rounding, device)?;
                x.select(2, rows).select(3, cols)
            }
            "linear" | "bilinear" => {
                let align_corners = match transform.as_str() {
                    "align_corners" => true,
                    "half_pixel" | "pytorch_half_pixel" => false,
                    other => {
                        return Err(bad(format!(
                            "linear resize with coordinate_transformation_mode {other}"
                        )));
                    }
                };
                interpolate(
                    x,
                    InterpolateOptions::new(InterpolateMode::Bilinear)
                        .with_align_corners(align_corners)
                        .with_output_size([out_h, out_w]),
                )
            }
            other => return Err(bad(format!("resize mode {other} is not supported"))),
        };
        Ok(vec![Value::device(
            out,
            vec![shape[0], shape[1], out_h, out_w],
        )])
    }
}

/// The operators [`OnnxGraph`] runs.
pub const SUPPORTED: &[&str] = &[
    "Identity",
    "Dropout",
    "Constant",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Sqrt",
    "Neg",
    "Floor",
    "Ceil",
    "LeakyRelu",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "PRelu",
    "Conv",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Upsample",
    "Concat",
    "Reshape",
    "Flatten",
    "Unsqueeze",
    "Squeeze",
    "Transpose",
    "Shape",
    "Gather",
    "Slice",
    "Cast",
    "ConstantOfShape",
    "Gemm",
    "MatMul",
    "Softmax",
];

/// Whether `node` uses every float input as a device tensor (so a small float constant can be
/// passed as its uploaded copy instead of being uploaded on each run): the layers with weights,
/// and element-wise arithmetic that already has a device operand (it would upload the constant to
/// broadcast it). Other operators may read a float constant on the host (Resize scales, Clip
/// bounds) and get the host value.
fn takes_device_operands(node: &NodeProto, values: &HashMap<String, Value>) -> bool {
    match node.op_type.as_str() {
        "Conv" | "BatchNormalization" | "PRelu" | "Gemm" | "MatMul" => true,
        "Add" | "Sub" | "Mul" | "Div" => node
            .input
            .iter()
            .any(|name| matches!(values.get(name), Some(Value::Device { .. }))),
        _ => false,
    }
}

fn bad(message: impl Into<String>) -> AvatarError {
    AvatarError::Config(message.into())
}

fn check_rank(shape: &[usize], rank: usize) -> Result<()> {
    if shape.len() == rank {
        Ok(())
    } else {
        Err(bad(format!("expects rank {rank}, got shape {shape:?}")))
    }
}

struct Attributes<'a>(&'a [AttributeProto]);

impl Attributes<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }

    fn i(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    fn f(&self, name: &str, default: f64) -> f64 {
        self.get(name).map_or(default, |a| f64::from(a.f))
    }

    fn s(&self, name: &str, default: &str) -> String {
        self.get(name).map_or_else(
            || default.to_owned(),
            |a| String::from_utf8_lossy(&a.s).into_owned(),
        )
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }
}

fn pair(values: &[i64], default: usize) -> [usize; 2] {
    match values {
        [a, b] => [*a as usize, *b as usize],
        _ => [default, default],
    }
}

/// `(begin, end)` padding of the two spatial axes from `pads` or `auto_pad`.
fn padding_pairs(
    attrs: &Attributes,
    input: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
) -> Result<[(usize, usize); 2]> {
    let auto = attrs.s("auto_pad", "NOTSET");
    match auto.as_str() {
        "NOTSET" => {
            let pads = attrs.ints("pads");
            Ok(match pads.as_slice() {
                [] => [(0, 0), (0, 0)],
                [t, l, b, r] => [(*t as usize, *b as usize), (*l as usize, *r as usize)],
                other => return Err(bad(format!("pads {other:?}"))),
            })
        }
        "VALID" => Ok([(0, 0), (0, 0)]),
        "SAME_UPPER" | "SAME_LOWER" => Ok(std::array::from_fn(|i| {
            let out = input[i].div_ceil(strides[i]);
            let extent = (kernel[i] - 1) * dilations[i] + 1;
            let total = ((out - 1) * strides[i] + extent).saturating_sub(input[i]);
            let small = total / 2;
            if auto == "SAME_UPPER" {
                (small, total - small)
            } else {
                (total - small, small)
            }
        })),
        other => Err(bad(format!("auto_pad {other}"))),
    }
}

fn constant(attrs: &Attributes, device: &Device) -> Result<Value> {
    if let Some(t) = attrs.get("value").and_then(|a| a.t.as_ref()) {
        return Value::from_proto(t, device);
    }
    let host = |data: Vec<f64>, shape: Vec<usize>, integer: bool| {
        Ok(Value::Host {
            data,
            shape,
            integer,
        })
    };
    if let Some(a) = attrs.get("value_float") {
        return host(vec![f64::from(a.f)], vec![], false);
    }
    if let Some(a) = attrs.get("value_int") {
        return host(vec![a.i as f64], vec![], true);
    }
    if let Some(a) = attrs.get("value_floats") {
        let n = a.floats.len();
        return host(
            a.floats.iter().map(|&v| f64::from(v)).collect(),
            vec![n],
            false,
        );
    }
    if let Some(a) = attrs.get("value_ints") {
        let n = a.ints.len();
        return host(a.ints.iter().map(|&v| v as f64).collect(), vec![n], true);
    }
    Err(bad("Constant without a supported value attribute"))
}

fn unary(
    x: &Value,
    device: &Device,
    on_device: impl Fn(Tensor<4>) -> Tensor<4>,
    on_host: impl Fn(f64) -> f64,
) -> Result<Vec<Value>> {
    Ok(vec![match x {
        Value::Host {
            data,
            shape,
            integer,
        } => Value::Host {
            data: data.iter().map(|&v| on_host(v)).collect(),
            shape: shape.clone(),
            integer: *integer,
        },
        value => {
            let (t, shape) = value.on_device(device)?;
            Value::device(on_device(t), shape)
        }
    }])
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(bad(format!("shapes {a:?} and {b:?} do not broadcast"))),
            }
        })
        .collect()
}

/// A device tensor of `value` with its shape right-aligned to `rank` (numpy broadcasting).
fn broadcast_to_rank(value: &Value, rank: usize, device: &Device) -> Result<Tensor<4>> {
    let (t, shape) = value.on_device(device)?;
    if shape.len() > rank {
        return Err(bad(format!("{shape:?} does not broadcast to rank {rank}")));
    }
    Ok(t)
}

fn binary(
    a: &Value,
    b: &Value,
    device: &Device,
    on_device: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    on_host: impl Fn(f64, f64, bool) -> f64,
) -> Result<Vec<Value>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    if let (
        Value::Host {
            data: da,
            shape: sa,
            integer: ia,
        },
        Value::Host {
            data: db,
            shape: sb,
            integer: ib,
        },
    ) = (a, b)
    {
        let integer = *ia && *ib;
        let count: usize = shape.iter().product();
        let index = |flat: usize, of: &[usize]| -> usize {
            // Row-major index into `of` (right-aligned, broadcast) for the output index `flat`.
            let mut rem = flat;
            let mut idx = 0;
            let mut stride = 1;
            for (k, &dim) in shape.iter().enumerate().rev() {
                let coord = rem % dim;
                rem /= dim;
                let offset = shape.len() - of.len();
                if k >= offset {
                    let d = of[k - offset];
                    idx += if d == 1 { 0 } else { coord * stride };
                    stride *= d;
                }
            }
            idx
        };
        let data = (0..count)
            .map(|i| on_host(da[index(i, sa)], db[index(i, sb)], integer))
            .collect();
        return Ok(vec![Value::Host {
            data,
            shape,
            integer,
        }]);
    }
    let (ta, _) = a.on_device(device)?;
    let (tb, _) = b.on_device(device)?;
    Ok(vec![Value::device(on_device(ta, tb), shape)])
}

/// `value` with a new logical shape (same element count).
fn reshape(value: &Value, shape: Vec<usize>) -> Result<Value> {
    let count: usize = shape.iter().product();
    if count != value.shape().iter().product::<usize>() {
        return Err(bad(format!(
            "cannot reshape {:?} to {shape:?}",
            value.shape()
        )));
    }
    Ok(match value {
        Value::Host { data, integer, .. } => Value::Host {
            data: data.clone(),
            shape,
            integer: *integer,
        },
        Value::Device { tensor, .. } => {
            Value::device(tensor.clone().reshape(padded(&shape)?), shape)
        }
    })
}

/// ONNX `Reshape`'s target: `0` copies the input's dimension (unless `allowzero`), `-1` is
/// inferred.
fn reshape_target(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut shape: Vec<usize> = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err(bad(format!("shape {target:?} has two -1")));
                }
                shape.push(1);
            }
            0 if !allowzero => shape.push(
                *input
                    .get(i)
                    .ok_or_else(|| bad(format!("shape {target:?}: 0 beyond the input rank")))?,
            ),
            d if d >= 0 => shape.push(d as usize),
            _ => return Err(bad(format!("shape {target:?}"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = shape.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(bad(format!("cannot reshape {input:?} to {target:?}")));
        }
        shape[i] = total / known;
    }
    Ok(shape)
}

fn normalize_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(bad(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

fn concat(values: &[&Value], axis: i64, device: &Device) -> Result<Value> {
    let first = values
        .first()
        .ok_or_else(|| bad("nothing to concatenate"))?;
    let rank = first.shape().len();
    let axis = normalize_axis(axis, rank)?;
    if values.iter().all(|v| matches!(v, Value::Host { .. })) {
        let hosts = values
            .iter()
            .map(|v| v.to_host())
            .collect::<Result<Vec<_>>>()?;
        let outer: usize = first.shape()[..axis].iter().product();
        let mut shape = first.shape().to_vec();
        shape[axis] = hosts.iter().map(|h| h.1[axis]).sum();
        let mut data = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (values, s, _) in &hosts {
                let chunk: usize = s[axis..].iter().product();
                data.extend_from_slice(&values[o * chunk..(o + 1) * chunk]);
            }
        }
        return Ok(Value::Host {
            data,
            shape,
            integer: hosts.iter().all(|h| h.2),
        });
    }
    let mut shape = first.shape().to_vec();
    let mut tensors = Vec::with_capacity(values.len());
    shape[axis] = 0;
    for v in values {
        let (t, s) = v.on_device(device)?;
        let fits = s.len() == rank
            && s.iter()
                .zip(first.shape())
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !fits {
            return Err(bad(format!(
                "cannot concatenate {s:?} and {:?} on axis {axis}",
                first.shape()
            )));
        }
        shape[axis] += s[axis];
        tensors.push(t);
    }
    Ok(Value::device(Tensor::cat(tensors, 4 - rank + axis), shape))
}

fn gather(data: &Value, indices: &Value, axis: i64, device: &Device) -> Result<Vec<Value>> {
    let rank = data.shape().len();
    let axis = normalize_axis(axis, rank)?;
    let dim = data.shape()[axis];
    let (idx, idx_shape, _) = indices.to_host()?;
    let idx: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let i = i as i64;
            let j = if i < 0 { i + dim as i64 } else { i };
            if j < 0 || j as usize >= dim {
                Err(bad(format!("index {i} out of range for {dim}")))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_>>()?;
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend_from_slice(&idx_shape);
    shape.extend_from_slice(&data.shape()[axis + 1..]);
    let value = match data {
        Value::Host {
            data: values,
            shape: s,
            integer,
        } => {
            let outer: usize = s[..axis].iter().product();
            let inner: usize = s[axis + 1..].iter().product();
            let mut out = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let start = (o * dim + i) * inner;
                    out.extend_from_slice(&values[start..start + inner]);
                }
            }
            Value::Host {
                data: out,
                shape,
                integer: *integer,
            }
        }
        Value::Device { tensor, .. } => {
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let n = ids.len();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), device);
            let picked = tensor.clone().select(4 - rank + axis, ids);
            Value::device(picked.reshape(padded(&shape)?), shape)
        }
    };
    Ok(vec![value])
}

fn slice(
    data: &Value,
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
    device: &Device,
) -> Result<Value> {
    let shape = data.shape().to_vec();
    let rank = shape.len();
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    // Per axis: (start, step, count).
    let mut ranges: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
    for (k, &axis) in axes.iter().enumerate() {
        let a = normalize_axis(axis, rank)?;
        let dim = shape[a] as i64;
        let step = steps[k];
        if step == 0 {
            return Err(bad("Slice step 0"));
        }
        let fix = |v: i64| if v < 0 { v + dim } else { v };
        let (start, end) = (fix(starts[k]), fix(ends[k]));
        let (start, end) = if step > 0 {
            (start.clamp(0, dim), end.clamp(0, dim))
        } else {
            (start.clamp(-1, dim - 1), end.clamp(-1, dim - 1))
        };
        let count = if step > 0 {
            ((end - start).max(0) + step - 1) / step
        } else {
            ((start - end).max(0) + (-step) - 1) / (-step)
        };
        ranges[a] = (start, step, count as usize);
    }
    let out_shape: Vec<usize> = ranges.iter().map(|r| r.2).collect();
    match data {
        Value::Host {
            data: values,
            integer,
            ..
        } => {
            let count: usize = out_shape.iter().product();
            let mut out = Vec::with_capacity(count);
            for flat in 0..count {
                let mut rem = flat;
                let mut src = 0usize;
                let mut stride = 1usize;
                for a in (0..rank).rev() {
                    let coord = rem % out_shape[a];
                    rem /= out_shape[a];
                    let (start, step, _) = ranges[a];
                    src += (start + coord as i64 * step) as usize * stride;
                    stride *= shape[a];
                }
                out.push(values[src]);
            }
            Ok(Value::Host {
                data: out,
                shape: out_shape,
                integer: *integer,
            })
        }
        Value::Device { tensor, .. } => {
            if ranges.iter().any(|r| r.1 != 1) {
                return Err(bad("Slice with steps on a float tensor is not supported"));
            }
            let pad = 4 - rank;
            let full: [std::ops::Range<usize>; 4] = std::array::from_fn(|i| {
                if i < pad {
                    0..1
                } else {
                    let (start, _, count) = ranges[i - pad];
                    start as usize..start as usize + count
                }
            });
            let _ = device;
            Ok(Value::device(tensor.clone().slice(full), out_shape))
        }
    }
}

/// Source indices of nearest-neighbour resizing along one axis (ONNX `Resize` semantics).
fn nearest_indices(
    input: usize,
    output: usize,
    scale: f64,
    transform: &str,
    rounding: &str,
    device: &Device,
) -> Result<Tensor<1, Int>> {
    let ids = (0..output)
        .map(|i| {
            let i = i as f64;
            let x = match transform {
                "half_pixel" => (i + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => {
                    if output > 1 {
                        (i + 0.5) / scale - 0.5
                    } else {
                        0.0
                    }
                }
                "asymmetric" => i / scale,
                "tf_half_pixel_for_nn" => (i + 0.5) / scale,
                "align_corners" => {
                    if output > 1 {
                        i * (input as f64 - 1.0) / (output as f64 - 1.0)
                    } else {
                        0.0
                    }
                }
                other => return Err(bad(format!("coordinate_transformation_mode {other}"))),
            };
            let r = match rounding {
                "floor" => x.floor(),
                "ceil" => x.ceil(),
                "round_prefer_floor" => {
                    if x.fract() == 0.5 {
                        x.floor()
                    } else {
                        x.round()
                    }
                }
                "round_prefer_ceil" => x.round(),
                other => return Err(bad(format!("nearest_mode {other}"))),
            };
            Ok((r.max(0.0) as i64).min(input as i64 - 1))
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(Tensor::from_data(TensorData::new(ids, [output]), device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets_follow_onnx() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[-1, 1], false).unwrap(),
            vec![24, 1]
        );
        assert!(reshape_target(&[2, 3, 4], &[-1, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
    }

    #[test]
    fn host_arithmetic_broadcasts_and_divides_integers_by_truncation() {
        let device = Device::flex();
        let a = Value::Host {
            data: vec![7.0, -7.0],
            shape: vec![2],
            integer: true,
        };
        let b = Value::Host {
            data: vec![2.0],
            shape: vec![1],
            integer: true,
        };
        let out = binary(
            &a,
            &b,
            &device,
            |x, y| x / y,
            |x, y, i| {
                if i { (x / y).trunc() } else { x / y }
            },
        )
        .unwrap();
        assert_eq!(out[0].to_host().unwrap().0, vec![3.0, -3.0]);
    }

    fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> Vec<u8> {
        use super::super::proto::{GraphProto, ValueInfoProto};
        use prost::Message;
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: None,
        };
        ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: nodes,
                name: "g".into(),
                initializer,
                input: vec![value("x")],
                output: vec![value("y")],
            }),
            opset_import: vec![],
        }
        .encode_to_vec()
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            name: format!("{op}_0"),
            op_type: op.into(),
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_operators_and_misfit_weights_are_errors_not_panics() {
        let device = Device::flex();
        let err = OnnxGraph::from_bytes(&model(vec![node("Einsum", &["x"])], vec![]), "m", &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Einsum") && err.contains("Einsum_0"), "{err}");
        // A 3-channel convolution fed 2 channels.
        let weight = TensorProto {
            dims: vec![4, 3, 1, 1],
            data_type: 1,
            float_data: vec![0.5; 12],
            name: "w".into(),
            ..Default::default()
        };
        let graph = OnnxGraph::from_bytes(
            &model(vec![node("Conv", &["x", "w"])], vec![weight]),
            "m",
            &device,
        )
        .unwrap();
        let x = Tensor::<4>::zeros([1, 2, 4, 4], &device);
        let err = graph
            .run(vec![("x".into(), Value::device(x, vec![1, 2, 4, 4]))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit weight"), "{err}");
        let ok = Tensor::<4>::ones([1, 3, 4, 4], &device);
        let out = graph
            .run(vec![("x".into(), Value::device(ok, vec![1, 3, 4, 4]))])
            .unwrap();
        assert_eq!(out[0].shape(), &[1, 4, 4, 4]);
        assert_eq!(out[0].to_host().unwrap().0[0], 1.5);
    }

    #[test]
    fn small_float_constants_are_uploaded_once_and_give_the_same_values() {
        let device = Device::flex();
        let float = |name: &str, dims: Vec<i64>, values: Vec<f32>| TensorProto {
            dims,
            data_type: 1,
            float_data: values,
            name: name.into(),
            ..Default::default()
        };
        let axes = TensorProto {
            dims: vec![1],
            data_type: 7,
            int64_data: vec![0],
            name: "axes".into(),
            ..Default::default()
        };
        let mut prelu = node("PRelu", &["x", "slope"]);
        prelu.output = vec!["h".into()];
        let bytes = model(
            vec![prelu, node("Mul", &["h", "scale"])],
            vec![
                float("slope", vec![2, 1, 1], vec![0.5, 0.25]),
                float("scale", vec![1], vec![3.0]),
                axes,
            ],
        );
        let graph = OnnxGraph::from_bytes(&bytes, "m", &device).unwrap();
        let mut uploaded: Vec<&str> = graph.uploaded.keys().map(String::as_str).collect();
        uploaded.sort();
        assert_eq!(
            uploaded,
            ["scale", "slope"],
            "integer constants stay on the host"
        );
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![-4.0f32, 2.0, -4.0, 2.0], [1, 2, 1, 2]),
            &device,
        );
        let out = graph
            .run(vec![("x".into(), Value::device(x, vec![1, 2, 1, 2]))])
            .unwrap();
        assert_eq!(out[0].shape(), &[1, 2, 1, 2]);
        assert_eq!(out[0].to_host().unwrap().0, vec![-6.0, 6.0, -3.0, 6.0]);
        // Host arithmetic on a float constant keeps its host copy.
        let args: HashMap<String, Value> = HashMap::new();
        assert!(!takes_device_operands(
            &node("Mul", &["scale", "scale"]),
            &args
        ));
    }

    #[test]
    fn slices_clamp_and_step_like_onnx() {
        let device = Device::flex();
        let v = Value::Host {
            data: (0..10).map(f64::from).collect(),
            shape: vec![10],
            integer: true,
        };
        let s = slice(&v, &[2], &[i64::MAX], None, None, &device).unwrap();
        assert_eq!(
            s.to_host().unwrap().0,
            (2..10).map(f64::from).collect::<Vec<_>>()
        );
        let s = slice(&v, &[-1], &[i64::MIN], None, Some(vec![-3]), &device).unwrap();
        assert_eq!(s.to_host().unwrap().0, vec![9.0, 6.0, 3.0, 0.0]);
    }
}
