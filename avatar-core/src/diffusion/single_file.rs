//! Single-file Stable Diffusion checkpoints (`.safetensors` with the original LDM / SGM key
//! names: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`,
//! `conditioner.embedders.{0,1}.*`) converted in memory to diffusers' per-component layout, as
//! diffusers' single-file loader does (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_open_clip_checkpoint`).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{AvatarError, Result};

/// One tensor: dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Stored dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major bytes.
    pub data: Vec<u8>,
}

/// The components of a single-file checkpoint, each in diffusers' key layout.
#[derive(Debug, Default)]
pub struct SingleFileComponents {
    /// `unet/` tensors.
    pub unet: BTreeMap<String, RawTensor>,
    /// `vae/` tensors.
    pub vae: BTreeMap<String, RawTensor>,
    /// `text_encoder/` tensors (transformers layout, `text_model.` prefix).
    pub text_encoder: BTreeMap<String, RawTensor>,
    /// `text_encoder_2/` tensors (SDXL).
    pub text_encoder_2: BTreeMap<String, RawTensor>,
}

/// Serialises converted tensors as safetensors bytes.
pub fn to_safetensors(tensors: &BTreeMap<String, RawTensor>) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|view| (name.clone(), view))
                .map_err(|e| AvatarError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| AvatarError::Weights(e.to_string()))
}

fn dtype_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// `resnets` / `attentions` renames inside a UNet resnet block.
fn unet_resnet_part(rest: &str) -> String {
    const RENAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    for (from, to) in RENAMES {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_owned()
}

/// Maps one `model.diffusion_model.*` key (without the prefix) to diffusers' UNet key.
fn unet_key(key: &str, layers_per_block: usize) -> Option<String> {
    let simple = [
        ("input_blocks.0.0.", "conv_in."),
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (from, to) in simple {
        if let Some(tail) = key.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (index, rest) = rest.split_once('.')?;
        return Some(match index {
            "0" => format!("mid_block.resnets.0.{}", unet_resnet_part(rest)),
            "1" => format!("mid_block.attentions.0.{rest}"),
            "2" => format!("mid_block.resnets.1.{}", unet_resnet_part(rest)),
            _ => return None,
        });
    }
    let per = layers_per_block + 1;
    let mut parts = key.splitn(4, '.');
    let (group, index, sub, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let index: usize = index.parse().ok()?;
    let sub: usize = sub.parse().ok()?;
    match group {
        "input_blocks" => {
            let (block, layer) = ((index - 1) / per, (index - 1) % per);
            if layer == layers_per_block {
                let tail = rest.strip_prefix("op.")?;
                Some(format!("down_blocks.{block}.downsamplers.0.conv.{tail}"))
            } else if sub == 0 {
                Some(format!(
                    "down_blocks.{block}.resnets.{layer}.{}",
                    unet_resnet_part(rest)
                ))
            } else {
                Some(format!("down_blocks.{block}.attentions.{layer}.{rest}"))
            }
        }
        "output_blocks" => {
            let (block, layer) = (index / per, index % per);
            if sub == 0 {
                Some(format!(
                    "up_blocks.{block}.resnets.{layer}.{}",
                    unet_resnet_part(rest)
                ))
            } else if let Some(tail) = rest.strip_prefix("conv.") {
                Some(format!("up_blocks.{block}.upsamplers.0.conv.{tail}"))
            } else {
                Some(format!("up_blocks.{block}.attentions.{layer}.{rest}"))
            }
        }
        _ => None,
    }
}

/// Maps one `first_stage_model.*` key (without the prefix) to diffusers' VAE key.
fn vae_key(key: &str, levels: usize) -> String {
    let mut key = key
        .replace(".norm_out.", ".conv_norm_out.")
        .replace(".nin_shortcut.", ".conv_shortcut.")
        .replace(".mid.block_1.", ".mid_block.resnets.0.")
        .replace(".mid.block_2.", ".mid_block.resnets.1.")
        .replace(".mid.attn_1.norm.", ".mid_block.attentions.0.group_norm.")
        .replace(".mid.attn_1.q.", ".mid_block.attentions.0.to_q.")
        .replace(".mid.attn_1.k.", ".mid_block.attentions.0.to_k.")
        .replace(".mid.attn_1.v.", ".mid_block.attentions.0.to_v.")
        .replace(".mid.attn_1.proj_out.", ".mid_block.attentions.0.to_out.0.");
    for i in 0..levels {
        key = key
            .replace(
                &format!("encoder.down.{i}.block."),
                &format!("encoder.down_blocks.{i}.resnets."),
            )
            .replace(
                &format!("encoder.down.{i}.downsample."),
                &format!("encoder.down_blocks.{i}.downsamplers.0."),
            )
            .replace(
                &format!("decoder.up.{i}.block."),
                &format!("decoder.up_blocks.{}.resnets.", levels - 1 - i),
            )
            .replace(
                &format!("decoder.up.{i}.upsample."),
                &format!("decoder.up_blocks.{}.upsamplers.0.", levels - 1 - i),
            );
    }
    key
}

/// Maps one open_clip key (`conditioner.embedders.1.model.*` without the prefix) to
/// transformers' `CLIPTextModelWithProjection` keys; fused attention projections are split.
fn open_clip_tensors(key: &str, tensor: RawTensor, out: &mut BTreeMap<String, RawTensor>) {
    let rename = |k: &str| -> String {
        k.replace(
            "token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        )
        .replace(
            "positional_embedding",
            "text_model.embeddings.position_embedding.weight",
        )
        .replace("ln_final.", "text_model.final_layer_norm.")
        .replace("transformer.resblocks.", "text_model.encoder.layers.")
        .replace(".attn.out_proj.", ".self_attn.out_proj.")
        .replace(".ln_1.", ".layer_norm1.")
        .replace(".ln_2.", ".layer_norm2.")
        .replace(".mlp.c_fc.", ".mlp.fc1.")
        .replace(".mlp.c_proj.", ".mlp.fc2.")
    };
    if key == "text_projection" {
        // open_clip multiplies `x @ P`; transformers' Linear stores `P^T`.
        let [rows, cols] = [tensor.shape[0], tensor.shape[1]];
        let size = dtype_size(tensor.dtype);
        let mut data = vec![0u8; tensor.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                data[to..to + size].copy_from_slice(&tensor.data[from..from + size]);
            }
        }
        out.insert(
            "text_projection.weight".into(),
            RawTensor {
                dtype: tensor.dtype,
                shape: vec![cols, rows],
                data,
            },
        );
        return;
    }
    if key == "logit_scale" {
        return;
    }
    for (fused, suffix) in [
        ("attn.in_proj_weight", "weight"),
        ("attn.in_proj_bias", "bias"),
    ] {
        if let Some(prefix) = key.strip_suffix(fused) {
            let third = tensor.shape[0] / 3;
            let chunk = tensor.data.len() / 3;
            for (i, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let mut shape = tensor.shape.clone();
                shape[0] = third;
                out.insert(
                    format!("{}self_attn.{name}.{suffix}", rename(prefix)),
                    RawTensor {
                        dtype: tensor.dtype,
                        shape,
                        data: tensor.data[i * chunk..(i + 1) * chunk].to_vec(),
                    },
                );
            }
            return;
        }
    }
    out.insert(rename(key), tensor);
}

/// Splits a single-file checkpoint into diffusers-layout components. `layers_per_block` and
/// `vae_levels` come from the UNet and VAE configs (the file does not record them).
pub fn convert_single_file(
    path: &Path,
    layers_per_block: usize,
    vae_levels: usize,
) -> Result<SingleFileComponents> {
    let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        AvatarError::Weights(format!("{}: not a safetensors file: {e}", path.display()))
    })?;
    let mut out = SingleFileComponents::default();
    let mut unknown = Vec::new();
    for (name, view) in file.tensors() {
        let tensor = RawTensor {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        };
        if let Some(key) = name.strip_prefix("model.diffusion_model.") {
            match unet_key(key, layers_per_block) {
                Some(mapped) => {
                    out.unet.insert(mapped, tensor);
                }
                None => unknown.push(name.clone()),
            }
        } else if let Some(key) = name.strip_prefix("first_stage_model.") {
            let mut tensor = tensor;
            let mapped = vae_key(&format!(".{key}"), vae_levels);
            let mapped = mapped.trim_start_matches('.').to_owned();
            // LDM stores the VAE attention projections as 1x1 convolutions.
            if mapped.contains("mid_block.attentions.0.to_") && tensor.shape.len() == 4 {
                tensor.shape.truncate(2);
            }
            out.vae.insert(mapped, tensor);
        } else if let Some(key) = name
            .strip_prefix("cond_stage_model.transformer.")
            .or_else(|| name.strip_prefix("conditioner.embedders.0.transformer."))
        {
            if !key.ends_with("position_ids") {
                out.text_encoder.insert(key.to_owned(), tensor);
            }
        } else if let Some(key) = name.strip_prefix("conditioner.embedders.1.model.") {
            open_clip_tensors(key, tensor, &mut out.text_encoder_2);
        } else if !matches!(
            name.as_str(),
            "alphas_cumprod"
                | "betas"
                | "alphas_cumprod_prev"
                | "model_ema.decay"
                | "model_ema.num_updates"
        ) && !name.starts_with("model_ema.")
        {
            unknown.push(name.clone());
        }
    }
    if !unknown.is_empty() {
        return Err(AvatarError::WeightKeys {
            file: path.display().to_string(),
            missing: vec![],
            unexpected: unknown,
            mismatched: vec![],
        });
    }
    if out.unet.is_empty() || out.vae.is_empty() || out.text_encoder.is_empty() {
        return Err(AvatarError::Weights(format!(
            "{}: not a Stable Diffusion single-file checkpoint (UNet, VAE or text encoder missing)",
            path.display()
        )));
    }
    Ok(out)
}
