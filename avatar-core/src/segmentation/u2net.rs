//! U²-Net (Qin et al. 2020, `xuebinqin/U-2-Net`): a nested U-Net of residual U-blocks (RSU) that
//! predicts a salient-object mask, the model behind rembg's `u2net`, `u2netp`, `u2net_human_seg`
//! and `silueta`.
//!
//! Module paths follow the official `model/u2net.py` (`stage1.rebnconvin.conv_s1`,
//! `stage4d.rebnconv2d.bn_s1`, `side3`, `outconv`), so the released `.pth` state dicts and
//! safetensors conversions load as they are. The widths are read from the weights, so `u2net`
//! (176 MB), `u2netp` (4.7 MB) and any other width of the same topology load without a config.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::sigmoid;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::batch_norm::{Activation, batch_norm_activation};
use crate::diffusion::weights::{KeyMap, load_strict_any, tensor_shapes};
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv2d_layer;
use crate::imaging::resize_bilinear;

/// The eleven stages in forward order with their RSU depth (`None`: the dilated RSU-4F).
const STAGES: [(&str, Option<usize>); 11] = [
    ("stage1", Some(7)),
    ("stage2", Some(6)),
    ("stage3", Some(5)),
    ("stage4", Some(4)),
    ("stage5", None),
    ("stage6", None),
    ("stage5d", None),
    ("stage4d", Some(4)),
    ("stage3d", Some(5)),
    ("stage2d", Some(6)),
    ("stage1d", Some(7)),
];

/// `REBNCONV`: 3x3 convolution (dilated) -> BatchNorm -> ReLU.
#[derive(Module, Debug)]
pub struct RebnConv {
    /// The convolution.
    pub conv_s1: Conv2d,
    /// Its batch norm (running statistics).
    pub bn_s1: BatchNorm,
}

impl RebnConv {
    fn new(input: usize, output: usize, dilation: usize, device: &Device) -> Self {
        RebnConv {
            conv_s1: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(
                    dilation, dilation, dilation, dilation,
                ))
                .with_dilation([dilation, dilation])
                .init(device),
            bn_s1: BatchNormConfig::new(output).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        batch_norm_activation(
            conv2d_layer(x, &self.conv_s1),
            &self.bn_s1,
            Activation::Relu,
        )
    }
}

/// The widths of one residual U-block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsuConfig {
    /// Encoder depth L of RSU-L (4 to 7); the RSU-4F variant has 4.
    pub levels: usize,
    /// RSU-4F: no pooling, dilations 1, 2, 4, 8 instead.
    pub flat: bool,
    /// Input channels.
    pub in_channels: usize,
    /// Inner channels.
    pub mid_channels: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// A residual U-block: `rebnconvin`, an encoder `rebnconv1..L` (the last one dilated) and a
/// decoder `rebnconv{L-1}d..1d`, added to the input projection. The optional levels exist in
/// the deeper blocks only.
#[derive(Module, Debug)]
pub struct Rsu {
    /// Input projection (the residual).
    pub rebnconvin: RebnConv,
    /// Encoder level 1.
    pub rebnconv1: RebnConv,
    /// Encoder level 2.
    pub rebnconv2: RebnConv,
    /// Encoder level 3.
    pub rebnconv3: RebnConv,
    /// Encoder level 4.
    pub rebnconv4: RebnConv,
    /// Encoder level 5 (RSU-5 and deeper).
    pub rebnconv5: Option<RebnConv>,
    /// Encoder level 6 (RSU-6 and deeper).
    pub rebnconv6: Option<RebnConv>,
    /// Encoder level 7 (RSU-7).
    pub rebnconv7: Option<RebnConv>,
    /// Decoder level 1 (to the output width).
    pub rebnconv1d: RebnConv,
    /// Decoder level 2.
    pub rebnconv2d: RebnConv,
    /// Decoder level 3.
    pub rebnconv3d: RebnConv,
    /// Decoder level 4 (RSU-5 and deeper).
    pub rebnconv4d: Option<RebnConv>,
    /// Decoder level 5 (RSU-6 and deeper).
    pub rebnconv5d: Option<RebnConv>,
    /// Decoder level 6 (RSU-7).
    pub rebnconv6d: Option<RebnConv>,
    /// Encoder depth L.
    pub levels: usize,
    /// RSU-4F (dilations instead of pooling).
    pub flat: bool,
}

impl RsuConfig {
    /// The block with random weights.
    pub fn init(&self, device: &Device) -> Rsu {
        let (levels, mid) = (self.levels, self.mid_channels);
        // Encoder level i: dilation 2^(i-1) in RSU-4F; 1 in RSU-L except the bottom (2).
        let dilation = |i: usize| match (self.flat, i == levels) {
            (true, _) => 1 << (i - 1),
            (false, true) => 2,
            (false, false) => 1,
        };
        let encoder = |i: usize| RebnConv::new(mid, mid, dilation(i), device);
        let decoder = |i: usize| {
            let output = if i == 1 { self.out_channels } else { mid };
            let dilation = if self.flat { 1 << (i - 1) } else { 1 };
            RebnConv::new(2 * mid, output, dilation, device)
        };
        let deep = |i: usize, make: &dyn Fn(usize) -> RebnConv| (levels >= i).then(|| make(i));
        Rsu {
            rebnconvin: RebnConv::new(self.in_channels, self.out_channels, 1, device),
            rebnconv1: RebnConv::new(self.out_channels, mid, 1, device),
            rebnconv2: encoder(2),
            rebnconv3: encoder(3),
            rebnconv4: encoder(4),
            rebnconv5: deep(5, &encoder),
            rebnconv6: deep(6, &encoder),
            rebnconv7: deep(7, &encoder),
            rebnconv1d: decoder(1),
            rebnconv2d: decoder(2),
            rebnconv3d: decoder(3),
            rebnconv4d: deep(5, &|_| decoder(4)),
            rebnconv5d: deep(6, &|_| decoder(5)),
            rebnconv6d: deep(7, &|_| decoder(6)),
            levels,
            flat: self.flat,
        }
    }
}

impl Rsu {
    fn encoder(&self, level: usize) -> &RebnConv {
        let deep = match level {
            1 => return &self.rebnconv1,
            2 => return &self.rebnconv2,
            3 => return &self.rebnconv3,
            4 => return &self.rebnconv4,
            5 => &self.rebnconv5,
            6 => &self.rebnconv6,
            _ => &self.rebnconv7,
        };
        deep.as_ref()
            .expect("encoder level within the block's depth")
    }

    fn decoder(&self, level: usize) -> &RebnConv {
        let deep = match level {
            1 => return &self.rebnconv1d,
            2 => return &self.rebnconv2d,
            3 => return &self.rebnconv3d,
            4 => &self.rebnconv4d,
            5 => &self.rebnconv5d,
            _ => &self.rebnconv6d,
        };
        deep.as_ref()
            .expect("decoder level within the block's depth")
    }

    /// `[N, in, H, W] -> [N, out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let levels = self.levels;
        let input = self.rebnconvin.forward(x);
        let mut skips = Vec::with_capacity(levels - 1);
        let mut hx = input.clone();
        for level in 1..levels {
            hx = self.encoder(level).forward(hx);
            skips.push(hx.clone());
            if !self.flat && level < levels - 1 {
                hx = pool(hx);
            }
        }
        hx = self.encoder(levels).forward(hx);
        for level in (1..levels).rev() {
            hx = self
                .decoder(level)
                .forward(Tensor::cat(vec![hx, skips[level - 1].clone()], 1));
            if !self.flat && level > 1 {
                hx = upsample_like(hx, &skips[level - 2]);
            }
        }
        hx + input
    }
}

/// `MaxPool2d(2, stride 2, ceil_mode=True)`.
fn pool(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([2, 2]).with_ceil_mode(true))
}

/// `F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)`.
fn upsample_like(x: Tensor<4>, target: &Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = target.dims();
    resize_bilinear(x, [h, w])
}

/// A U²-Net's widths: the eleven stages' [`RsuConfig`]s and the mask channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U2NetConfig {
    /// `stage1..stage6`, then `stage5d..stage1d`.
    pub stages: [RsuConfig; 11],
    /// Mask channels (1).
    pub out_channels: usize,
}

impl U2NetConfig {
    /// The official `U2NET` (176 MB; rembg's `u2net`, `u2net_human_seg`).
    pub fn full() -> Self {
        Self::from_widths(
            [
                (3, 32, 64),
                (64, 32, 128),
                (128, 64, 256),
                (256, 128, 512),
                (512, 256, 512),
                (512, 256, 512),
                (1024, 256, 512),
                (1024, 128, 256),
                (512, 64, 128),
                (256, 32, 64),
                (128, 16, 64),
            ],
            1,
        )
    }

    /// The official `U2NETP` (4.7 MB; rembg's `u2netp`).
    pub fn small() -> Self {
        let mut widths = [(128, 16, 64); 11];
        widths[0] = (3, 16, 64);
        widths[1..6].fill((64, 16, 64));
        Self::from_widths(widths, 1)
    }

    /// `(in, mid, out)` channels of the eleven stages in [`STAGES`] order.
    pub fn from_widths(widths: [(usize, usize, usize); 11], out_channels: usize) -> Self {
        let stages = std::array::from_fn(|k| {
            let (in_channels, mid_channels, block_out) = widths[k];
            RsuConfig {
                levels: STAGES[k].1.unwrap_or(4),
                flat: STAGES[k].1.is_none(),
                in_channels,
                mid_channels,
                out_channels: block_out,
            }
        });
        U2NetConfig {
            stages,
            out_channels,
        }
    }

    /// Reads the widths from a state dict's tensor shapes, checking the topology (every stage's
    /// depth, every concatenation's width) so that a file of another architecture is refused
    /// here with the offending tensor named.
    pub fn from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let conv = |name: &str| -> Result<[usize; 2]> {
            let key = format!("{name}.weight");
            match shapes.get(&key).map(Vec::as_slice) {
                Some(&[out, input, _, _]) => Ok([out, input]),
                Some(other) => Err(AvatarError::Weights(format!(
                    "U²-Net: {key} has shape {other:?}, expected a 4-d convolution kernel"
                ))),
                None => Err(AvatarError::MissingTensor { name: key }),
            }
        };
        let mut widths = [(0, 0, 0); 11];
        for (k, (stage, levels)) in STAGES.iter().enumerate() {
            let [out, input] = conv(&format!("{stage}.rebnconvin.conv_s1"))?;
            let [mid, _] = conv(&format!("{stage}.rebnconv1.conv_s1"))?;
            let depth = (1..=8)
                .take_while(|l| shapes.contains_key(&format!("{stage}.rebnconv{l}.conv_s1.weight")))
                .count();
            if depth != levels.unwrap_or(4) {
                return Err(AvatarError::Weights(format!(
                    "U²-Net: {stage} has {depth} encoder levels, expected {} (is this a U²-Net \
                     state dict?)",
                    levels.unwrap_or(4)
                )));
            }
            widths[k] = (input, mid, out);
        }
        let [out_channels, _] = conv("outconv")?;
        let config = Self::from_widths(widths, out_channels);
        config.check()?;
        Ok(config)
    }

    /// The stage widths chain: each stage takes the previous (plus skip) widths.
    fn check(&self) -> Result<()> {
        let s = &self.stages;
        let out = |k: usize| s[k].out_channels;
        let expected_in = [
            s[0].in_channels,
            out(0),
            out(1),
            out(2),
            out(3),
            out(4),
            out(5) + out(4),
            out(6) + out(3),
            out(7) + out(2),
            out(8) + out(1),
            out(9) + out(0),
        ];
        for (k, (stage, _)) in STAGES.iter().enumerate() {
            if s[k].in_channels != expected_in[k] {
                return Err(AvatarError::Weights(format!(
                    "U²-Net: {stage} takes {} channels, but the stages before it give {}",
                    s[k].in_channels, expected_in[k]
                )));
            }
        }
        Ok(())
    }

    /// The model with random weights.
    pub fn init(&self, device: &Device) -> U2Net {
        let s = &self.stages;
        let side = |k: usize| {
            Conv2dConfig::new([k, self.out_channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        U2Net {
            stage1: s[0].init(device),
            stage2: s[1].init(device),
            stage3: s[2].init(device),
            stage4: s[3].init(device),
            stage5: s[4].init(device),
            stage6: s[5].init(device),
            stage5d: s[6].init(device),
            stage4d: s[7].init(device),
            stage3d: s[8].init(device),
            stage2d: s[9].init(device),
            stage1d: s[10].init(device),
            side1: side(s[10].out_channels),
            side2: side(s[9].out_channels),
            side3: side(s[8].out_channels),
            side4: side(s[7].out_channels),
            side5: side(s[6].out_channels),
            side6: side(s[5].out_channels),
            outconv: Conv2dConfig::new([6 * self.out_channels, self.out_channels], [1, 1])
                .init(device),
        }
    }
}

/// U²-Net: six encoder stages, five decoder stages, six side outputs fused by `outconv`.
#[derive(Module, Debug)]
pub struct U2Net {
    /// Encoder stage 1 (RSU-7).
    pub stage1: Rsu,
    /// Encoder stage 2 (RSU-6).
    pub stage2: Rsu,
    /// Encoder stage 3 (RSU-5).
    pub stage3: Rsu,
    /// Encoder stage 4 (RSU-4).
    pub stage4: Rsu,
    /// Encoder stage 5 (RSU-4F).
    pub stage5: Rsu,
    /// Bottom stage (RSU-4F).
    pub stage6: Rsu,
    /// Decoder stage 5 (RSU-4F).
    pub stage5d: Rsu,
    /// Decoder stage 4 (RSU-4).
    pub stage4d: Rsu,
    /// Decoder stage 3 (RSU-5).
    pub stage3d: Rsu,
    /// Decoder stage 2 (RSU-6).
    pub stage2d: Rsu,
    /// Decoder stage 1 (RSU-7).
    pub stage1d: Rsu,
    /// Side output of `stage1d`.
    pub side1: Conv2d,
    /// Side output of `stage2d`.
    pub side2: Conv2d,
    /// Side output of `stage3d`.
    pub side3: Conv2d,
    /// Side output of `stage4d`.
    pub side4: Conv2d,
    /// Side output of `stage5d`.
    pub side5: Conv2d,
    /// Side output of `stage6`.
    pub side6: Conv2d,
    /// 1x1 fusion of the six side outputs.
    pub outconv: Conv2d,
}

impl U2Net {
    /// Loads an official U²-Net state dict (`.pth`, as released) or its safetensors conversion;
    /// the widths come from the file. Missing, unexpected or mis-shaped tensors are an error.
    pub fn load(weights: &Path, device: &Device) -> Result<Self> {
        let weights = &*crate::hub::resolve(weights)?;
        let shapes = tensor_shapes(weights)?;
        let config = U2NetConfig::from_shapes(&shapes)
            .map_err(|e| AvatarError::Weights(format!("{}: {e}", weights.display())))?;
        let model = config.init(device);
        let keys = KeyMap::default().ignore("num_batches_tracked");
        load_strict_any(model, weights, &keys)
    }

    /// `[N, 3, H, W]` (ImageNet-normalised) -> the seven sigmoid maps `[d0, d1, ..., d6]`, each
    /// `[N, out, H, W]`; `d0`, the fused one, is the mask.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let device = x.device();
        crate::worker_pool::on_worker(&device, || self.forward_here(x))
    }

    fn forward_here(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let hx1 = self.stage1.forward(x);
        let hx2 = self.stage2.forward(pool(hx1.clone()));
        let hx3 = self.stage3.forward(pool(hx2.clone()));
        let hx4 = self.stage4.forward(pool(hx3.clone()));
        let hx5 = self.stage5.forward(pool(hx4.clone()));
        let hx6 = self.stage6.forward(pool(hx5.clone()));
        let up_cat = |x: Tensor<4>, skip: &Tensor<4>| {
            Tensor::cat(vec![upsample_like(x, skip), skip.clone()], 1)
        };
        let hx5d = self.stage5d.forward(up_cat(hx6.clone(), &hx5));
        let hx4d = self.stage4d.forward(up_cat(hx5d.clone(), &hx4));
        let hx3d = self.stage3d.forward(up_cat(hx4d.clone(), &hx3));
        let hx2d = self.stage2d.forward(up_cat(hx3d.clone(), &hx2));
        let hx1d = self.stage1d.forward(up_cat(hx2d.clone(), &hx1));
        let d1 = conv2d_layer(hx1d, &self.side1);
        let mut sides = vec![d1.clone()];
        for (side, hx) in [
            (&self.side2, hx2d),
            (&self.side3, hx3d),
            (&self.side4, hx4d),
            (&self.side5, hx5d),
            (&self.side6, hx6),
        ] {
            sides.push(upsample_like(conv2d_layer(hx, side), &d1));
        }
        let d0 = conv2d_layer(Tensor::cat(sides.clone(), 1), &self.outconv);
        std::iter::once(d0).chain(sides).map(sigmoid).collect()
    }
}
