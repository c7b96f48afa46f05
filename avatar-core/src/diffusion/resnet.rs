//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`, shared by the VAE and the UNet.

use crate::activation::silu;
use crate::gemm_conv::conv2d_layer;
use crate::group_norm::group_norm_silu;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

/// A 3x3 convolution with padding 1.
pub(crate) fn conv3x3(input: usize, output: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 1x1 convolution.
pub(crate) fn conv1x1(input: usize, output: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [1, 1]).init(device)
}

/// `GroupNorm(groups, channels, eps)` with affine parameters.
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// Two GroupNorm-SiLU-conv stages with a residual, optionally adding a time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// Norm before `conv1`.
    pub norm1: GroupNorm,
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Projection of the time embedding onto `conv1`'s channels (UNet only).
    pub time_emb_proj: Option<Linear>,
    /// Norm before `conv2`.
    pub norm2: GroupNorm,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// 1x1 projection of the input when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// A block from `input` to `output` channels; `temb` is the time-embedding width (UNet).
    pub fn new(
        input: usize,
        output: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        device: &Device,
    ) -> Self {
        ResnetBlock2D {
            norm1: group_norm(groups, input, eps, device),
            conv1: conv3x3(input, output, device),
            time_emb_proj: temb.map(|t| LinearConfig::new(t, output).init(device)),
            norm2: group_norm(groups, output, eps, device),
            conv2: conv3x3(output, output, device),
            conv_shortcut: (input != output).then(|| conv1x1(input, output, device)),
        }
    }

    /// `[B, Cin, H, W] -> [B, Cout, H, W]`; `temb` is `[B, T]` when the block has a projection.
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        let mut h = conv2d_layer(group_norm_silu(x.clone(), &self.norm1), &self.conv1);
        if let (Some(projection), Some(temb)) = (&self.time_emb_proj, temb) {
            let [b, c] = [h.dims()[0], h.dims()[1]];
            h = h + projection.forward(silu(temb)).reshape([b, c, 1, 1]);
        }
        let h = conv2d_layer(group_norm_silu(h, &self.norm2), &self.conv2);
        let x = match &self.conv_shortcut {
            Some(shortcut) => conv2d_layer(x, shortcut),
            None => x,
        };
        x + h
    }
}

/// A stride-2 3x3 convolution that halves the resolution.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The convolution (padding 1 in the UNet; the VAE pads right/bottom by one instead).
    pub conv: Conv2d,
}

impl Downsample2D {
    /// The UNet's variant: symmetric padding 1.
    pub fn unet(channels: usize, device: &Device) -> Self {
        Self::with_padding(channels, PaddingConfig2d::Explicit(1, 1, 1, 1), device)
    }

    /// The VAE encoder's variant: pad right and bottom by one, then no padding.
    pub fn vae(channels: usize, device: &Device) -> Self {
        Self::with_padding(channels, PaddingConfig2d::Explicit(0, 0, 1, 1), device)
    }

    fn with_padding(channels: usize, padding: PaddingConfig2d, device: &Device) -> Self {
        Downsample2D {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .init(device),
        }
    }

    /// `[B, C, H, W] -> [B, C, H/2, W/2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d_layer(x, &self.conv)
    }
}

/// Nearest-neighbour upsampling by two, then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample2D {
    /// `channels -> channels`.
    pub fn new(channels: usize, device: &Device) -> Self {
        Upsample2D {
            conv: conv3x3(channels, channels, device),
        }
    }

    /// `[B, C, H, W] -> [B, C, 2H, 2W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        self.forward_to(x, [2 * h, 2 * w])
    }

    /// `[B, C, H, W] -> [B, C, height, width]`: diffusers' `upsample_size`, which a UNet passes
    /// when its latents are not divisible by its overall downsampling (a stride-2 convolution
    /// rounds odd sides up, so the way back must land on the skip connection's size, not 2x).
    pub fn forward_to(&self, x: Tensor<4>, [height, width]: [usize; 2]) -> Tensor<4> {
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([height, width]),
        );
        conv2d_layer(up, &self.conv)
    }
}
