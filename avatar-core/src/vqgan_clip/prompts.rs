//! VQGAN+CLIP prompts (`"text:weight:stop"`, several separated by `|`) and their loss: the weighted
//! squared great-circle distance between CLIP embeddings, with a stop below which a prompt no
//! longer pulls (Katherine Crowson's `Prompt` module).

use burn::tensor::Tensor;

use crate::error::{AvatarError, Result};

/// One prompt: its text (or image path), weight (negative pushes away) and stop distance.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSpec {
    /// The text, or for an image prompt its path / name.
    pub text: String,
    /// Weight; negative weights push the image away from the prompt.
    pub weight: f32,
    /// Distance below which the prompt stops pulling (`-inf`: never).
    pub stop: f32,
}

impl PromptSpec {
    /// A prompt with weight 1 and no stop.
    pub fn new(text: impl Into<String>) -> Self {
        PromptSpec {
            text: text.into(),
            weight: 1.0,
            stop: f32::NEG_INFINITY,
        }
    }

    /// Parses `"text"`, `"text:weight"` or `"text:weight:stop"`. Only trailing fields that parse
    /// as numbers are taken, so `"https://x/a.png:0.5"` keeps its colon.
    pub fn parse(spec: &str) -> Result<Self> {
        let field = "prompts";
        let mut parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        parts.reverse();
        let numbers: Vec<Option<f32>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
        let (text, weight, stop) = match (parts.len(), numbers.as_slice()) {
            (3, [_, Some(w), Some(s)]) => (parts[0].to_owned(), *w, *s),
            (3, [_, _, Some(w)]) => (format!("{}:{}", parts[0], parts[1]), *w, f32::NEG_INFINITY),
            (2, [_, Some(w)]) => (parts[0].to_owned(), *w, f32::NEG_INFINITY),
            _ => (spec.to_owned(), 1.0, f32::NEG_INFINITY),
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(AvatarError::invalid(field, format!("{spec:?} has no text")));
        }
        if !weight.is_finite() || weight == 0.0 {
            return Err(AvatarError::invalid(
                field,
                format!("{spec:?}: the weight must be a non-zero finite number"),
            ));
        }
        if stop.is_nan() {
            return Err(AvatarError::invalid(
                field,
                format!("{spec:?}: the stop is not a number"),
            ));
        }
        Ok(PromptSpec { text, weight, stop })
    }

    /// Parses prompts separated by `|` (empty pieces are skipped).
    pub fn parse_list(specs: &str) -> Result<Vec<Self>> {
        specs
            .split('|')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect()
    }
}

/// A prompt's target embeddings `[k, E]` with its weight and stop.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Target embeddings (one for a text, one per cutout for an image prompt).
    pub embeds: Tensor<2>,
    /// Weight.
    pub weight: f32,
    /// Stop distance.
    pub stop: f32,
}

impl Prompt {
    /// The loss of image embeddings `[n, E]`: `|w| * mean(sign(w) * 2 asin(|a - b| / 2)²)` over
    /// every (cutout, target) pair of unit vectors; where the distance is below `stop` the value
    /// counts but its gradient is cut.
    pub fn loss(&self, image_embeds: Tensor<2>) -> Tensor<1> {
        let [n, e] = image_embeds.dims();
        let k = self.embeds.dims()[0];
        let a = normalize(image_embeds).reshape([n, 1, e]);
        let b = normalize(self.embeds.clone()).reshape([1, k, e]);
        let distance = (a - b).square().sum_dim(2).sqrt().reshape([n, k]);
        let dists = distance
            .div_scalar(2.0)
            .asin()
            .square()
            .mul_scalar(2.0 * self.weight.signum());
        let dists = if self.stop == f32::NEG_INFINITY {
            dists
        } else {
            let stopped = dists.clone().clamp_min(self.stop);
            dists.detach() + stopped.clone() - stopped.detach()
        };
        dists.mean().mul_scalar(self.weight.abs())
    }
}

/// Rows scaled to unit length (`F.normalize`, eps 1e-12).
fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_stops() {
        let p = PromptSpec::parse("a red fox:2:-0.5").unwrap();
        assert_eq!(
            (p.text.as_str(), p.weight, p.stop),
            ("a red fox", 2.0, -0.5)
        );
        let p = PromptSpec::parse("a red fox:-1").unwrap();
        assert_eq!((p.text.as_str(), p.weight), ("a red fox", -1.0));
        assert_eq!(p.stop, f32::NEG_INFINITY);
        let p = PromptSpec::parse("ratio 16:9 poster").unwrap();
        assert_eq!((p.text.as_str(), p.weight), ("ratio 16:9 poster", 1.0));
        let p = PromptSpec::parse("http://x/a.png:0.5").unwrap();
        assert_eq!((p.text.as_str(), p.weight), ("http://x/a.png", 0.5));
        let list = PromptSpec::parse_list("a cat | a dog:0.5 ||").unwrap();
        assert_eq!(list.len(), 2);
        assert!(PromptSpec::parse(":1").is_err());
        assert!(PromptSpec::parse("x:0").is_err());
    }
}
