//! The flex implementation: an im2col written for NCHW f32 input, and flex's own gemm, a few
//! images at a time so that each group's im2col matrix stays in cache.

use std::borrow::Cow;
use std::ops::Range;

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
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
        let [n, channels, h, w] = dims(&x);
        let [out_channels, _, kh, kw] = dims(&weight);
        let patches = Patches::conv2d([h, w], [kh, kw], &options);
        let [out_h, out_w] = patches.out;
        let plane = out_h * out_w;
        let rows = channels * kh * kw;
        let weight = matrix(weight, [out_channels, rows]);
        let x = x.to_contiguous();
        let x: &[f32] = x.as_slice().expect("contiguous f32");
        let dims = [channels, h, w];
        let mut output = vec![0.0f32; n * out_channels * plane];
        if rows * plane * std::mem::size_of::<f32>() <= BAND_BYTES {
            let group = images_per_group(rows * plane, n);
            output
                .par_chunks_mut(group * out_channels * plane)
                .enumerate()
                .for_each(|(index, output)| {
                    let count = output.len() / (out_channels * plane);
                    let images = index * group..index * group + count;
                    let phases = patches.phase_rows(x, dims, images);
                    // [O, C kh kw] x [C kh kw, images oh ow] -> [O, images, oh, ow]
                    let y = matmul(weight.clone(), patches.im2col(&phases, 0..out_h));
                    let y: &[f32] = y.as_slice().expect("contiguous f32");
                    for (image_channel, output) in output.chunks_mut(plane).enumerate() {
                        let (b, o) = (image_channel / out_channels, image_channel % out_channels);
                        output.copy_from_slice(&y[(o * count + b) * plane..][..plane]);
                    }
                });
        } else {
            // One image's matrix would not fit in cache nor comfortably in memory (a VAE's
            // 512 px layers): bands of output rows, each its own gemm, in parallel.
            let band = (BAND_COLUMNS / out_w).clamp(1, out_h);
            let bands_per_image = out_h.div_ceil(band);
            // Each band's slice of every output channel, gathered per band.
            let mut slices: Vec<Vec<&mut [f32]>> = (0..n * bands_per_image)
                .map(|_| Vec::with_capacity(out_channels))
                .collect();
            for (image_channel, plane_out) in output.chunks_mut(plane).enumerate() {
                let b = image_channel / out_channels;
                for (index, slice) in plane_out.chunks_mut(band * out_w).enumerate() {
                    slices[b * bands_per_image + index].push(slice);
                }
            }
            let phases: Vec<PhaseRows> = (0..n)
                .map(|b| patches.phase_rows(x, dims, b..b + 1))
                .collect();
            slices
                .into_par_iter()
                .enumerate()
                .for_each(|(index, slices)| {
                    let (b, first) = (index / bands_per_image, index % bands_per_image * band);
                    let out_rows = first..(first + band).min(out_h);
                    let columns = out_rows.len() * out_w;
                    // [O, C kh kw] x [C kh kw, band ow] -> [O, band, ow]
                    let y = matmul(weight.clone(), patches.im2col(&phases[b], out_rows));
                    let y: &[f32] = y.as_slice().expect("contiguous f32");
                    for (slice, y) in slices.into_iter().zip(y.chunks(columns)) {
                        slice.copy_from_slice(y);
                    }
                });
        }
        FlexTensor::from_data(TensorData::new(output, [n, out_channels, out_h, out_w]))
    }

    fn gemm_conv2d_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if is_f32(&[&weight, &output_grad]) && options.groups == 1 {
            if let Some(padding) = input_gradient_as_convolution(&output_grad, &weight, &options) {
                let flipped = Flex::float_flip(Flex::float_swap_dims(weight, 0, 1), &[2, 3]);
                let options = ConvOptions::new([1, 1], padding, [1, 1], 1);
                return Self::gemm_conv2d(output_grad, flipped, options);
            }
            let [_, _, h, w] = dims(&x);
            // A convolution to one pixel reading the whole unpadded input (a discriminator's
            // last layer): its input gradient is one matrix product.
            let whole = options.padding == [(0, 0), (0, 0)] && options.dilation == [1, 1];
            if whole && dims(&weight)[2..] == [h, w] {
                return single_pixel_conv_transpose(output_grad, weight);
            }
            // A strided convolution's input gradient is the transposed convolution of the output
            // gradient landing on the input's size.
            let padding = options.padding.map(|(start, _)| start);
            if options.stride != [1, 1]
                && options.dilation == [1, 1]
                && let Some(gradient) =
                    phased_conv_transpose(&output_grad, &weight, options.stride, padding, [h, w])
            {
                return gradient;
            }
        }
        <Flex as burn::backend::ops::ModuleOps<Flex>>::conv2d_x_backward(
            x,
            weight,
            output_grad,
            options,
        )
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
        let [_, _, h, w] = dims(&x);
        let patches = Patches::conv2d([h, w], [shape[2], shape[3]], &options);
        // ([C kh kw, N oh ow] x [N oh ow, O])^T -> [O, C kh kw]
        let gradient = patches.weight_gradient(x, output_grad);
        transposed(gradient).reshape(Shape::new(shape))
    }

    fn gemm_conv_transpose2d(
        x: FlexTensor,
        weight: FlexTensor,
        options: ConvTransposeOptions<2>,
    ) -> FlexTensor {
        let plain = options.groups == 1 && options.dilation == [1, 1] && is_f32(&[&x, &weight]);
        let [_, _, h, w] = dims(&x);
        if plain && [h, w] == [1, 1] && options.padding == [0, 0] && options.padding_out == [0, 0] {
            return single_pixel_conv_transpose(x, weight);
        }
        if plain && options.stride != [1, 1] {
            let [_, _, kh, kw] = dims(&weight);
            let out = [0, 1].map(|axis| {
                let reach = [h, w][axis].checked_sub(1)? * options.stride[axis]
                    + [kh, kw][axis]
                    + options.padding_out[axis];
                reach.checked_sub(2 * options.padding[axis])
            });
            if let [Some(out_h), Some(out_w)] = out
                && let Some(y) = phased_conv_transpose(
                    &x,
                    &weight,
                    options.stride,
                    options.padding,
                    [out_h, out_w],
                )
            {
                return y;
            }
        }
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
        let patches = Patches {
            kernel: [kh, kw],
            out: [in_h, in_w],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        };
        // ([O kh kw, N h w] x [N h w, C])^T -> [C, O kh kw]
        let gradient = patches.weight_gradient(output_grad, x);
        transposed(gradient).reshape(Shape::new(shape))
    }
}

/// The most bytes of im2col matrix built at once: a group of images whose matrix stays in a
/// core's L2 cache while gemm reads it (one image when a single image's is larger).
const GROUP_BYTES: usize = 1 << 20;

/// The largest im2col matrix of one image built whole; above it, bands of [`BAND_COLUMNS`]
/// output pixels.
const BAND_BYTES: usize = 8 << 20;

/// The fewest values one rayon task of the phase split copies.
const PHASE_SPLIT_VALUES: usize = 16 << 10;

/// Output planes of at least this many pixels take their weight gradient image by image against
/// the NCHW output gradient read transposed (no channels-last copy).
const NCHW_GRADIENT_PIXELS: usize = 256;

/// The largest columns matrix of one output channel a [`phased_conv_transpose`] builds.
const PHASED_COLUMN_BYTES: usize = 8 << 20;

/// The fewest gemm rows (output channels times kernel taps) a [`phased_conv_transpose`] group
/// computes, where the layer has that many.
const PHASED_GEMM_ROWS: usize = 64;

/// About how many output pixels (im2col columns) one band holds (256-2,048 measured at SD's
/// VAE shapes: 512 was best, within this machine's noise).
const BAND_COLUMNS: usize = 512;

/// The fewest im2col columns (output pixels) a weight gradient's group sums over: a gemm whose
/// inner dimension is much shorter runs well below its peak, and each group's partial gradient
/// is summed with the others'.
const GRADIENT_GROUP_COLUMNS: usize = 1024;

/// How many images go in one group, when one image's im2col matrix holds `elements` values.
fn images_per_group(elements: usize, images: usize) -> usize {
    (GROUP_BYTES / (elements * std::mem::size_of::<f32>()).max(1)).clamp(1, images.max(1))
}

/// The patches a convolution reads: output pixel `(oy, ox)`, kernel tap `(ki, kj)` reads input
/// pixel `(oy * stride + ki * dilation - padding, ox * stride + kj * dilation - padding)`, zero
/// outside the image (`padding` is the padding before each axis).
struct Patches {
    kernel: [usize; 2],
    out: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Patches {
    /// The patches a `conv2d` with these options reads from an `[h, w]` image.
    fn conv2d([h, w]: [usize; 2], kernel: [usize; 2], options: &ConvOptions<2>) -> Self {
        let out = [0, 1].map(|axis| {
            let (begin, end) = options.padding[axis];
            let span = options.dilation[axis] * (kernel[axis] - 1) + 1;
            ([h, w][axis] + begin + end - span) / options.stride[axis] + 1
        });
        Self {
            kernel,
            out,
            stride: options.stride,
            padding: options.padding.map(|(begin, _)| begin),
            dilation: options.dilation,
        }
    }

    /// `columns [C kh kw, N oh ow] x rhs [N oh ow, K]` -> `[C kh kw, K]`, the columns being the
    /// im2col matrix of `x [N, C, h, w]` and `rhs` the matrix `[N oh ow, K]` of `other [N, K,
    /// oh, ow]`: a weight gradient, summed over the batch group by group.
    fn weight_gradient(&self, x: FlexTensor, other: FlexTensor) -> FlexTensor {
        let [n, channels, h, w] = dims(&x);
        let inner = dims(&other)[1];
        let [kh, kw] = self.kernel;
        let plane = self.out[0] * self.out[1];
        let rows = channels * kh * kw;
        let x = x.to_contiguous();
        let x: &[f32] = x.as_slice().expect("contiguous f32");
        let group = images_per_group(rows * plane, n)
            .max(GRADIENT_GROUP_COLUMNS.div_ceil(plane.max(1)))
            .min(n.max(1));
        let groups = n.div_ceil(group);
        // Large planes: gemm reads each image's `[K, oh ow]` transposed in place, one image at a
        // time; small ones: one gemm per group against the channels-last copy (a gemm over a few
        // dozen pixels runs well below its peak).
        let per_image = plane >= NCHW_GRADIENT_PIXELS;
        let other = if per_image {
            other.to_contiguous()
        } else {
            channels_last(other)
        };
        let parallelism = if groups >= rayon::current_num_threads() {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        };
        // Summed in group order after all are computed: a parallel reduction's tree (and so its
        // rounding) changes with the thread schedule, and a resumed training run must repeat.
        let partials: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|index| {
                let (first, count) = (index * group, group.min(n - index * group));
                let phases = self.phase_rows(x, [channels, h, w], first..first + count);
                let columns = self.im2col(&phases, 0..self.out[0]);
                if !per_image {
                    let partial = matmul(columns, other.narrow(0, first * plane, count * plane));
                    return partial.into_data().try_into_vec::<f32>().expect("f32");
                }
                let columns: &[f32] = columns.as_slice().expect("contiguous f32");
                let other: &[f32] = other.as_slice().expect("contiguous f32");
                let mut partial = vec![0.0f32; rows * inner];
                for image in 0..count {
                    // partial [rows, K] (+)= columns[:, image plane..][..plane] other_b^T
                    // SAFETY: `columns` is the contiguous `[rows, count plane]`, read from column
                    // `image plane` (`+ plane <= count plane`); image `first + image < n` of
                    // `other` the contiguous `[K, plane]` read transposed (row stride 1, column
                    // stride `plane`); `partial` holds `rows * K` values, row stride `K`.
                    unsafe {
                        gemm::gemm(
                            rows,
                            inner,
                            plane,
                            partial.as_mut_ptr(),
                            1,
                            inner as isize,
                            image > 0,
                            columns[image * plane..].as_ptr(),
                            1,
                            (count * plane) as isize,
                            other[(first + image) * inner * plane..].as_ptr(),
                            plane as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            parallelism,
                        )
                    }
                }
                partial
            })
            .collect();
        let sum = partials
            .into_iter()
            .reduce(|mut sum, partial| {
                sum.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
                sum
            })
            .unwrap_or_else(|| vec![0.0; rows * inner]);
        FlexTensor::from_data(TensorData::new(sum, [rows, inner]))
    }

    /// The im2col matrix of output rows `out_rows` of the images in `phases`: row `(c, ki, kj)`,
    /// column `(n, oy, ox)`.
    fn im2col(&self, phases: &PhaseRows, out_rows: Range<usize>) -> FlexTensor {
        let (n, [channels, h, w], phase_len) = (phases.images, phases.dims, phases.phase_len);
        let ([kh, kw], out_w) = (self.kernel, self.out[1]);
        let ([sh, sw], [ph, pw], [dh, dw]) = (self.stride, self.padding, self.dilation);
        let row_len = sw * phase_len;
        let rows = channels * kh * kw;
        let band = out_rows.len();
        let columns = n * band * out_w;
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
                let first = (-q).clamp(0, out_w as isize);
                let last = (len - q).clamp(first, out_w as isize);
                let (first, last) = (first as usize, last as usize);
                let from = (first as isize + q) as usize;
                for b in 0..n {
                    let plane = (b * channels + c) * h;
                    for (i, oy) in out_rows.clone().enumerate() {
                        let iy = (oy * sh + ki * dh) as isize - ph as isize;
                        if iy < 0 || iy >= h as isize || first == last {
                            continue;
                        }
                        let phase = &phases.data
                            [(plane + iy as usize) * row_len + r as usize * phase_len..];
                        out[(b * band + i) * out_w..][first..last]
                            .copy_from_slice(&phase[from..from + last - first]);
                    }
                }
            });
        FlexTensor::from_data(TensorData::new(data, [rows, columns]))
    }
}

/// Images of an NCHW batch with each row split into its `stride` phases (`ix % stride`), so
/// that every row segment of an im2col matrix is one contiguous copy instead of a strided gather
/// (stride 1: the images themselves, not copied).
struct PhaseRows<'a> {
    data: Cow<'a, [f32]>,
    images: usize,
    dims: [usize; 3],
    phase_len: usize,
}

impl Patches {
    /// `images` of the batch `x` of `[channels, h, w]` images, split for these patches' column
    /// stride.
    fn phase_rows<'a>(
        &self,
        x: &'a [f32],
        dims: [usize; 3],
        images: Range<usize>,
    ) -> PhaseRows<'a> {
        let [channels, h, w] = dims;
        let stride = self.stride[1];
        let image_len = channels * h * w;
        let x = &x[images.start * image_len..images.end * image_len];
        let phase_len = w.div_ceil(stride);
        let data = if stride == 1 {
            Cow::Borrowed(x)
        } else {
            let row_len = stride * phase_len;
            let mut phases = vec![0.0f32; images.len() * channels * h * row_len];
            // Rows are short (tens of pixels at DCGAN's layers): rayon gets runs of them, not
            // one task per row.
            phases
                .par_chunks_mut(row_len)
                .zip(x.par_chunks(w))
                .with_min_len(PHASE_SPLIT_VALUES.div_ceil(row_len.max(1)))
                .for_each(|(target, source)| {
                    // `ix = j * stride + r`, without a division per element.
                    for (j, group) in source.chunks(stride).enumerate() {
                        for (r, &value) in group.iter().enumerate() {
                            target[r * phase_len + j] = value;
                        }
                    }
                });
            Cow::Owned(phases)
        };
        PhaseRows {
            data,
            images: images.len(),
            dims,
            phase_len,
        }
    }
}

/// One output phase of a strided transposed convolution along one axis: the outputs
/// `o = stride * q + residue`, `q < len`, each the sum over `taps` kernel taps
/// `tap + stride * (taps - 1 - j)` of input `q + j - padding`, `j < taps`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AxisPhase {
    residue: usize,
    tap: usize,
    taps: usize,
    padding: usize,
    len: usize,
}

/// The output phases of a transposed convolution along one axis (kernel `kernel`, undilated),
/// `None` when one would need a negative padding (the padding exceeds the kernel's reach).
/// Output `o` collects `x[i] w[k]` over `o = stride i + k - padding`: with `o = stride q + r`,
/// the taps are `k = stride m + t` (`t = (r + padding) % stride`) reading
/// `i = q + (r + padding) / stride - m`.
fn axis_phases(kernel: usize, stride: usize, padding: usize, out: usize) -> Option<Vec<AxisPhase>> {
    (0..stride.min(out))
        .map(|residue| {
            let (tap, carry) = ((residue + padding) % stride, (residue + padding) / stride);
            let taps = kernel.saturating_sub(tap).div_ceil(stride);
            let padding = (taps + 1)
                .checked_sub(carry + 2)
                .or((taps == 0).then_some(0))?;
            let len = (out - residue).div_ceil(stride);
            Some(AxisPhase {
                residue,
                tap,
                taps,
                padding,
                len,
            })
        })
        .collect()
}

/// A strided, undilated, ungrouped transposed convolution `x [N, C, h, w]`, `weight [C, O, kh,
/// kw]` -> `[N, O, out_h, out_w]`: per image and group of output channels the gemm `weight^T x`
/// (the group's columns `[g kh kw, h w]`, about [`GROUP_BYTES`]: they stay in cache until read
/// back), then a col2im that builds each output row one stride phase at a time (the phase's
/// pixels are sums of contiguous, shifted column rows: vector adds) and stores the phases
/// interleaved, where flex computes one image's columns whole (13-19 MiB at the seed Keras
/// generators' last layers, read back from memory) and adds every column element into its
/// strided output pixel one by one. `None` where a
/// phase would need a negative padding, a tensor is empty or one output channel's columns
/// exceed [`PHASED_COLUMN_BYTES`].
fn phased_conv_transpose(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 2],
) -> Option<FlexTensor> {
    let [n, channels, h, w] = dims(x);
    let [_, out_channels, kh, kw] = dims(weight);
    let col2im = PhasedCol2im {
        rows: axis_phases(kh, stride[0], padding[0], out[0])?,
        columns: axis_phases(kw, stride[1], padding[1], out[1])?,
        stride,
        kernel: [kh, kw],
        input: [h, w],
        out,
    };
    let (plane, taps) = (h * w, kh * kw);
    let m = out_channels * taps;
    let channel_bytes = taps * plane * std::mem::size_of::<f32>();
    // Empty tensors (nothing to split into tasks) and oversized channels: flex's own.
    if n * channels * out_channels * out[0] * out[1] * channel_bytes == 0
        || channel_bytes > PHASED_COLUMN_BYTES
    {
        return None;
    }
    // Output channels per group: about GROUP_BYTES of columns, and at least 64 gemm rows (a
    // shorter gemm runs well below its peak) where there are that many.
    let group = (GROUP_BYTES / channel_bytes.max(1))
        .max(PHASED_GEMM_ROWS.div_ceil(taps))
        .clamp(1, out_channels.max(1));
    let weight = weight.to_contiguous();
    let weight: &[f32] = weight.as_slice().expect("contiguous f32");
    let x = x.to_contiguous();
    let x: &[f32] = x.as_slice().expect("contiguous f32");
    let out_plane = out[0] * out[1];
    let mut output = vec![0.0f32; n * out_channels * out_plane];
    // Columns `[g kh kw, h w]` of output channels `first..first + g` of image `b`:
    // `weight[:, first kh kw..][..g kh kw]^T x_b [C, h w]`.
    // SAFETY: `columns` holds at least `rows * plane` values written with row stride `plane`;
    // `weight` is the contiguous `[C, m]` read transposed (column stride `m`) from row
    // `first kh kw`, `first kh kw + rows <= m`, and image `b` of `x` the contiguous `[C, plane]`
    // (both checked by their shapes above).
    let columns_of = |b: usize, first: usize, columns: &mut [f32], parallel: bool| unsafe {
        let rows = columns.len() / plane.max(1);
        debug_assert!(first * taps + rows <= m && rows * plane == columns.len());
        gemm::gemm(
            rows,
            plane,
            channels,
            columns.as_mut_ptr(),
            1,
            plane as isize,
            false,
            weight[first * taps..].as_ptr(),
            m as isize,
            1,
            x[b * channels * plane..].as_ptr(),
            1,
            plane as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        )
    };
    // (image, first channel, the group's output planes)
    let tasks: Vec<(usize, usize, &mut [f32])> = output
        .chunks_mut(out_channels * out_plane)
        .enumerate()
        .flat_map(|(b, image)| {
            image
                .chunks_mut(group * out_plane)
                .enumerate()
                .map(move |(index, planes)| (b, index * group, planes))
        })
        .collect();
    let col2im_group = |columns: &[f32], planes: &mut [f32]| {
        for (o, plane_out) in planes.chunks_mut(out_plane).enumerate() {
            col2im.channel(&columns[o * taps * plane..][..taps * plane], plane_out);
        }
    };
    if tasks.len() >= rayon::current_num_threads() {
        // One columns buffer per worker, not per task: a fresh one costs its memset and page
        // faults.
        tasks.into_par_iter().for_each_init(
            || vec![0.0f32; group * taps * plane],
            |buffer, (b, first, planes)| {
                let columns = &mut buffer[..planes.len() / out_plane * taps * plane];
                columns_of(b, first, columns, false);
                col2im_group(columns, planes);
            },
        );
    } else {
        let mut buffer = vec![0.0f32; group * taps * plane];
        for (b, first, planes) in tasks {
            let columns = &mut buffer[..planes.len() / out_plane * taps * plane];
            columns_of(b, first, columns, true);
            let columns = &*columns;
            planes
                .par_chunks_mut(out_plane)
                .enumerate()
                .for_each(|(o, plane_out)| {
                    col2im.channel(&columns[o * taps * plane..][..taps * plane], plane_out)
                });
        }
    }
    Some(FlexTensor::from_data(TensorData::new(
        output,
        [n, out_channels, out[0], out[1]],
    )))
}

/// The transposed convolution of one-pixel images `x [N, C, 1, 1]` by `weight [C, O, kh, kw]`
/// (unpadded, undilated; the stride plays no part): `[N, C] x [C, O kh kw]` -> `[N, O, kh, kw]`,
/// one matrix product where flex runs one matrix-vector product per image and a col2im (a
/// generator's first layer, from the latent).
fn single_pixel_conv_transpose(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let [n, channels, _, _] = dims(&x);
    let [_, out_channels, kh, kw] = dims(&weight);
    let x = matrix(x, [n, channels]);
    let weight = matrix(weight, [channels, out_channels * kh * kw]);
    matmul(x, weight).reshape(Shape::new([n, out_channels, kh, kw]))
}

/// The col2im of [`phased_conv_transpose`]: output pixel `(stride_h q + r_h, stride_w q' +
/// r_w)` of a channel is the sum over its phases' taps of column `(ki, kj)` at input pixel
/// `(q + j - padding_h, q' + k - padding_w)`.
struct PhasedCol2im {
    rows: Vec<AxisPhase>,
    columns: Vec<AxisPhase>,
    stride: [usize; 2],
    kernel: [usize; 2],
    input: [usize; 2],
    out: [usize; 2],
}

impl PhasedCol2im {
    /// One output channel `[out_h, out_w]` (every pixel written) from its columns `[kh kw, h w]`.
    fn channel(&self, columns: &[f32], output: &mut [f32]) {
        crate::vector_dispatch::widest(
            #[inline(always)]
            || self.channel_kernel(columns, output),
        )
    }

    /// Per row phase, each column phase's pixels as an image `[row.len, width]` (`width` the
    /// longest column phase), summed tap by tap from shifted column rows; then the phases'
    /// rows stored interleaved.
    #[inline(always)]
    fn channel_kernel(&self, columns: &[f32], output: &mut [f32]) {
        let ([h, w], [_, kw], [sh, sw]) = (self.input, self.kernel, self.stride);
        let (plane, out_w) = (h * w, self.out[1]);
        let width = self.columns.iter().map(|c| c.len).max().unwrap_or(0);
        let height = self.rows.iter().map(|r| r.len).max().unwrap_or(0);
        let mut images = vec![0.0f32; self.columns.len() * height * width];
        for row in &self.rows {
            let images = &mut images[..self.columns.len() * row.len * width];
            images.fill(0.0);
            for (column, image) in self.columns.iter().zip(images.chunks_mut(row.len * width)) {
                for j in 0..row.taps {
                    let ki = row.tap + sh * (row.taps - 1 - j);
                    // image row q reads input row q + j - padding where that lies in the image.
                    let first_q = row.padding.saturating_sub(j);
                    let last_q = (h + row.padding).saturating_sub(j).min(row.len);
                    for k in 0..column.taps {
                        let kj = column.tap + sw * (column.taps - 1 - k);
                        // image column q' reads input column q' + k - padding likewise.
                        let first = column.padding.saturating_sub(k);
                        let last = (w + column.padding).saturating_sub(k).min(column.len);
                        if first >= last {
                            continue;
                        }
                        let from = first + k - column.padding;
                        let tap = &columns[(ki * kw + kj) * plane..][..plane];
                        for q in first_q..last_q {
                            let iy = q + j - row.padding;
                            image[q * width + first..q * width + last]
                                .iter_mut()
                                .zip(&tap[iy * w + from..])
                                .for_each(|(sum, &value)| *sum += value);
                        }
                    }
                }
            }
            for q in 0..row.len {
                let line = &mut output[(sh * q + row.residue) * out_w..][..out_w];
                let rows = |phase: usize| &images[(phase * row.len + q) * width..][..width];
                match (sw, self.columns.len()) {
                    (2, 2) if out_w == 2 * width => interleave::<2>(line, [rows(0), rows(1)]),
                    (3, 3) if out_w == 3 * width => {
                        interleave::<3>(line, [rows(0), rows(1), rows(2)])
                    }
                    (4, 4) if out_w == 4 * width => {
                        interleave::<4>(line, [rows(0), rows(1), rows(2), rows(3)])
                    }
                    _ => {
                        for (index, column) in self.columns.iter().enumerate() {
                            line[column.residue..]
                                .iter_mut()
                                .step_by(sw)
                                .zip(&rows(index)[..column.len])
                                .for_each(|(out, &sum)| *out = sum);
                        }
                    }
                }
            }
        }
    }
}

/// `line[S i + r] = phases[r][i]`: `S` equally long phases stored interleaved (a fixed `S`
/// lets the compiler use vector shuffles instead of strided scalar stores).
#[inline(always)]
fn interleave<const S: usize>(line: &mut [f32], phases: [&[f32]; S]) {
    for (i, pixels) in line.chunks_exact_mut(S).enumerate() {
        for (pixel, phase) in pixels.iter_mut().zip(phases) {
            *pixel = phase[i];
        }
    }
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

/// A tensor `[A, ...]` as the contiguous matrix `[A, rest]`.
fn matrix(x: FlexTensor, shape: [usize; 2]) -> FlexTensor {
    x.to_contiguous().reshape(Shape::new(shape))
}

fn dims(x: &FlexTensor) -> [usize; 4] {
    let shape = x.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Output planes of at least this many pixels take their input gradient as a convolution.
const INPUT_GRADIENT_AS_CONVOLUTION_PIXELS: usize = 256 * 256;

/// The padding of the convolution that computes the input gradient of a stride-1, undilated,
/// ungrouped, evenly padded convolution from its output gradient (`grad` convolved with the
/// weight's channels swapped and its kernel flipped: im2col + gemm, as PyTorch's CPU backward
/// does), where that is faster than burn's transposed convolution (gemm + col2im): on large
/// planes only (`conv_layers`' `input_grad` benches on flex: 1.5x faster at 128 channels x
/// 256^2, slower at 256 x 64^2 and 512 x 16^2).
fn input_gradient_as_convolution(
    grad: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<[usize; 2]> {
    let [grad, weight] = [dims(grad), dims(weight)];
    let plain = options.stride == [1, 1] && options.dilation == [1, 1] && options.groups == 1;
    let large = grad[2] * grad[3] >= INPUT_GRADIENT_AS_CONVOLUTION_PIXELS;
    let padding = [0, 1].map(|i| match options.padding[i] {
        (start, end) if start == end => (weight[2 + i] - 1).checked_sub(start),
        _ => None,
    });
    match padding {
        [Some(h), Some(w)] if plain && large => Some([h, w]),
        _ => None,
    }
}

fn is_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

#[cfg(test)]
mod tests {
    use super::{AxisPhase, axis_phases};

    fn phase(residue: usize, tap: usize, taps: usize, padding: usize, len: usize) -> AxisPhase {
        AxisPhase {
            residue,
            tap,
            taps,
            padding,
            len,
        }
    }

    #[test]
    fn output_phases_of_strided_transposed_convolutions() {
        // DCGAN's k4 s2 p1, 8 -> 16: even outputs read taps 3, 1 of inputs q - 1, q; odd ones
        // taps 2, 0 of q, q + 1.
        assert_eq!(
            axis_phases(4, 2, 1, 16),
            Some(vec![phase(0, 1, 2, 1, 8), phase(1, 0, 2, 0, 8)])
        );
        // A kernel narrower than the stride leaves a phase without taps.
        assert_eq!(
            axis_phases(2, 3, 0, 7),
            Some(vec![
                phase(0, 0, 1, 0, 3),
                phase(1, 1, 1, 0, 2),
                phase(2, 2, 0, 0, 2)
            ])
        );
        // An output shorter than the stride has fewer phases.
        assert_eq!(
            axis_phases(3, 4, 0, 2),
            Some(vec![phase(0, 0, 1, 0, 1), phase(1, 1, 1, 0, 1)])
        );
        // A padding beyond the taps' reach would need a negative one.
        assert_eq!(axis_phases(2, 2, 2, 8), None);
    }
}
