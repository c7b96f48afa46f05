//! The flex implementation: an im2col written for NCHW f32 input, and flex's own gemm.

use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;
use burn_flex::ops::matmul::matmul;
use rayon::prelude::*;

use super::GemmConvBackend;

impl GemmConvBackend for Flex {
    fn gemm_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        if !is_f32(&[&x, &weight]) || options.groups != 1 {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::conv2d(x, weight, None, options);
        }
        let [n, ..] = dims(&x);
        let [out_channels, _, kh, kw] = dims(&weight);
        let columns = Im2col::conv2d(&x, [kh, kw], &options);
        let [out_h, out_w] = columns.out;
        // [O, C kh kw] x [C kh kw, N oh ow] -> [O, N, oh, ow] -> [N, O, oh, ow]
        let y = matmul(
            matrix(weight, [out_channels, columns.rows()]),
            columns.into_tensor(),
        );
        y.reshape(Shape::new([out_channels, n, out_h, out_w]))
            .permute(&[1, 0, 2, 3])
            .to_contiguous()
    }

    fn gemm_conv2d_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if !is_f32(&[&x, &weight, &output_grad]) || options.groups != 1 {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::conv2d_weight_backward(
                x,
                weight,
                output_grad,
                options,
            );
        }
        let shape = dims(&weight);
        let columns = Im2col::conv2d(&x, [shape[2], shape[3]], &options);
        // ([C kh kw, N oh ow] x [N oh ow, O])^T -> [O, C kh kw]
        let grad = channels_last(output_grad);
        transposed(matmul_split_inner(columns.into_tensor(), grad)).reshape(Shape::new(shape))
    }

    fn gemm_conv_transpose2d(
        x: FlexTensor,
        weight: FlexTensor,
        options: ConvTransposeOptions<2>,
    ) -> FlexTensor {
        <Flex as burn::backend::ops::ModuleOps<Flex>>::conv_transpose2d(x, weight, None, options)
    }

    fn gemm_conv_transpose2d_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvTransposeOptions<2>,
    ) -> FlexTensor {
        if !is_f32(&[&x, &weight, &output_grad]) || options.groups != 1 {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::conv_transpose2d_weight_backward(
                x,
                weight,
                output_grad,
                options,
            );
        }
        // y[n, o, s i + d k - p] += x[n, c, i] w[c, o, k]: the weight gradient pairs every input
        // pixel with the im2col of the output gradient taken at the input's resolution.
        let shape = dims(&weight);
        let [_, _, kh, kw] = shape;
        let [_, _, in_h, in_w] = dims(&x);
        let columns = Im2col::new(
            &output_grad,
            [kh, kw],
            [in_h, in_w],
            options.stride,
            options.padding,
            options.dilation,
        );
        // ([O kh kw, N h w] x [N h w, C])^T -> [C, O kh kw]
        let x = channels_last(x);
        transposed(matmul_split_inner(columns.into_tensor(), x)).reshape(Shape::new(shape))
    }
}

/// The im2col matrix of an NCHW tensor: row `(c, ki, kj)`, column `(n, oy, ox)` holds
/// `x[n, c, oy * stride + ki * dilation - padding, ox * stride + kj * dilation - padding]`, zero
/// outside the image (`padding` is the padding before each axis).
struct Im2col {
    data: Vec<f32>,
    rows: usize,
    out: [usize; 2],
}

impl Im2col {
    /// The columns a `conv2d` with these options reads.
    fn conv2d(x: &FlexTensor, kernel: [usize; 2], options: &ConvOptions<2>) -> Self {
        let [_, _, h, w] = dims(x);
        let out = [0, 1].map(|axis| {
            let (begin, end) = options.padding[axis];
            let span = options.dilation[axis] * (kernel[axis] - 1) + 1;
            ([h, w][axis] + begin + end - span) / options.stride[axis] + 1
        });
        Self::new(
            x,
            kernel,
            out,
            options.stride,
            options.padding.map(|(begin, _)| begin),
            options.dilation,
        )
    }

    fn new(
        x: &FlexTensor,
        [kh, kw]: [usize; 2],
        [out_h, out_w]: [usize; 2],
        [sh, sw]: [usize; 2],
        [ph, pw]: [usize; 2],
        [dh, dw]: [usize; 2],
    ) -> Self {
        let [n, channels, h, w] = dims(x);
        let x = x.to_contiguous();
        let x: &[f32] = x.as_slice().expect("contiguous f32");
        // Each image row split into its `sw` phases (`ix % sw`), so that every row segment of the
        // matrix below is one contiguous copy instead of a strided gather.
        let phase_len = w.div_ceil(sw);
        let row_len = sw * phase_len;
        let mut phases = vec![0.0f32; n * channels * h * row_len];
        phases
            .par_chunks_mut(row_len)
            .zip(x.par_chunks(w))
            .for_each(|(target, source)| {
                for (ix, &value) in source.iter().enumerate() {
                    target[ix % sw * phase_len + ix / sw] = value;
                }
            });
        let rows = channels * kh * kw;
        let columns = n * out_h * out_w;
        let mut data = vec![0.0f32; rows * columns];
        data.par_chunks_mut(columns)
            .enumerate()
            .for_each(|(row, out)| {
                let (c, ki, kj) = (row / (kh * kw), row / kw % kh, row % kw);
                // Input column `ox * sw + kj * dw - pw` = `(ox + q) * sw + r`: phase `r`, from
                // index `ox + q`; the output columns landing inside the image are first..last.
                let shift = (kj * dw) as isize - pw as isize;
                let (r, q) = (shift.rem_euclid(sw as isize), shift.div_euclid(sw as isize));
                let len = w.saturating_sub(r as usize).div_ceil(sw) as isize;
                let first = (-q).max(0);
                let last = (len - q).clamp(first, out_w as isize);
                let (first, last) = (first as usize, last as usize);
                let from = (first as isize + q) as usize;
                for b in 0..n {
                    let plane = (b * channels + c) * h;
                    for oy in 0..out_h {
                        let iy = (oy * sh + ki * dh) as isize - ph as isize;
                        if iy < 0 || iy >= h as isize || first == last {
                            continue;
                        }
                        let phase =
                            &phases[(plane + iy as usize) * row_len + r as usize * phase_len..];
                        out[(b * out_h + oy) * out_w..][first..last]
                            .copy_from_slice(&phase[from..from + last - first]);
                    }
                }
            });
        Self {
            data,
            rows,
            out: [out_h, out_w],
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn columns(&self) -> usize {
        self.data.len() / self.rows
    }

    fn into_tensor(self) -> FlexTensor {
        let columns = self.columns();
        FlexTensor::from_data(TensorData::new(self.data, [self.rows, columns]))
    }
}

/// `lhs [M, K] x rhs [K, N]` for a long `K` (a weight gradient sums over every output pixel of
/// the batch) and a small `M x N`: gemm parallelises over the output, so each thread takes a slice
/// of `K` and the partial products are added.
fn matmul_split_inner(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
    let inner = lhs.layout().shape()[1];
    let parts = rayon::current_num_threads().min(inner / 4096).max(1);
    if parts == 1 {
        return matmul(lhs, rhs);
    }
    let [m, n] = [lhs.layout().shape()[0], rhs.layout().shape()[1]];
    let chunk = inner.div_ceil(parts);
    let partials: Vec<FlexTensor> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let start = part * chunk;
            let len = chunk.min(inner - start);
            matmul(lhs.narrow(1, start, len), rhs.narrow(0, start, len))
        })
        .collect();
    let mut sum = vec![0.0f32; m * n];
    for partial in &partials {
        let partial: &[f32] = partial.as_slice().expect("contiguous f32");
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    FlexTensor::from_data(TensorData::new(sum, [m, n]))
}

/// `[N, C, h, w]` -> `[N h w, C]` (contiguous), the right-hand side of a weight gradient: gemm
/// packs a row-major operand much faster than a transposed view of the im2col matrix.
fn channels_last(x: FlexTensor) -> FlexTensor {
    let [n, channels, h, w] = dims(&x);
    x.permute(&[0, 2, 3, 1])
        .to_contiguous()
        .reshape(Shape::new([n * h * w, channels]))
}

/// A matrix's contiguous transpose.
fn transposed(x: FlexTensor) -> FlexTensor {
    x.transpose(0, 1).to_contiguous()
}

/// A weight `[O, ...]` as the contiguous matrix `[O, rest]`.
fn matrix(weight: FlexTensor, shape: [usize; 2]) -> FlexTensor {
    weight.to_contiguous().reshape(Shape::new(shape))
}

fn dims(x: &FlexTensor) -> [usize; 4] {
    let shape = x.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

fn is_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}
