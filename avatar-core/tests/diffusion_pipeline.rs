//! End to end against diffusers 0.42.1's pipelines: prompt embeddings and initial latents from
//! the fixtures, our UNet, scheduler, guidance loop and VAE, compared on the final image
//! (`tools/reference/diffusion/make_fixtures.py`, 2 steps, guidance 7.5).

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::denoise::{Conditioning, decode_latents, denoise};
use avatar_core::diffusion::schedulers::{Scheduler, SchedulerConfig};
use avatar_core::diffusion::unet::{AddedConditioning, UNet2DConditionModel};
use avatar_core::diffusion::vae::AutoencoderKL;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

struct Fixture(Vec<u8>);

impl Fixture {
    fn load(name: &str) -> Self {
        Fixture(std::fs::read(fixtures().join("e2e").join(name)).unwrap())
    }

    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.0)
            .unwrap()
            .tensor(name)
            .is_ok()
    }

    /// The tensor `name`, or its `index`-th slice along the first axis.
    fn tensor<const D: usize>(
        &self,
        name: &str,
        index: Option<usize>,
        device: &Device,
    ) -> Tensor<D> {
        let file = SafeTensors::deserialize(&self.0).unwrap();
        let view = file.tensor(name).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let mut shape = view.shape().to_vec();
        let values = match index {
            Some(i) => {
                let n = values.len() / shape[0];
                shape.remove(0);
                values[i * n..(i + 1) * n].to_vec()
            }
            None => values,
        };
        let shape: [usize; D] = shape.try_into().unwrap();
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

fn run(model: &str, folder: &str, scheduler_name: &str) -> f32 {
    let device = Device::flex();
    let dir = fixtures().join(folder);
    let (_, unet) = UNet2DConditionModel::load(&dir.join("unet"), &device).unwrap();
    let (vae_config, vae) = AutoencoderKL::load(&dir.join("vae"), &device).unwrap();
    let config = SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    let mut scheduler = Scheduler::from_name(scheduler_name, &config).unwrap();
    scheduler.set_timesteps(2).unwrap();

    let inputs = Fixture::load(&format!("{model}_txt2img_inputs.safetensors"));
    let expected = Fixture::load(&format!("{model}_txt2img_{scheduler_name}.safetensors"));
    let added = inputs
        .has("pooled_prompt_embeds")
        .then(|| AddedConditioning {
            text_embeds: inputs.tensor("pooled_prompt_embeds", None, &device),
            time_ids: inputs.tensor("add_time_ids", None, &device),
        });
    let conditioning = Conditioning {
        prompt_embeds: inputs.tensor("prompt_embeds", None, &device),
        added,
        guidance_scale: 7.5,
        attention: Default::default(),
        control: Vec::new(),
    };
    let mut draws = 0;
    let mut reports = Vec::new();
    let latents = denoise(
        &unet,
        &[],
        &mut scheduler,
        inputs.tensor("latents", None, &device),
        true,
        0,
        &conditioning,
        |_| {
            draws += 1;
            expected.tensor("noise", Some(draws - 1), &device)
        },
        |p| {
            reports.push((p.done, p.total));
            true
        },
        |_, _, _| Ok(()),
    )
    .unwrap();
    assert_eq!(reports, vec![(1, 2), (2, 2)]);
    let step = (latents.clone() - expected.tensor::<4>("step_latents", Some(1), &device))
        .abs()
        .max()
        .into_scalar::<f32>();
    let image = decode_latents(&vae, &vae_config, latents, false);
    let diff = (image - expected.tensor::<4>("image", None, &device))
        .abs()
        .max()
        .into_scalar::<f32>();
    eprintln!("{model} {scheduler_name}: latents {step:e}, image {diff:e}");
    assert!(
        step < 1e-3,
        "{model} {scheduler_name}: latents differ by {step}"
    );
    assert!(
        diff < 1e-3,
        "{model} {scheduler_name}: image differs by {diff}"
    );
    diff
}

#[test]
fn sd15_txt2img_matches_diffusers_for_every_scheduler() {
    for name in [
        "ddim",
        "euler",
        "euler_ancestral",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "lcm",
    ] {
        run("sd15", "sd15_tiny", name);
    }
}

#[test]
fn sdxl_txt2img_matches_diffusers() {
    for name in ["euler", "dpmpp_2m_karras"] {
        run("sdxl", "sdxl_tiny", name);
    }
}

#[test]
fn cancelling_and_mismatched_batches_are_errors() {
    let device = Device::flex();
    let dir = fixtures().join("sd15_tiny");
    let (_, unet) = UNet2DConditionModel::load(&dir.join("unet"), &device).unwrap();
    let config = SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    let mut scheduler = Scheduler::from_name("ddim", &config).unwrap();
    scheduler.set_timesteps(3).unwrap();
    let inputs = Fixture::load("sd15_txt2img_inputs.safetensors");
    let conditioning = Conditioning {
        prompt_embeds: inputs.tensor("prompt_embeds", None, &device),
        added: None,
        guidance_scale: 7.5,
        attention: Default::default(),
        control: Vec::new(),
    };
    let latents: Tensor<4> = inputs.tensor("latents", None, &device);
    let mut calls = 0;
    let err = denoise(
        &unet,
        &[],
        &mut scheduler,
        latents.clone(),
        true,
        0,
        &conditioning,
        |s| Tensor::zeros(s, &device),
        |_| {
            calls += 1;
            false
        },
        |_, _, _| Ok(()),
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Cancelled));
    assert_eq!(calls, 1, "stopped after the first step");
    let two = Tensor::cat(vec![latents.clone(), latents], 0);
    let err = denoise(
        &unet,
        &[],
        &mut scheduler,
        two,
        true,
        0,
        &conditioning,
        |s| Tensor::zeros(s, &device),
        |_| true,
        |_, _, _| Ok(()),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AvatarError::InvalidOption {
                field: "prompt_embeds",
                ..
            }
        ),
        "{err}"
    );
}
