//! Reproducible weight initialisation for training runs.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use crate::seed::NormalStream;

/// Standard deviation of DCGAN's initialisation, N(0, 0.02).
const DCGAN_INIT_STD: f32 = 0.02;

/// Redraws every randomly initialised parameter of `module` (DCGAN's N(0, 0.02)) from a stream
/// seeded with `seed`, visiting parameters in module order.
///
/// burn's initialisers draw from one RNG shared by the whole process, so two runs seeded alike
/// start from different weights as soon as anything else in the process (another trainer, a test,
/// a server request) draws random numbers meanwhile. Constant parameters and buffers (biases at
/// zero, batch-norm scales at one, running statistics: all zeros or all ones) are kept.
pub(crate) fn redraw_random_init<M: Module>(module: M, seed: u64) -> M {
    struct Redraw(NormalStream);
    impl ModuleMapper for Redraw {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|tensor| {
                let values = tensor
                    .to_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .expect("float parameters convert to f32");
                let constant = values.iter().all(|&v| v == values[0]);
                if values.is_empty() || (constant && (values[0] == 0.0 || values[0] == 1.0)) {
                    return tensor;
                }
                let drawn: Vec<f32> = self
                    .0
                    .take_vec(values.len())
                    .into_iter()
                    .map(|v| v * DCGAN_INIT_STD)
                    .collect();
                let require_grad = tensor.is_require_grad();
                Tensor::from_data(TensorData::new(drawn, tensor.shape()), &tensor.device())
                    .set_require_grad(require_grad)
            })
        }
    }
    module.map(&mut Redraw(NormalStream::new(seed)))
}
