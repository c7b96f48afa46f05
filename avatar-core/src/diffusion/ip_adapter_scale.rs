//! Per-block IP-Adapter weights, as diffusers' `set_ip_adapter_scale` takes them in its dict form
//! (InstantStyle: `{"up": {"block_0": [0.0, 1.0, 0.0]}}` keeps only the style layers): a weight
//! for every attention of the down / up blocks that have attentions and for the mid block; blocks
//! not named get 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::unet::{BlockLocation, UNet2DConditionModel, UNetPart};
use crate::error::{AvatarError, Result};

/// One weight, or one per attention of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// The same weight for every attention.
    One(f32),
    /// A weight per attention (or a single-element list, repeated).
    Many(Vec<f32>),
}

/// The weights of the down or up blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SideScales {
    /// Every block with attentions.
    All(f32),
    /// By block: `"block_1": 0.5` or `"block_1": [0.0, 1.0]`; blocks not named get 0.
    Blocks(BTreeMap<String, OneOrMany>),
}

/// diffusers' scale dict: `{"down": ..., "mid": ..., "up": ...}`; a part left out gets 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockScales {
    /// The down blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<SideScales>,
    /// The mid block (one weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<OneOrMany>,
    /// The up blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<SideScales>,
}

fn bad(message: String) -> AvatarError {
    AvatarError::invalid("ip_adapter_scale", message)
}

impl BlockScales {
    /// Parses diffusers' dict from JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "{e}: expected {{\"down\": ..., \"mid\": ..., \"up\": ...}} with a number, or \
                 \"block_N\" keys holding a number or a list"
            ))
        })
    }

    /// The weight of every attention location of `unet`, expanded as diffusers does (with its
    /// errors for unknown blocks and wrong list lengths); every weight must lie in 0..=2.
    pub fn resolve(&self, unet: &UNet2DConditionModel) -> Result<BTreeMap<BlockLocation, f32>> {
        let attentions = unet.attention_counts();
        let mut out = BTreeMap::new();
        let mid = match &self.mid {
            None => 0.0,
            Some(OneOrMany::One(v)) => *v,
            Some(OneOrMany::Many(v)) if v.len() == 1 => v[0],
            Some(OneOrMany::Many(v)) => {
                return Err(bad(format!("expected 1 scale for mid, got {}", v.len())));
            }
        };
        for (part, side, name) in [
            (UNetPart::Down, &self.down, "down"),
            (UNetPart::Up, &self.up, "up"),
        ] {
            let blocks: Vec<(usize, usize)> = attentions
                .iter()
                .filter(|(p, _, n)| *p == part && *n > 0)
                .map(|(_, b, n)| (*b, *n))
                .collect();
            if let Some(SideScales::Blocks(map)) = side {
                for key in map.keys() {
                    let known = key
                        .strip_prefix("block_")
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| blocks.iter().any(|(b, _)| *b == i));
                    if !known {
                        return Err(bad(format!(
                            "{name}.{key}: no such block with attentions in this UNet (it has {})",
                            blocks
                                .iter()
                                .map(|(b, _)| format!("block_{b}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
            for (block, count) in blocks {
                let weights: Vec<f32> = match side {
                    None => vec![0.0; count],
                    Some(SideScales::All(v)) => vec![*v; count],
                    Some(SideScales::Blocks(map)) => match map.get(&format!("block_{block}")) {
                        None => vec![0.0; count],
                        Some(OneOrMany::One(v)) => vec![*v; count],
                        Some(OneOrMany::Many(v)) if v.len() == 1 => vec![v[0]; count],
                        Some(OneOrMany::Many(v)) if v.len() == count => v.clone(),
                        Some(OneOrMany::Many(v)) => {
                            return Err(bad(format!(
                                "expected {count} scales for {name}.block_{block}, got {}",
                                v.len()
                            )));
                        }
                    },
                };
                for (attention, weight) in weights.into_iter().enumerate() {
                    out.insert(
                        BlockLocation {
                            part,
                            block,
                            attention,
                        },
                        weight,
                    );
                }
            }
        }
        for (part, block, count) in attentions {
            if part == UNetPart::Mid {
                for attention in 0..count {
                    out.insert(
                        BlockLocation {
                            part,
                            block,
                            attention,
                        },
                        mid,
                    );
                }
            }
        }
        if let Some(w) = out.values().find(|w| !(0.0..=2.0).contains(*w)) {
            return Err(bad(format!("{w} is out of range 0..=2")));
        }
        Ok(out)
    }
}
