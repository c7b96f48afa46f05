//! The fused path against burn's `BatchNorm` + activation: values, the three gradients and the
//! running statistics.

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{DType, Device, Tensor, TensorData, Tolerance};

use super::{Activation, batch_norm_activation};
use crate::seed::NormalStream;

const ACTIVATIONS: [Activation; 3] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu { slope: 0.2 },
];

fn norm(channels: usize, epsilon: f64, normal: &mut NormalStream, device: &Device) -> BatchNorm {
    let mut norm = BatchNormConfig::new(channels)
        .with_epsilon(epsilon)
        .with_momentum(0.3)
        .init(device);
    // Scales and shifts away from 1 and 0, so that a swapped or missing affine term shows.
    norm.gamma = Param::from_tensor(normal.tensor([channels], device).add_scalar(1.0));
    norm.beta = Param::from_tensor(normal.tensor([channels], device));
    norm
}

/// `(y, dx, dgamma, dbeta, running mean, running variance)` of `loss = sum(y * r)` for a fixed
/// random `r`, after one forward pass of a copy of `norm`.
fn run<const D: usize>(
    x: &Tensor<D>,
    r: &Tensor<D>,
    norm: &BatchNorm,
    forward: impl Fn(Tensor<D>, &BatchNorm) -> Tensor<D>,
) -> [TensorData; 6] {
    let x = x.clone().require_grad();
    // Clones share their running statistics: each run starts from copies of their values.
    let mut norm = norm.clone();
    norm.running_mean = RunningState::new(norm.running_mean.value());
    norm.running_var = RunningState::new(norm.running_var.value());
    let y = forward(x.clone(), &norm);
    let grads = (y.clone() * r.clone()).sum().backward();
    let param = |p: &Param<Tensor<1>>| p.val().grad(&grads).expect("gradient").into_data();
    [
        y.into_data(),
        x.grad(&grads).expect("input gradient").into_data(),
        param(&norm.gamma),
        param(&norm.beta),
        norm.running_mean.value().into_data(),
        norm.running_var.value().into_data(),
    ]
}

/// The size of the terms summed into each element of dgamma (`g x̂`) and dbeta (`g`), largest
/// over the channels: `max_c Σ |r| (|x̂| + |x| / σ + 1)` (`|x| / σ` bounds the rounding of `x̂`
/// itself). Two summation orders of the same terms differ by a few units of rounding of this
/// sum, however small the sum itself comes out.
fn parameter_gradient_terms<const D: usize>(x: &Tensor<D>, r: &Tensor<D>, epsilon: f64) -> f32 {
    let [batch, channels] = [x.dims()[0] as i32, x.dims()[1] as i32];
    let x = x.clone().reshape([batch, channels, -1]).swap_dims(0, 1);
    let x = x.reshape([channels, -1]);
    let r = r.clone().reshape([batch, channels, -1]).swap_dims(0, 1);
    let r = r.reshape([channels, -1]);
    let centred = x.clone() - x.clone().mean_dim(1);
    let sigma = (centred
        .clone()
        .powi_scalar(2)
        .mean_dim(1)
        .add_scalar(epsilon))
    .sqrt();
    let terms = ((centred / sigma.clone()).abs() + x.abs() / sigma).add_scalar(1.0) * r.abs();
    terms.sum_dim(1).max().into_scalar::<f32>()
}

fn assert_close(ours: &[TensorData], burns: &[TensorData], parameter_terms: f32) {
    let names = [
        "y",
        "dx",
        "dgamma",
        "dbeta",
        "running mean",
        "running variance",
    ];
    for (what, (ours, burns)) in names.iter().zip(ours.iter().zip(burns)) {
        let largest = burns.iter::<f32>().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut absolute = 2e-5 * largest.max(1.0);
        if what.starts_with("dg") || what.starts_with("db") {
            absolute = absolute.max(f32::EPSILON * parameter_terms);
        }
        let tolerance = Tolerance::<f32>::absolute(absolute).set_relative(1e-4);
        assert_eq!(ours.shape(), burns.shape(), "{what}");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ours.assert_approx_eq(burns, tolerance)
        }))
        .unwrap_or_else(|_| panic!("{what} differs from burn's"));
    }
}

/// (shape, epsilon, offset): odd planes (tail lanes), 1x1 planes, a plane over 4,096 values,
/// a large mean, and the generator's and discriminator's shapes.
const CASES: [([usize; 4], f64, f32); 6] = [
    ([2, 6, 5, 7], 1e-5, 0.0),
    ([16, 8, 1, 1], 1e-5, 0.0),
    ([2, 3, 70, 65], 1e-5, 0.0),
    ([3, 4, 9, 9], 1e-5, 100.0),
    ([4, 16, 4, 4], 1e-5, 0.0),
    ([2, 4, 12, 12], 1e-3, 0.0),
];

#[test]
fn matches_burns_batch_norm_and_activations_with_gradients_and_running_statistics() {
    let device = Device::flex().autodiff();
    let mut normal = NormalStream::new(41);
    for (shape, epsilon, offset) in CASES {
        let x = normal.tensor(shape, &device).add_scalar(offset);
        let r = normal.tensor(shape, &device);
        let norm = norm(shape[1], epsilon, &mut normal, &device);
        let terms = parameter_gradient_terms(&x, &r, epsilon);
        for activation in ACTIVATIONS {
            assert_close(
                &run(&x, &r, &norm, |x, norm| {
                    batch_norm_activation(x, norm, activation)
                }),
                &run(&x, &r, &norm, |x, norm| activation.apply(norm.forward(x))),
                terms,
            );
        }
    }
    // Rank 2 (`[N, C]`, as after a linear layer).
    let x = normal.tensor([8, 5], &device);
    let r = normal.tensor([8, 5], &device);
    let norm = norm(5, 1e-5, &mut normal, &device);
    let relu = Activation::Relu;
    assert_close(
        &run(&x, &r, &norm, |x, norm| {
            batch_norm_activation(x, norm, relu)
        }),
        &run(&x, &r, &norm, |x, norm| relu.apply(norm.forward(x))),
        parameter_gradient_terms(&x, &r, 1e-5),
    );
}

#[test]
fn inference_matches_and_other_dtypes_and_evaluation_graphs_keep_burns_path() {
    let mut normal = NormalStream::new(42);
    // Without autodiff: the running statistics (made unlike the initial zeros and ones), which
    // stay as they were; every activation, ranks 4 and 2.
    let device = Device::flex();
    let mut norm = norm(4, 1e-3, &mut normal, &device);
    norm.running_mean = RunningState::new(normal.tensor([4], &device));
    norm.running_var = RunningState::new(normal.tensor([4], &device).abs().add_scalar(0.1));
    let running_mean = norm.running_mean.value().into_data();
    let tolerance = Tolerance::<f32>::absolute(2e-5).set_relative(1e-4);
    for activation in ACTIVATIONS {
        let x = normal.tensor([2, 4, 3, 5], &device);
        batch_norm_activation(x.clone(), &norm, activation)
            .into_data()
            .assert_approx_eq(&activation.apply(norm.forward(x)).into_data(), tolerance);
        let x = normal.tensor([3, 4], &device);
        batch_norm_activation(x.clone(), &norm, activation)
            .into_data()
            .assert_approx_eq(&activation.apply(norm.forward(x)).into_data(), tolerance);
    }
    norm.running_mean
        .value()
        .into_data()
        .assert_eq(&running_mean, true);
    // Evaluation mode in an autodiff graph: burn's own operations (and gradients), same bits.
    let autodiff = Device::flex().autodiff();
    let mut evaluating = norm.clone().to_device(&autodiff);
    evaluating.training = Param::from_bool(false);
    let x = normal.tensor([2, 4, 3, 3], &autodiff);
    batch_norm_activation(x.clone(), &evaluating, Activation::Relu)
        .into_data()
        .assert_eq(
            &Activation::Relu.apply(evaluating.forward(x)).into_data(),
            true,
        );
    // f16 under autodiff: burn's own operations, same values.
    let device = Device::flex().autodiff();
    let mut half = norm.clone().to_device(&device);
    half.gamma = Param::from_tensor(half.gamma.val().cast(DType::F16));
    half.beta = Param::from_tensor(half.beta.val().cast(DType::F16));
    half.running_mean = RunningState::new(half.running_mean.value().cast(DType::F16));
    half.running_var = RunningState::new(half.running_var.value().cast(DType::F16));
    let x = normal.tensor([2, 4, 3, 3], &device).cast(DType::F16);
    let ours = batch_norm_activation(x.clone(), &half.clone(), Activation::Identity);
    assert_eq!(ours.dtype(), DType::F16);
    ours.into_data()
        .assert_eq(&half.forward(x).into_data(), true);
}

#[test]
fn frozen_parameters_get_no_gradient_and_strided_gradients_are_read() {
    let device = Device::flex().autodiff();
    let mut normal = NormalStream::new(43);
    let norm = norm(4, 1e-5, &mut normal, &device).no_grad();
    let x = normal.tensor([3, 4, 3, 3], &device).require_grad();
    let slope = Activation::LeakyRelu { slope: 0.2 };
    // `sum`'s gradient is a broadcast (non-contiguous) tensor: the kernel's copying path.
    let grads = batch_norm_activation(x.clone(), &norm, slope)
        .sum()
        .backward();
    let burns = slope.apply(norm.forward(x.clone())).sum().backward();
    x.grad(&grads)
        .expect("input gradient")
        .into_data()
        .assert_approx_eq(
            &x.grad(&burns).unwrap().into_data(),
            Tolerance::<f32>::absolute(2e-5).set_relative(1e-4),
        );
    assert!(norm.gamma.val().grad(&grads).is_none());
    // A transposed input (made contiguous by the reshape before the kernel).
    let x = normal.tensor([2, 3, 4, 4], &device).swap_dims(1, 3);
    let norm = self::norm(4, 1e-5, &mut normal, &device);
    batch_norm_activation(x.clone(), &norm.clone(), Activation::Relu)
        .into_data()
        .assert_approx_eq(
            &Activation::Relu.apply(norm.forward(x)).into_data(),
            Tolerance::<f32>::absolute(2e-5).set_relative(1e-4),
        );
}

#[test]
fn the_relu_form_of_leaky_relu_has_the_same_values_and_gradients() {
    let device = Device::flex().autodiff();
    let x = NormalStream::new(44)
        .tensor([2, 3, 5, 5], &device)
        .require_grad();
    let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let y = f(x.clone());
        let grads = (y.clone() * y.clone()).sum().backward();
        (y.into_data(), x.grad(&grads).expect("gradient").into_data())
    };
    let ours = run(&|t| Activation::LeakyRelu { slope: 0.2 }.apply(t));
    let reference = run(&|t| burn::tensor::activation::leaky_relu(t, 0.2));
    let tolerance = Tolerance::<f32>::absolute(1e-6);
    ours.0.assert_approx_eq(&reference.0, tolerance);
    ours.1.assert_approx_eq(&reference.1, tolerance);
}
