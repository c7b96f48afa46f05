//! DCGAN training on any folder of images (feature `train`), with burn autodiff.
//!
//! The seed's recipe is the default: Adam (lr 2e-4, beta1 0.5) and binary cross-entropy for both
//! networks. Options add the hinge loss and a spectrally normalised discriminator (SN-GAN), label
//! smoothing, instance noise, an exponential moving average of the generator, horizontal flips,
//! and resumable checkpoints.

mod checkpoint;
mod dataset;
mod ema;
mod init;
mod trainer;

pub use checkpoint::TrainState;
pub use dataset::ImageDataset;
pub use ema::ema_update;
pub use trainer::{GanLoss, StepStats, TrainConfig, Trainer, bce_with_logits, sample_grid};
