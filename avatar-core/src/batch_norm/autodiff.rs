//! The autodiff implementation: one node keeping the input, the affine parameters and the batch
//! statistics, whose backward pass is [`BatchNormGradient`].

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};

use super::{BatchNormBackend, BatchNormGradient, BatchNormOptions};

impl<B, C> BatchNormBackend for Autodiff<B, C>
where
    B: Backend + BatchNormBackend + BatchNormGradient,
    C: CheckpointStrategy,
{
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: BatchNormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FusedBatchNorm;

        impl<B: Backend + BatchNormGradient> Backward<B, 3> for FusedBatchNorm {
            type State = (
                [NodeId; 3],
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                BatchNormOptions,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (states, mean, variance, options) = ops.state;
                let [x, gamma, beta] =
                    states.map(|state| checkpointer.retrieve_node_output::<FloatTensor<B>>(state));
                let (dx, dgamma, dbeta) = B::fused_batch_norm_train_backward(
                    x, gamma, beta, mean, variance, grad, options,
                );
                for (parent, gradient) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, gradient);
                    }
                }
            }
        }

        match FusedBatchNorm
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let states = [&x, &gamma, &beta].map(|tensor| prep.checkpoint(tensor));
                let (y, mean, variance) = B::fused_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    options,
                );
                let state = (states, mean.clone(), variance.clone(), options);
                (
                    prep.finish(state, y),
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, variance) = B::fused_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    options,
                );
                (
                    prep.finish(y),
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
        }
    }
}
