use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::trainer::{TrainConfig, Trainer};
use crate::error::{AvatarError, Result};
use crate::seed::{NormalStream, SplitMix64};

/// Progress counters and RNG states saved in `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    /// Training images seen.
    pub images_seen: u64,
    /// Seconds spent training (across resumes).
    pub train_seconds: f64,
    /// The data-order RNG state.
    pub data_rng: u64,
    /// The latent RNG state.
    pub latent_rng: u64,
    /// The latent RNG's cached sample.
    pub latent_spare: Option<f32>,
    /// The run's config.
    pub config: serde_json::Value,
}

impl TrainState {
    pub(super) fn new(config: TrainConfig) -> Self {
        TrainState {
            step: 0,
            images_seen: 0,
            train_seconds: 0.0,
            data_rng: 0,
            latent_rng: 0,
            latent_spare: None,
            config: serde_json::to_value(&config).expect("config serialises"),
        }
    }
}

/// Config fields added after the first checkpoints were written, with the values those runs
/// trained with. burn's `Config` derive does not apply `#[config(default)]` when deserialising,
/// so an older `state.json` gets them filled in before it is read.
fn added_fields() -> serde_json::Value {
    serde_json::json!({
        "loss": "Bce",
        "discriminator": {"spectral_norm": false},
        "warm_start": null,
    })
}

/// Inserts every key of `added` that `saved` lacks, recursing into objects present in both.
fn fill_added_fields(saved: &mut serde_json::Value, added: &serde_json::Value) {
    let (Some(saved), Some(added)) = (saved.as_object_mut(), added.as_object()) else {
        return;
    };
    for (key, value) in added {
        match saved.get_mut(key) {
            Some(existing) => fill_added_fields(existing, value),
            None => {
                saved.insert(key.clone(), value.clone());
            }
        }
    }
}

const FILES: [&str; 5] = [
    "generator.bpk",
    "discriminator.bpk",
    "optim_generator.bpk",
    "optim_discriminator.bpk",
    "ema.bpk",
];

fn record_err(path: &Path, e: impl std::fmt::Display) -> AvatarError {
    AvatarError::Weights(format!("{}: {e}", path.display()))
}

impl Trainer {
    /// Writes a complete checkpoint to `dir` atomically (a new folder renamed into place), so an
    /// interrupted save never loses the previous checkpoint.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        let old = sibling(dir, "old");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| AvatarError::io(&tmp, e))?;
        let path = |name: &str| tmp.join(name);
        // `valid()` folds pending batch-norm running-statistic updates in (a plain clone would
        // record them one update late); parameter ids are kept, so optimizer state still matches.
        self.generator
            .valid()
            .save_file(path(FILES[0]))
            .map_err(|e| record_err(&path(FILES[0]), e))?;
        self.discriminator
            .valid()
            .save_file(path(FILES[1]))
            .map_err(|e| record_err(&path(FILES[1]), e))?;
        self.optim_generator
            .save(path(FILES[2]))
            .map_err(|e| record_err(&path(FILES[2]), e))?;
        self.optim_discriminator
            .save(path(FILES[3]))
            .map_err(|e| record_err(&path(FILES[3]), e))?;
        if let Some(ema) = &self.ema {
            ema.clone()
                .save_file(path(FILES[4]))
                .map_err(|e| record_err(&path(FILES[4]), e))?;
        }
        let mut state = self.state.clone();
        state.data_rng = self.data_rng.state();
        (state.latent_rng, state.latent_spare) = self.latent_rng.state();
        let json = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(path("state.json"), json)
            .map_err(|e| AvatarError::io(path("state.json"), e))?;
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| AvatarError::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| AvatarError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Resumes a run from a checkpoint written by [`Trainer::save_checkpoint`].
    ///
    /// `update` may change settings that do not alter the networks (batch size, learning rates,
    /// noise, smoothing); architecture changes are rejected. Optimizer state is restored on burn's
    /// default device (`BURN_DEVICE`), then moved to `device` on the first step.
    pub fn resume(
        dir: &Path,
        device: &Device,
        update: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let dir = if dir.join("state.json").exists()
            || !sibling(dir, "old").join("state.json").exists()
        {
            dir.to_path_buf()
        } else {
            sibling(dir, "old")
        };
        let state_path = dir.join("state.json");
        let text =
            std::fs::read_to_string(&state_path).map_err(|e| AvatarError::io(&state_path, e))?;
        let state: TrainState = serde_json::from_str(&text)
            .map_err(|e| AvatarError::Weights(format!("{}: {e}", state_path.display())))?;
        let mut saved_config = state.config.clone();
        fill_added_fields(&mut saved_config, &added_fields());
        let saved: TrainConfig = serde_json::from_value(saved_config)
            .map_err(|e| AvatarError::Weights(format!("{}: config: {e}", state_path.display())))?;
        let mut config = saved.clone();
        update(&mut config);
        if config.generator != saved.generator || config.discriminator != saved.discriminator {
            return Err(AvatarError::Config(
                "a resumed run cannot change the network architectures".into(),
            ));
        }
        let mut trainer = Trainer::new(config.clone(), device)?;
        let path = |name: &str| dir.join(name);
        trainer.generator = trainer
            .generator
            .try_load_file(path(FILES[0]))
            .map_err(|e| record_err(&path(FILES[0]), e))?;
        trainer.discriminator = trainer
            .discriminator
            .try_load_file(path(FILES[1]))
            .map_err(|e| record_err(&path(FILES[1]), e))?;
        trainer.optim_generator = config
            .adam()
            .load(path(FILES[2]))
            .map_err(|e| record_err(&path(FILES[2]), e))?;
        trainer.optim_discriminator = config
            .adam()
            .load(path(FILES[3]))
            .map_err(|e| record_err(&path(FILES[3]), e))?;
        if config.ema_decay.is_some() {
            let ema = trainer.generator.valid();
            trainer.ema = Some(if path(FILES[4]).exists() {
                ema.try_load_file(path(FILES[4]))
                    .map_err(|e| record_err(&path(FILES[4]), e))?
            } else {
                ema
            });
        }
        trainer.data_rng = SplitMix64::new(state.data_rng);
        trainer.latent_rng = NormalStream::from_state(state.latent_rng, state.latent_spare);
        trainer.state = TrainState {
            config: serde_json::to_value(&config).expect("config serialises"),
            ..state
        };
        Ok(trainer)
    }
}

use burn::tensor::Device;

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
