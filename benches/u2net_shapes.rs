//! U²-Net background removal at rembg's size with random weights (no download): one forward of
//! the official `U2NET` (44 M parameters) and `U2NETP` (1.1 M) on a 320x320 image, batch 1.
//! `compare_u2net.py` runs the same networks in PyTorch; results go to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench u2net_shapes -- [u2net|u2netp ...] [--runs N]
//! ```

use avatar_core::segmentation::U2NetConfig;
use burn::tensor::{Device, Distribution, Tensor};

mod common;

use common::{bench_args, time, wanted};

fn main() {
    let Some((args, runs)) = bench_args("u2net_shapes") else {
        return;
    };
    let device = Device::flex();
    for (name, config) in [
        ("u2net", U2NetConfig::full()),
        ("u2netp", U2NetConfig::small()),
    ] {
        if !wanted(&args, name) {
            continue;
        }
        let model = config.init(&device);
        let x = Tensor::<4>::random([1, 3, 320, 320], Distribution::Normal(0.0, 1.0), &device);
        time(&format!("{name} 320x320"), runs, || {
            let d0 = model.forward(x.clone()).remove(0);
            let _ = d0.into_data();
        });
    }
}
