//! The autodiff implementation: one node keeping the input and affine parameters, whose backward
//! pass is [`GroupNormGradient`].

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};

use super::{GroupNormBackend, GroupNormGradient, GroupNormOptions};

impl<B, C> GroupNormBackend for Autodiff<B, C>
where
    B: Backend + GroupNormBackend + GroupNormGradient,
    C: CheckpointStrategy,
{
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedGroupNorm;

        impl<B: Backend + GroupNormGradient> Backward<B, 3> for FusedGroupNorm {
            type State = ([NodeId; 3], GroupNormOptions);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (states, options) = ops.state;
                let [x, gamma, beta] =
                    states.map(|state| checkpointer.retrieve_node_output::<FloatTensor<B>>(state));
                let (dx, dgamma, dbeta) =
                    B::fused_group_norm_backward(x, gamma, beta, grad, options);
                for (parent, gradient) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, gradient);
                    }
                }
            }
        }

        match FusedGroupNorm
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let states = [&x, &gamma, &beta].map(|tensor| prep.checkpoint(tensor));
                let y = B::fused_group_norm(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    options,
                );
                prep.finish((states, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_group_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                options,
            )),
        }
    }
}
