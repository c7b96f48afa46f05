//! Spectral normalisation of a convolution's weight (Miyato et al. 2018, "Spectral Normalization
//! for Generative Adversarial Networks"), for the discriminator.
//!
//! The weight `W` (`[out, in, kh, kw]`, seen as an `out x (in kh kw)` matrix) is used as
//! `W / sigma` with `sigma = uᵀ W v`, the largest singular value estimated from running singular
//! vectors `u`, `v`. Like PyTorch's `torch.nn.utils.spectral_norm`, one power iteration on the
//! detached weight refines `u` and `v` per training step, and gradients flow through `sigma` to
//! `W` with `u` and `v` held constant.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

/// Keeps a vector off zero when it is normalised.
const EPSILON: f64 = 1e-12;

/// Running estimates of a weight's leading left and right singular vectors (not trained: no
/// gradient reaches them; they are saved in checkpoints so a resumed run continues exactly).
#[derive(Module, Debug)]
pub struct SpectralNorm {
    /// Left singular vector, `[out]`.
    pub u: Param<Tensor<1>>,
    /// Right singular vector, `[in * kh * kw]`.
    pub v: Param<Tensor<1>>,
}

impl SpectralNorm {
    /// Random unit vectors for a weight of shape `[out, in, kh, kw]`.
    pub fn new(weight_dims: [usize; 4], device: &Device) -> Self {
        let [out, input, kh, kw] = weight_dims;
        let unit = |n: usize| {
            let random = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), device);
            Param::from_tensor(normalise(random)).set_require_grad(false)
        };
        SpectralNorm {
            u: unit(out),
            v: unit(input * kh * kw),
        }
    }

    /// One power iteration on the (detached) `weight`: `v = Wᵀu / |Wᵀu|`, `u = Wv / |Wv|`.
    pub fn power_iteration(self, weight: Tensor<4>) -> Self {
        let matrix = weight.detach().flatten::<2>(1, 3);
        let u = self.u.val().detach();
        let v = normalise(matvec(matrix.clone().transpose(), u));
        let u = normalise(matvec(matrix, v.clone()));
        let keep = |param: Param<Tensor<1>>, value: Tensor<1>| {
            param.map(|_| value.detach()).set_require_grad(false)
        };
        SpectralNorm {
            u: keep(self.u, u),
            v: keep(self.v, v),
        }
    }

    /// The estimated largest singular value `uᵀ W v` of `weight` (differentiable in `weight`;
    /// `u` and `v` taken as unit vectors, so vectors never iterated, e.g. redrawn at
    /// initialisation, still give a proper estimate).
    pub fn sigma(&self, weight: Tensor<4>) -> Tensor<1> {
        let matrix = weight.flatten::<2>(1, 3);
        let (u, v) = (
            normalise(self.u.val().detach()),
            normalise(self.v.val().detach()),
        );
        (matvec(matrix, v) * u).sum()
    }

    /// `weight / sigma(weight)`.
    pub fn normalise_weight(&self, weight: Tensor<4>) -> Tensor<4> {
        let sigma = self.sigma(weight.clone()).reshape([1, 1, 1, 1]);
        weight / sigma
    }
}

/// `matrix @ vector`.
fn matvec(matrix: Tensor<2>, vector: Tensor<1>) -> Tensor<1> {
    matrix
        .matmul(vector.unsqueeze_dim::<2>(1))
        .squeeze_dim::<1>(1)
}

/// `x / max(|x|, eps)`.
fn normalise(x: Tensor<1>) -> Tensor<1> {
    let norm = x.clone().powi_scalar(2).sum().sqrt().clamp_min(EPSILON);
    x / norm
}

#[cfg(test)]
mod tests {
    use burn::tensor::{TensorData, Tolerance};

    use super::*;

    #[test]
    fn power_iteration_finds_the_largest_singular_value_and_normalises_to_one() {
        let device = Device::default();
        // Rows scaled so that the singular values are known: diag(3, 2, 1) padded with zeros.
        let mut values = vec![0f32; 3 * 2 * 2 * 2];
        values[0] = 3.0;
        values[8 + 1] = 2.0;
        values[16 + 2] = 1.0;
        let weight = Tensor::<4>::from_data(TensorData::new(values, [3, 2, 2, 2]), &device);
        let mut spectral = SpectralNorm::new([3, 2, 2, 2], &device);
        for _ in 0..30 {
            spectral = spectral.power_iteration(weight.clone());
        }
        let sigma = spectral.sigma(weight.clone()).into_scalar::<f32>();
        assert!((sigma - 3.0).abs() < 1e-4, "sigma {sigma}");
        // Scaled singular vectors (as a random re-initialisation leaves them) give the same sigma.
        let scaled = SpectralNorm {
            u: spectral.u.clone().map(|u| u.mul_scalar(0.02)),
            v: spectral.v.clone().map(|v| v.mul_scalar(0.02)),
        };
        let same = scaled.sigma(weight.clone()).into_scalar::<f32>();
        assert!(
            (same - sigma).abs() < 1e-4,
            "sigma of scaled vectors {same}"
        );
        // The normalised matrix has spectral norm 1: its largest singular value, re-estimated.
        let normalised = spectral.normalise_weight(weight);
        let mut check = SpectralNorm::new([3, 2, 2, 2], &device);
        for _ in 0..30 {
            check = check.power_iteration(normalised.clone());
        }
        let one = check.sigma(normalised).into_scalar::<f32>();
        assert!(
            (one - 1.0).abs() < 1e-4,
            "sigma of the normalised weight {one}"
        );
    }

    #[test]
    fn gradients_reach_the_weight_but_not_the_singular_vectors() {
        let device = Device::default().autodiff();
        let weight = Tensor::<4>::random([4, 3, 2, 2], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let spectral = SpectralNorm::new([4, 3, 2, 2], &device).power_iteration(weight.clone());
        let grads = spectral
            .normalise_weight(weight.clone())
            .powi_scalar(2)
            .sum()
            .backward();
        let gradient = weight.grad(&grads).expect("the weight has a gradient");
        assert!(gradient.abs().sum().into_scalar::<f32>() > 0.0);
        assert!(spectral.u.val().grad(&grads).is_none());
        assert!(spectral.v.val().grad(&grads).is_none());
        // Unit vectors after an iteration.
        let norm = |t: Tensor<1>| t.powi_scalar(2).sum().sqrt().into_scalar::<f32>();
        let tolerance = Tolerance::<f32>::absolute(1e-5);
        TensorData::from([norm(spectral.u.val())])
            .assert_approx_eq(&TensorData::from([1f32]), tolerance);
        TensorData::from([norm(spectral.v.val())])
            .assert_approx_eq(&TensorData::from([1f32]), tolerance);
    }
}
