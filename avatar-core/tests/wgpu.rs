//! The small wgpu correctness set (CI runs it on Mesa's software Vulkan; set AVATAR_WGPU_TESTS=1).

use avatar_core::DeviceSpec;
use avatar_core::dcgan::GeneratorConfig;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

mod common;

fn wgpu_device() -> Option<Device> {
    if std::env::var_os("AVATAR_WGPU_TESTS").is_none() {
        eprintln!("AVATAR_WGPU_TESTS is not set: wgpu tests not run");
        return None;
    }
    Some(DeviceSpec::Wgpu.device().expect("wgpu is compiled in"))
}

#[test]
fn keras_parity_on_wgpu() {
    let Some(device) = wgpu_device() else { return };
    for stem in ["tiny96", "tiny128"] {
        let error = common::keras_max_error(stem, &format!("{stem}.keras2.h5"), None, &device);
        assert!(error <= 1e-4, "{stem} on wgpu: max abs error {error}");
    }
}

#[test]
fn transposed_generator_agrees_with_flex() {
    let Some(device) = wgpu_device() else { return };
    let config = GeneratorConfig::transposed(16, 32, 4, vec![16, 8, 8]).unwrap();
    let generator = config.init(&Device::flex()).unwrap().valid();
    let latents: Vec<f32> = (0..32).map(|i| (i as f32 * 0.77).cos()).collect();
    let run = |device: &Device| {
        let g = generator.clone().to_device(device);
        let z = Tensor::<2>::from_data(TensorData::new(latents.clone(), [2, 16]), device);
        g.forward(z).into_data().try_into_vec::<f32>().unwrap()
    };
    let (cpu, gpu) = (run(&Device::flex()), run(&device));
    let error = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(error <= 1e-4, "max abs error {error}");
}
