use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// Moves every parameter (and running statistic) of `average` towards the one with the same
/// [`ParamId`] in `current`: `average = decay * average + (1 - decay) * current`.
///
/// `average` must be a clone of `current` (same ids), typically on the non-autodiff device.
pub fn ema_update<M: Module>(average: M, current: &M, decay: f64) -> M {
    let mut collector = Collect::default();
    current.visit(&mut collector);
    let mut mapper = Blend {
        values: collector.values,
        decay,
    };
    average.map(&mut mapper)
}

#[derive(Default)]
struct Collect {
    values: HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().detach();
        let n = value.shape().num_elements();
        self.values
            .insert(param.id, value.without_autodiff().reshape([n]));
    }
}

struct Blend {
    values: HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.values.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|average| {
            let dims = average.dims();
            let device = average.device();
            average.mul_scalar(decay)
                + current
                    .to_device(&device)
                    .reshape(dims)
                    .mul_scalar(1.0 - decay)
        })
    }
}
