//! A frozen `Linear` under a tracked input gives the input the same gradient as candle's
//! matmul, and leaves no weight-sized gradient in the store (candle-napi-notes §B5).

use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor, Var};
use flamingo_core::nn::{Linear, MATERIALISE_FROZEN_WEIGHT_GRADS};

fn setup() -> (Var, Linear) {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 7, &dev).unwrap();
    (x, Linear::new(w, Some(b)))
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn frozen_linear_matches_plain_matmul_and_keeps_no_weight_gradient() {
    let (x, lin) = setup();
    // Both paths in one test: the switch is process-global.
    MATERIALISE_FROZEN_WEIGHT_GRADS.store(true, Ordering::SeqCst);
    let y_plain = lin.forward(x.as_tensor()).unwrap();
    let loss_plain = (y_plain.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
    let g_plain = loss_plain.backward().unwrap();
    MATERIALISE_FROZEN_WEIGHT_GRADS.store(false, Ordering::SeqCst);

    let y = lin.forward(x.as_tensor()).unwrap();
    let loss = (y.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
    let g = loss.backward().unwrap();

    assert_eq!(y.dims(), [2, 3, 7]);
    assert_eq!(bits(&y), bits(&y_plain), "forward differs from matmul");
    assert_eq!(
        bits(g.get(x.as_tensor()).unwrap()),
        bits(g_plain.get(x.as_tensor()).unwrap()),
        "input gradient differs from matmul's"
    );
    // candle's matmul stores a gradient for the weight's transposed view (7×5); the frozen
    // path stores nothing of that shape.
    let weight_sized = |s: &candle_core::backprop::GradStore| {
        s.get_ids()
            .filter(|&&id| s.get_id(id).unwrap().dims() == [5, 7])
            .count()
    };
    assert_eq!(
        weight_sized(&g_plain),
        1,
        "candle's matmul keeps a weight gradient"
    );
    assert_eq!(
        weight_sized(&g),
        0,
        "the frozen weight got a gradient buffer"
    );
}

#[test]
fn trainable_weights_and_untracked_inputs_keep_the_plain_path() {
    let dev = Device::Cpu;
    let w = Var::randn(0f32, 1.0, (4, 3), &dev).unwrap();
    let lin = Linear::new(w.as_tensor().clone(), None);
    let x = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
    let y = lin.forward(&x).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let gw = g.get(w.as_tensor()).expect("trainable weight gradient");
    // d(sum x Wᵀ)/dW[o, i] = Σ_rows x[row, i]
    let want = x.sum_keepdim(0).unwrap().broadcast_as((4, 3)).unwrap();
    let diff = (gw - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);

    // Inference: nothing tracked, plain tensors out.
    let frozen = Linear::new(Tensor::ones((4, 3), DType::F32, &dev).unwrap(), None);
    let y = frozen.forward(&x).unwrap();
    assert!(!y.track_op());
}
