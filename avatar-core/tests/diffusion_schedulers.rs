//! Parity of the noise schedulers with diffusers 0.42.1, against the fixtures written by
//! `tools/reference/diffusion/make_fixtures.py` (`tests/fixtures/diffusion/schedulers/*` and the
//! scheduler side of `e2e/*`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use avatar_core::AvatarError;
use avatar_core::diffusion::schedulers::{
    PredictionType, Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use burn::tensor::{Device, Tensor, TensorData};

const SCHEDULERS: [&str; 6] = [
    "ddim",
    "euler",
    "euler_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "lcm",
];
const SPACINGS: [&str; 3] = ["leading", "trailing", "linspace"];
const PREDICTIONS: [&str; 2] = ["epsilon", "v_prediction"];
const STEP_COUNTS: [usize; 10] = [1, 2, 3, 4, 6, 10, 20, 25, 30, 50];
/// Max abs error allowed on the traces.
const TOL: f32 = 1e-5;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

/// A fixture file: every tensor as (shape, values widened to f64), and the `info` metadata.
struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    info: serde_json::Value,
}

impl Fixture {
    fn load(rel: &str) -> Self {
        let bytes = std::fs::read(fixture_dir().join(rel)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values: Vec<f64> = match view.dtype() {
                    safetensors::Dtype::F32 => view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    safetensors::Dtype::I64 => view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    other => panic!("{rel}: {name} has dtype {other:?}"),
                };
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let info = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("info"))
            .map(|s| serde_json::from_str(&s.replace("-Infinity", "null")).unwrap())
            .unwrap_or(serde_json::Value::Null);
        Fixture { tensors, info }
    }

    fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    fn values(&self, key: &str) -> &[f64] {
        &self
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("missing tensor {key}"))
            .1
    }

    fn f32s(&self, key: &str) -> Vec<f32> {
        self.values(key).iter().map(|&v| v as f32).collect()
    }

    fn scalar(&self, key: &str) -> f64 {
        let v = self.values(key);
        assert_eq!(v.len(), 1, "{key} is not a scalar");
        v[0]
    }

    /// Entry `i` of a stacked tensor `[K, d0, d1, d2, d3]` as a `Tensor<4>`.
    fn tensor_at(&self, key: &str, i: usize, device: &Device) -> Tensor<4> {
        let (shape, values) = &self.tensors[key];
        let dims: [usize; 4] = shape[shape.len() - 4..].try_into().unwrap();
        let n: usize = dims.iter().product();
        let part: Vec<f32> = values[i * n..(i + 1) * n]
            .iter()
            .map(|&v| v as f32)
            .collect();
        Tensor::from_data(TensorData::new(part, dims), device)
    }

    fn count(&self, key: &str) -> usize {
        self.tensors.get(key).map_or(0, |(shape, _)| shape[0])
    }
}

fn to_vec(tensor: Tensor<4>) -> Vec<f32> {
    tensor.into_data().try_into_vec::<f32>().unwrap()
}

fn max_abs(ours: Tensor<4>, expected: Tensor<4>) -> f32 {
    to_vec(ours)
        .iter()
        .zip(to_vec(expected))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Asserts equal timesteps and sigmas within 1e-6 (relative above 1); returns the max sigma error.
fn check_schedule(what: &str, scheduler: &Scheduler, fx: &Fixture, prefix: &str) -> f64 {
    assert_eq!(
        scheduler.timesteps(),
        fx.values(&format!("{prefix}.timesteps")),
        "{what}: timesteps"
    );
    let key = format!("{prefix}.sigmas");
    match (scheduler.sigmas(), fx.has(&key)) {
        (Some(ours), true) => {
            let expected = fx.values(&key);
            assert_eq!(ours.len(), expected.len(), "{what}: sigma count");
            ours.iter()
                .zip(expected)
                .map(|(&a, &b)| {
                    let err = (a as f64 - b).abs();
                    assert!(err <= 1e-6 * b.abs().max(1.0), "{what}: sigma {a} vs {b}");
                    err
                })
                .fold(0.0, f64::max)
        }
        (None, false) => 0.0,
        (ours, has) => panic!("{what}: sigmas ours {} fixture {has}", ours.is_some()),
    }
}

/// The base config of the traces with a spacing and prediction type (DDIM also gets
/// `clip_sample: false, set_alpha_to_one: false`, as in the fixture script).
fn base_config(common: &Fixture, name: &str, spacing: &str, prediction: &str) -> SchedulerConfig {
    let mut config = SchedulerConfig::from_json_str(&common.info["config"].to_string()).unwrap();
    config.timestep_spacing = Some(spacing.parse::<TimestepSpacing>().unwrap());
    config.prediction_type = Some(prediction.parse::<PredictionType>().unwrap());
    if name == "ddim" {
        config.clip_sample = Some(false);
        config.set_alpha_to_one = Some(false);
    }
    config
}

/// The two ways to build each fixture case: by name over the base config (class defaults for
/// everything else), and from the effective diffusers config recorded in the metadata.
fn build_both(
    common: &Fixture,
    fx: &Fixture,
    name: &str,
    spacing: &str,
    prediction: &str,
) -> [Scheduler; 2] {
    let by_name =
        Scheduler::from_name(name, &base_config(common, name, spacing, prediction)).unwrap();
    let effective = fx.info["configs"][format!("{spacing}.{prediction}")].to_string();
    let by_class =
        Scheduler::from_config(&SchedulerConfig::from_json_str(&effective).unwrap()).unwrap();
    assert_eq!(by_name.kind(), by_class.kind());
    [by_name, by_class]
}

#[derive(Default, Debug)]
struct Worst {
    cases: usize,
    sigma: f64,
    trace: f32,
}

#[test]
fn training_schedule_is_bit_exact() {
    let common = Fixture::load("schedulers/common.safetensors");
    for kind in SchedulerKind::ALL {
        let config = base_config(&common, kind.name(), "leading", "epsilon");
        let scheduler = Scheduler::new(kind, &config).unwrap();
        let schedule = scheduler.training_schedule();
        assert_eq!(schedule.betas, common.f32s("betas"), "{kind} betas");
        assert_eq!(
            schedule.alphas_cumprod,
            common.f32s("alphas_cumprod"),
            "{kind} ᾱ"
        );
    }
}

#[test]
fn schedulers_match_diffusers() {
    let device = Device::flex();
    let common = Fixture::load("schedulers/common.safetensors");
    let sample0 = common.tensor_at("sample0", 0, &device);
    let mut report = BTreeMap::new();
    for name in SCHEDULERS {
        let fx = Fixture::load(&format!("schedulers/{name}.safetensors"));
        assert_eq!(
            fx.info["errors"],
            serde_json::json!({}),
            "{name}: fixture errors"
        );
        let worst: &mut Worst = report.entry(name).or_default();
        for spacing in SPACINGS {
            // Timesteps and sigmas for every step count.
            for n in STEP_COUNTS {
                let prefix = format!("{spacing}.n{n}");
                for mut scheduler in build_both(&common, &fx, name, spacing, "epsilon") {
                    scheduler.set_timesteps(n).unwrap();
                    let what = format!("{name} {prefix}");
                    worst.sigma = worst
                        .sigma
                        .max(check_schedule(&what, &scheduler, &fx, &prefix));
                }
                worst.cases += 1;
            }
            // 6-step traces.
            for prediction in PREDICTIONS {
                let prefix = format!("{spacing}.{prediction}");
                for mut scheduler in build_both(&common, &fx, name, spacing, prediction) {
                    let what = format!("{name} {prefix}");
                    let err = run_trace(
                        &what,
                        &mut scheduler,
                        &fx,
                        &common,
                        &prefix,
                        &sample0,
                        &device,
                    );
                    worst.sigma = worst.sigma.max(err.0);
                    worst.trace = worst.trace.max(err.1);
                }
                worst.cases += 1;
            }
        }
    }
    for (name, worst) in &report {
        println!(
            "{name:>16}: {} cases, max sigma error {:.2e}, max trace error {:.2e}",
            worst.cases, worst.sigma, worst.trace
        );
        assert_eq!(
            worst.cases,
            SPACINGS.len() * (STEP_COUNTS.len() + PREDICTIONS.len())
        );
    }
}

/// Replays a 6-step trace; returns (max sigma error, max tensor error).
fn run_trace(
    what: &str,
    scheduler: &mut Scheduler,
    fx: &Fixture,
    common: &Fixture,
    prefix: &str,
    sample0: &Tensor<4>,
    device: &Device,
) -> (f64, f32) {
    let steps = fx.count(&format!("{prefix}.prev"));
    assert_eq!(steps, 6, "{what}: trace length");
    scheduler.set_timesteps(steps).unwrap();
    let sigma_err = check_schedule(what, scheduler, fx, prefix);
    let init = scheduler.init_noise_sigma();
    let expected_init = fx.scalar(&format!("{prefix}.init_noise_sigma"));
    assert!(
        (init - expected_init).abs() <= 1e-6 * expected_init.max(1.0),
        "{what}: init σ {init} vs {expected_init}"
    );
    let at = |key: &str, i: usize| fx.tensor_at(&format!("{prefix}.{key}"), i, device);
    let mut sample = sample0.clone().mul_scalar(init);
    let mut err = max_abs(sample.clone(), at("init_sample", 0));
    let noise_key = format!("{prefix}.noise");
    let mut draws = 0;
    let has_x0 = fx.has(&format!("{prefix}.pred_original"));
    for (i, t) in scheduler.timesteps().to_vec().into_iter().enumerate() {
        let scaled = scheduler.scale_model_input(sample.clone(), t).unwrap();
        err = err.max(max_abs(scaled, at("scaled", i)));
        let model_output = common.tensor_at("model_outputs", i, device);
        let out = scheduler
            .step_with(model_output, t, sample, |_| {
                draws += 1;
                fx.tensor_at(&noise_key, draws - 1, device)
            })
            .unwrap();
        err = err.max(max_abs(out.prev_sample.clone(), at("prev", i)));
        assert_eq!(
            out.pred_original_sample.is_some(),
            has_x0,
            "{what}: x0 presence"
        );
        if let Some(x0) = out.pred_original_sample {
            err = err.max(max_abs(x0, at("pred_original", i)));
        }
        sample = out.prev_sample;
    }
    assert_eq!(draws, fx.count(&noise_key), "{what}: noise draws");
    assert!(err <= TOL, "{what}: max abs error {err}");
    (sigma_err, err)
}

/// The pipelines' side of the e2e fixtures: schedulers built by name over the hub configs
/// (which lack most keys, so class defaults apply), replayed with the recorded UNet outputs.
#[test]
fn e2e_pipelines_match_diffusers() {
    let device = Device::flex();
    let configs = [("sd15", "sd15_tiny"), ("sdxl", "sdxl_tiny")];
    let mut checked = 0;
    for (model, folder) in configs {
        let config = SchedulerConfig::from_file(
            fixture_dir()
                .join(folder)
                .join("scheduler/scheduler_config.json"),
        )
        .unwrap();
        let inputs = Fixture::load(&format!("e2e/{model}_txt2img_inputs.safetensors"));
        for name in SCHEDULERS {
            let file = format!("e2e/{model}_txt2img_{name}.safetensors");
            if !fixture_dir().join(&file).exists() {
                continue;
            }
            let fx = Fixture::load(&file);
            let mut scheduler = Scheduler::from_name(name, &config).unwrap();
            let guidance = fx.info["guidance_scale"].as_f64().unwrap() as f32;
            let steps = fx.values("timesteps").len();
            scheduler.set_timesteps(steps).unwrap();
            let what = format!("{model} {name}");
            let timesteps = scheduler.timesteps().to_vec();
            assert_eq!(timesteps, fx.values("timesteps"), "{what}: timesteps");
            assert_eq!(
                scheduler.init_noise_sigma() as f32,
                fx.scalar("init_noise_sigma") as f32,
                "{what}: init σ"
            );
            let latents = inputs.tensor_at("latents", 0, &device);
            let mut latents = latents.mul_scalar(scheduler.init_noise_sigma());
            let mut draws = 0;
            let mut err: f32 = 0.0;
            for (i, &t) in timesteps.iter().enumerate() {
                let scaled = scheduler.scale_model_input(latents.clone(), t).unwrap();
                let unet_in = fx.tensor_at("unet_in", i, &device);
                err = err.max(max_abs(
                    Tensor::cat(vec![scaled.clone(), scaled], 0),
                    unet_in,
                ));
                let unet_out = fx.tensor_at("unet_out", i, &device);
                let [_, c, h, w] = unet_out.dims();
                let uncond = unet_out.clone().slice([0..1, 0..c, 0..h, 0..w]);
                let cond = unet_out.slice([1..2, 0..c, 0..h, 0..w]);
                let guided = uncond.clone() + (cond - uncond).mul_scalar(guidance);
                let out = scheduler
                    .step_with(guided, t, latents, |_| {
                        draws += 1;
                        fx.tensor_at("noise", draws - 1, &device)
                    })
                    .unwrap();
                latents = out.prev_sample;
                err = err.max(max_abs(
                    latents.clone(),
                    fx.tensor_at("step_latents", i, &device),
                ));
            }
            assert_eq!(draws, fx.count("noise"), "{what}: noise draws");
            assert!(err <= TOL, "{what}: max abs error {err}");
            println!("{what:>24}: max error {err:.2e}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

/// img2img: Euler over the SD1.5 config, begin index `N − ⌊N·strength⌋`, and `add_noise`.
#[test]
fn img2img_add_noise_matches_diffusers() {
    let device = Device::flex();
    let fx = Fixture::load("e2e/sd15_img2img_euler.safetensors");
    let config =
        SchedulerConfig::from_file(fixture_dir().join("sd15_tiny/scheduler/scheduler_config.json"))
            .unwrap();
    let mut scheduler = Scheduler::from_name("euler", &config).unwrap();
    let n = fx.info["num_inference_steps"].as_u64().unwrap() as usize;
    let strength = fx.info["strength"].as_f64().unwrap();
    scheduler.set_timesteps(n).unwrap();
    assert_eq!(scheduler.timesteps(), fx.values("all_timesteps"));
    assert_eq!(
        scheduler
            .sigmas()
            .unwrap()
            .iter()
            .map(|&s| s as f64)
            .collect::<Vec<_>>(),
        fx.values("sigmas")
    );
    let start = n - (n as f64 * strength) as usize;
    assert_eq!(&scheduler.timesteps()[start..], fx.values("timesteps"));
    scheduler.set_begin_index(start);
    let t = fx.scalar("add_noise_timestep");
    let noisy = scheduler
        .add_noise(
            fx.tensor_at("init_latents", 0, &device),
            fx.tensor_at("add_noise_noise", 0, &device),
            t,
        )
        .unwrap();
    let err = max_abs(noisy.clone(), fx.tensor_at("noisy_latents", 0, &device));
    assert!(err <= TOL, "add_noise error {err}");
    // The two denoising steps from the begin index.
    let mut latents = noisy;
    let timesteps = scheduler.timesteps()[start..].to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let scaled = scheduler.scale_model_input(latents.clone(), t).unwrap();
        let unet_in = fx.tensor_at("unet_in", i, &device);
        assert!(max_abs(Tensor::cat(vec![scaled.clone(), scaled], 0), unet_in) <= TOL);
        let unet_out = fx.tensor_at("unet_out", i, &device);
        let [_, c, h, w] = unet_out.dims();
        let uncond = unet_out.clone().slice([0..1, 0..c, 0..h, 0..w]);
        let cond = unet_out.slice([1..2, 0..c, 0..h, 0..w]);
        let guided = uncond.clone() + (cond - uncond).mul_scalar(7.5);
        latents = scheduler
            .step(guided, t, latents, None)
            .unwrap()
            .prev_sample;
        let err = max_abs(latents.clone(), fx.tensor_at("step_latents", i, &device));
        assert!(err <= TOL, "img2img step {i}: {err}");
    }
}

fn field(result: Result<impl std::fmt::Debug, AvatarError>) -> &'static str {
    result.unwrap_err().field().expect("an InvalidOption error")
}

#[test]
fn invalid_options_are_errors() {
    let device = Device::flex();
    let config = SchedulerConfig::default();
    for kind in SchedulerKind::ALL {
        let mut scheduler = Scheduler::new(kind, &config).unwrap();
        assert_eq!(
            field(scheduler.set_timesteps(0)),
            "num_inference_steps",
            "{kind}"
        );
        assert_eq!(
            field(scheduler.set_timesteps(1001)),
            "num_inference_steps",
            "{kind}"
        );
    }
    let mut lcm = Scheduler::new(SchedulerKind::Lcm, &config).unwrap();
    assert_eq!(field(lcm.set_timesteps(51)), "num_inference_steps");
    assert_eq!(field("heun".parse::<SchedulerKind>()), "scheduler");
    assert_eq!(
        field("middle".parse::<TimestepSpacing>()),
        "timestep_spacing"
    );
    assert!(SchedulerConfig::from_json_str(r#"{"timestep_spacing": "middle"}"#).is_err());
    assert_eq!(
        field(Scheduler::from_config(
            &SchedulerConfig::from_json_str(r#"{"_class_name": "PNDMScheduler"}"#).unwrap()
        )),
        "scheduler"
    );
    let sample = Tensor::<4>::zeros([1, 4, 2, 2], &device);
    let mut euler_a = Scheduler::new(SchedulerKind::EulerAncestral, &config).unwrap();
    euler_a.set_timesteps(4).unwrap();
    let t = euler_a.timesteps()[0];
    assert_eq!(
        field(euler_a.step(sample.clone(), t, sample.clone(), None)),
        "noise"
    );
    for kind in [SchedulerKind::DpmSolverMultistep, SchedulerKind::Lcm] {
        let mut scheduler = Scheduler::new(kind, &config).unwrap();
        let step = scheduler.step(sample.clone(), 999.0, sample.clone(), None);
        assert_eq!(field(step), "num_inference_steps", "{kind}");
    }
    let mut ddim = Scheduler::new(SchedulerKind::Ddim, &config).unwrap();
    assert_eq!(
        field(ddim.step(sample.clone(), 1.0, sample.clone(), None)),
        "num_inference_steps"
    );
    ddim.set_timesteps(4).unwrap();
    assert_eq!(
        field(ddim.step(sample.clone(), 0.5, sample.clone(), None)),
        "timestep"
    );
    let wrong = Tensor::<4>::zeros([1, 4, 2, 3], &device);
    assert_eq!(
        field(ddim.step(wrong, 1.0, sample.clone(), None)),
        "model_output"
    );
    let mut euler = Scheduler::new(SchedulerKind::Euler, &config).unwrap();
    euler.set_timesteps(2).unwrap();
    assert_eq!(
        field(euler.step(sample.clone(), 3.0, sample.clone(), None)),
        "timestep"
    );
    let (t0, t1) = (euler.timesteps()[0], euler.timesteps()[1]);
    euler
        .step(sample.clone(), t0, sample.clone(), None)
        .unwrap();
    euler
        .step(sample.clone(), t1, sample.clone(), None)
        .unwrap();
    assert_eq!(
        field(euler.step(sample.clone(), t1, sample, None)),
        "timestep"
    );
}

#[test]
fn names_and_class_names() {
    let base = SchedulerConfig::default();
    for (name, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("Euler", SchedulerKind::Euler),
        ("euler-a", SchedulerKind::EulerAncestral),
        ("k_euler_a", SchedulerKind::EulerAncestral),
        ("dpm++ 2m karras", SchedulerKind::DpmSolverMultistep),
        ("lcm", SchedulerKind::Lcm),
        ("LCMScheduler", SchedulerKind::Lcm),
        (
            "EulerAncestralDiscreteScheduler",
            SchedulerKind::EulerAncestral,
        ),
    ] {
        assert_eq!(name.parse::<SchedulerKind>().unwrap(), kind, "{name}");
        assert_eq!(kind.class_name().parse::<SchedulerKind>().unwrap(), kind);
        assert_eq!(Scheduler::from_name(name, &base).unwrap().kind(), kind);
    }
    let mut config = base.clone();
    assert_eq!(
        config.apply_name("dpmpp_2m_karras").unwrap(),
        SchedulerKind::DpmSolverMultistep
    );
    assert_eq!(config.use_karras_sigmas, Some(true));
    assert_eq!(config.solver_order, Some(2));
}
