//! Tensors across the boundary: typed arrays plus a shape, copied into owned buffers on the
//! JS thread and turned into candle tensors on the engine thread.
//!
//! Inputs are copied once, on the JS thread, before the call returns: the engine then never
//! reads JS memory from another thread, and a caller that reuses its array for the next batch
//! while this one is still computing cannot change what is computed. (`Tensor::from_vec`
//! needs an owned buffer anyway, so this is the one copy the boundary costs.) Outputs leave
//! as external `Float32Array`s over the engine's `Vec`, without a copy.

use candle_core::{Device, Tensor};
use napi::bindgen_prelude::{Float32Array, Int32Array};
use napi_derive::napi;

use crate::error::{BindingError, BindingResult};

/// A float tensor as JavaScript holds it (row-major).
#[napi(object)]
pub struct FloatTensor {
    pub data: Float32Array,
    pub shape: Vec<u32>,
}

/// An integer tensor (token ids, masks, labels) as JavaScript holds it (row-major).
#[napi(object)]
pub struct IntTensor {
    pub data: Int32Array,
    pub shape: Vec<u32>,
}

/// A tensor copied out of JavaScript, shape already checked against the data length.
pub struct HostTensor<T> {
    pub name: &'static str,
    pub data: Vec<T>,
    pub shape: Vec<usize>,
}

fn checked_shape(name: &str, shape: &[u32], len: usize) -> BindingResult<Vec<usize>> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            BindingError::invalid_input(format!("{name}: shape {shape:?} is too large"))
        })?;
    if expected != len {
        return Err(BindingError::invalid_input(format!(
            "{name}: shape {shape:?} holds {expected} elements, but data has {len}"
        )));
    }
    Ok(shape)
}

impl HostTensor<f32> {
    pub fn from_js(name: &'static str, t: &FloatTensor) -> BindingResult<Self> {
        let data = t.data.to_vec();
        let shape = checked_shape(name, &t.shape, data.len())?;
        Ok(Self { name, data, shape })
    }
}

impl HostTensor<i32> {
    pub fn from_js(name: &'static str, t: &IntTensor) -> BindingResult<Self> {
        let data = t.data.to_vec();
        let shape = checked_shape(name, &t.shape, data.len())?;
        Ok(Self { name, data, shape })
    }

    /// Token ids or a 0/1 mask, as the engine's `u32`.
    pub fn to_u32(&self, device: &Device) -> BindingResult<Tensor> {
        let data = self
            .data
            .iter()
            .map(|&v| {
                u32::try_from(v).map_err(|_| {
                    BindingError::invalid_input(format!(
                        "{} must not be negative (found {v})",
                        self.name
                    ))
                })
            })
            .collect::<BindingResult<Vec<u32>>>()?;
        Ok(Tensor::from_vec(data, self.shape.as_slice(), device)?)
    }

    /// Labels as the engine's `i64` (−100 marks ignored positions).
    pub fn to_i64(&self, device: &Device) -> BindingResult<Tensor> {
        let data: Vec<i64> = self.data.iter().map(|&v| i64::from(v)).collect();
        Ok(Tensor::from_vec(data, self.shape.as_slice(), device)?)
    }
}

impl HostTensor<f32> {
    pub fn to_tensor(&self, device: &Device) -> BindingResult<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            self.shape.as_slice(),
            device,
        )?)
    }
}

/// Any float tensor of the engine → a `FloatTensor` for JavaScript (f32, on the host).
pub fn to_js(t: &Tensor) -> BindingResult<FloatTensor> {
    let shape = t
        .dims()
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| {
                BindingError::invalid_input(format!("dimension {d} does not fit a JS number array"))
            })
        })
        .collect::<BindingResult<Vec<u32>>>()?;
    let data = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(FloatTensor {
        data: Float32Array::new(data),
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_hold_exactly_the_data() {
        assert_eq!(checked_shape("x", &[2, 3], 6).unwrap(), vec![2, 3]);
        let err = checked_shape("visionX", &[2, 3], 5).unwrap_err();
        assert_eq!(err.code, "ERR_INVALID_INPUT");
        assert_eq!(
            err.message,
            "visionX: shape [2, 3] holds 6 elements, but data has 5"
        );
    }

    #[test]
    fn a_shape_too_large_to_count_is_rejected_not_wrapped() {
        let err = checked_shape("x", &[u32::MAX, u32::MAX, u32::MAX], 0).unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
    }

    #[test]
    fn negative_token_ids_are_rejected() {
        let ids = HostTensor {
            name: "langX",
            data: vec![1, -5],
            shape: vec![1, 2],
        };
        let err = ids.to_u32(&Device::Cpu).unwrap_err();
        assert_eq!(err.message, "langX must not be negative (found -5)");
        let labels = HostTensor {
            name: "labels",
            data: vec![-100, 7],
            shape: vec![1, 2],
        };
        assert_eq!(
            labels
                .to_i64(&Device::Cpu)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap(),
            vec![vec![-100, 7]]
        );
    }
}
