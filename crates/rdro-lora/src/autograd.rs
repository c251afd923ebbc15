//! Pairing a result computed without a graph with a hand-written backward.
//!
//! candle's fastest kernels (softmax, rms-norm, rope, quantized matmul) have no backward, and its
//! matmul backward always computes the gradient of *both* operands. Both problems have the same
//! cure: compute the output on detached inputs, then glue it to the input with a binary custom op
//! whose forward is a copy of that output and whose backward is supplied by the caller.

use std::sync::Arc;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Tensor,
};

/// Input gradient of an op: `(input, output, output_gradient) -> input_gradient`.
pub type BackwardFn = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

struct WithBackward {
    name: &'static str,
    backward: Box<BackwardFn>,
}

/// Copies `storage` (under `layout`) into a new contiguous storage on the same device.
fn copy_contiguous<S>(storage: &S, layout: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = layout.shape().clone();
    // SAFETY: every element of the new storage is written by `copy_strided_src` below.
    let mut out = unsafe { storage.device().alloc_uninit(&shape, storage.dtype())? };
    storage.copy_strided_src(&mut out, 0, layout)?;
    Ok((out, shape))
}

impl CustomOp2 for WithBackward {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        out: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_contiguous(out, layout)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        out: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        copy_contiguous(out, layout)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        out: &MetalStorage,
        layout: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        copy_contiguous(out, layout)
    }

    fn bwd(
        &self,
        input: &Tensor,
        _: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.backward)(input, output, grad_output)?), None))
    }
}

/// Returns `output` connected to `input` in the autograd graph, with `backward` as the rule that
/// turns the output gradient into the input gradient.
///
/// `output` must have been computed from `input` without a graph (on `input.detach()`, or by a
/// kernel without backward). When `input` is not tracked (no trainable parameter upstream, e.g. a
/// reference forward with the adapter off) nothing is copied and `output` is returned as is.
pub fn attach_backward(
    name: &'static str,
    input: &Tensor,
    output: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(output);
    }
    let op = WithBackward {
        name,
        backward: Box::new(backward),
    };
    input.apply_op2_arc(&output.detach(), Arc::new(Box::new(op)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn custom_backward_reaches_the_input() -> Result<()> {
        let x = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu)?;
        let y = (x.as_tensor().detach() * 2.0)?;
        let y = attach_backward("double", x.as_tensor(), y, |_, _, g| g * 2.0)?;
        assert_eq!(y.to_vec1::<f32>()?, vec![2.0, 4.0, 6.0]);
        let loss = (y.sqr()?.sum_all())?;
        let grads = loss.backward()?;
        // d/dx sum((2x)^2) = 8x
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![8.0, 16.0, 24.0]);
        Ok(())
    }

    #[test]
    fn untracked_input_builds_no_graph() -> Result<()> {
        let x = Tensor::new(&[1.0f32], &Device::Cpu)?;
        let y = attach_backward("id", &x, x.clone(), |_, _, g| Ok(g.clone()))?;
        assert!(!y.track_op());
        Ok(())
    }
}
