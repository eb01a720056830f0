//! Masked and gated cross-attention (OpenFlamingo helpers.py `MaskedCrossAttention` and
//! `GatedCrossAttentionBlock`; spec §3.4, §3.5): text hidden states attend to the resampled
//! image latents, each token only to the image it belongs to, through tanh-gated residuals.
//!
//! The media keys/values are a separate value ([`MediaKv`]) computed once per set of images,
//! so the prompt pass and every cached decode step reuse them; which image a token belongs
//! to (`text_time`) is an explicit argument rather than state set on the layer beforehand.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::flamingo::config::CrossAttnConfig;
use crate::flamingo::perceiver::{merge_heads, split_heads, FeedForward, InitRng, LN_EPS};
use crate::io::Weights;
use crate::nn::{softmax_last_dim, LayerNorm, Linear};
use crate::{Error, Result};

/// A block's media keys/values, computed once per set of images and reused for every text
/// token / decode step.
#[derive(Clone, Debug)]
pub struct MediaKv {
    /// (B, heads, T_img·n, dim_head)
    pub k: Tensor,
    /// (B, heads, T_img·n, dim_head)
    pub v: Tensor,
    /// T_img: images per sample.
    pub num_media: usize,
    /// n: latents per image (64 in OpenFlamingo).
    pub latents_per_media: usize,
    /// `(1, 1, T_img·n)` u32: the 1-based image index of each latent. With `fill`, built
    /// once per media rather than in every layer at every decode step, where each host copy
    /// would stall the GPU queue.
    pub media_time: Tensor,
    /// `-finfo(dtype).max` as a scalar in the keys' dtype: the masked-score fill.
    pub fill: Tensor,
}

/// `MaskedCrossAttention`: LayerNorm on the text side only (the media is not normalised
/// here), 8 heads × 64 regardless of either width, bias-free projections.
struct MaskedCrossAttention {
    norm: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    only_attend_immediate_media: bool,
}

/// The most negative finite value of `dtype`: the reference fills masked scores with
/// `-torch.finfo(dtype).max`, not −inf, which decides what fully masked rows do (§3.4).
fn most_negative(dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(match dtype {
        DType::F64 => Tensor::new(-f64::MAX, device)?,
        DType::F16 => Tensor::new(-half::f16::MAX, device)?,
        DType::BF16 => Tensor::new(-half::bf16::MAX, device)?,
        _ => Tensor::new(-f32::MAX, device)?.to_dtype(dtype)?,
    })
}

impl MaskedCrossAttention {
    /// The attention branch alone (before the gate): x (B, T, D) → (B, T, D).
    fn forward(&self, x: &Tensor, media: &MediaKv, text_time: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let s = media.num_media * media.latents_per_media;
        let xn = self.norm.forward(x)?;
        let q = (split_heads(&self.to_q.forward(&xn)?, self.heads)?
            * (self.dim_head as f64).powf(-0.5))?;
        let out = if s == 0 {
            // No images at all: nothing to attend to, so the branch contributes nothing
            // (the reference cannot run without images; this is the natural limit).
            Tensor::zeros((b, t, self.heads * self.dim_head), x.dtype(), x.device())?
        } else {
            let sim = q.matmul(&media.k.t()?)?; // (B, H, T, S)

            let tt = text_time.unsqueeze(2)?; // (B, T, 1)
            let allowed = if self.only_attend_immediate_media {
                tt.broadcast_eq(&media.media_time)?
            } else {
                tt.broadcast_ge(&media.media_time)?
            };
            let shape = sim.shape().clone();
            let allowed = allowed.unsqueeze(1)?.broadcast_as(&shape)?;
            // `where_cond`, not an additive bias: like `masked_fill`, masked scores get no
            // gradient, which matters for fully masked rows (uniform, yet not trained).
            let fill = media.fill.broadcast_as(&shape)?;
            let attn = softmax_last_dim(&allowed.where_cond(&sim, &fill)?)?;
            let out = merge_heads(&attn.matmul(&media.v)?)?; // (B, T, inner)
            if self.only_attend_immediate_media {
                // Tokens before the first image (text_time 0) get exactly nothing; their
                // otherwise-uniform row is zeroed (spec §3.4). Zeroing the row's output is the
                // same as zeroing its weights, and smaller.
                let keep = text_time.ne(0u32)?.to_dtype(out.dtype())?.unsqueeze(2)?;
                out.broadcast_mul(&keep)?
            } else {
                // The reference zeroes only in immediate mode: in `ge` mode a token before
                // the first image keeps its uniform average over all media.
                out
            }
        };
        self.to_out.forward(&out)
    }
}

/// `GatedCrossAttentionBlock`: `x += tanh(attn_gate)·attn(x)`, then
/// `x += tanh(ff_gate)·ff(x)` on every token. Both gates start at 0 (identity).
pub struct GatedCrossAttentionBlock {
    attn: MaskedCrossAttention,
    /// Shape [1].
    attn_gate: Tensor,
    ff: FeedForward,
    /// Shape [1].
    ff_gate: Tensor,
    dim: usize,
    dim_visual: usize,
}

impl GatedCrossAttentionBlock {
    /// `w` rooted at one block (`attn.norm.*`, `attn.to_q.weight`, `attn.to_kv.weight`,
    /// `attn.to_out.weight`, `attn_gate`, `ff.0.*`, `ff.1.weight`, `ff.3.weight`, `ff_gate`).
    /// dim = LM width, dim_visual = vision width.
    pub fn load(w: &Weights, dim: usize, dim_visual: usize, cfg: &CrossAttnConfig) -> Result<Self> {
        if cfg.heads == 0 || cfg.dim_head == 0 {
            return Err(Error::InvalidInput(format!(
                "cross-attention heads and dim_head must be positive, got {cfg:?}"
            )));
        }
        let inner = cfg.heads * cfg.dim_head;
        let a = w.pp("attn");
        Ok(Self {
            attn: MaskedCrossAttention {
                norm: LayerNorm::load(&a, "norm", dim, LN_EPS, true)?,
                to_q: Linear::load(&a, "to_q", dim, inner, false)?,
                to_kv: Linear::load(&a, "to_kv", dim_visual, 2 * inner, false)?,
                to_out: Linear::load(&a, "to_out", inner, dim, false)?,
                heads: cfg.heads,
                dim_head: cfg.dim_head,
                only_attend_immediate_media: cfg.only_attend_immediate_media,
            },
            attn_gate: w.get(1, "attn_gate")?,
            ff: FeedForward::load(&w.pp("ff"), dim, cfg.ff_mult)?,
            ff_gate: w.get(1, "ff_gate")?,
            dim,
            dim_visual,
        })
    }

    /// Fresh init (gates 0.0 so the block is the identity), keyed like `load` expects.
    pub fn init_tensors(
        dim: usize,
        dim_visual: usize,
        cfg: &CrossAttnConfig,
        seed: u64,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut rng = InitRng::new(seed);
        let inner = cfg.heads * cfg.dim_head;
        let mut out = HashMap::new();
        rng.layer_norm("attn.norm", dim, device, &mut out)?;
        out.insert("attn.to_q.weight".into(), rng.linear(inner, dim, device)?);
        out.insert(
            "attn.to_kv.weight".into(),
            rng.linear(2 * inner, dim_visual, device)?,
        );
        out.insert("attn.to_out.weight".into(), rng.linear(dim, inner, device)?);
        out.insert("attn_gate".into(), Tensor::zeros(1, DType::F32, device)?);
        FeedForward::init_tensors(&mut rng, "ff.", dim, cfg.ff_mult, device, &mut out)?;
        out.insert("ff_gate".into(), Tensor::zeros(1, DType::F32, device)?);
        Ok(out)
    }

    /// media (B, T_img, n, Dv) → K/V via `to_kv` (K = the first heads·dim_head outputs, V the
    /// rest; heads h-major: channel c → head c / dim_head).
    pub fn media_kv(&self, media: &Tensor) -> Result<MediaKv> {
        let dims = media.dims();
        if dims.len() != 4 || dims[3] != self.dim_visual {
            return Err(Error::InvalidInput(format!(
                "cross-attention media must have shape (B, T_img, latents, {}), got {dims:?}",
                self.dim_visual
            )));
        }
        let (b, t_img, n) = (dims[0], dims[1], dims[2]);
        let inner = self.attn.heads * self.attn.dim_head;
        let media = media.to_dtype(self.attn.to_kv.weight.dtype())?.reshape((
            b,
            t_img * n,
            self.dim_visual,
        ))?;
        let kv = self.attn.to_kv.forward(&media)?;
        // Each image's latents share one 1-based time.
        let media_time: Vec<u32> = (0..t_img * n).map(|j| (j / n) as u32 + 1).collect();
        Ok(MediaKv {
            k: split_heads(&kv.narrow(2, 0, inner)?, self.attn.heads)?,
            v: split_heads(&kv.narrow(2, inner, inner)?, self.attn.heads)?,
            num_media: t_img,
            latents_per_media: n,
            media_time: Tensor::from_vec(media_time, (1, 1, t_img * n), media.device())?,
            fill: most_negative(kv.dtype(), kv.device())?,
        })
    }

    /// x (B, T_txt, D); text_time (B, T_txt) u32 — for each text token the 1-based index of
    /// the image it belongs to (0 = before any image), computed by the caller (inclusive
    /// cumsum of `<image>` in a prefill, so the `<image>` token sees its own image; the
    /// prompt's image count for cached decode steps).
    ///
    /// Token i may attend to image j when `text_time == j` (only_attend_immediate_media) or
    /// `text_time >= j` otherwise. Masked scores are `-finfo.max`, so a fully masked row with
    /// text_time > 0 (more `<image>` tokens than images) averages all media uniformly, as the
    /// reference does; rows with text_time 0 get zero attention output in immediate mode.
    /// The feed-forward runs on every token.
    pub fn forward(&self, x: &Tensor, media: &MediaKv, text_time: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3().map_err(|_| {
            Error::InvalidInput(format!(
                "cross-attention input must be (B, T, {}), got {:?}",
                self.dim,
                x.dims()
            ))
        })?;
        if d != self.dim {
            return Err(Error::InvalidInput(format!(
                "cross-attention input width is {d}, but the block was built for {}",
                self.dim
            )));
        }
        if text_time.dims() != [b, t] {
            return Err(Error::InvalidInput(format!(
                "text_time must have shape ({b}, {t}) to match the text, got {:?}",
                text_time.dims()
            )));
        }
        let media_b = media.k.dim(0)?;
        if media_b != b {
            return Err(Error::InvalidInput(format!(
                "media keys/values were computed for batch {media_b}, but the text has batch {b} \
                 (repeat the images per beam before media_kv)"
            )));
        }
        let text_time = if text_time.dtype() == DType::U32 {
            text_time.clone()
        } else if text_time.dtype().is_int() {
            text_time.to_dtype(DType::U32)?
        } else {
            return Err(Error::InvalidInput(format!(
                "text_time must be an integer tensor, got {:?}",
                text_time.dtype()
            )));
        };
        let attn = self.attn.forward(x, media, &text_time)?;
        let x = (x + attn.broadcast_mul(&self.attn_gate.tanh()?)?)?;
        let ff = self.ff.forward(&x)?;
        Ok((&x + ff.broadcast_mul(&self.ff_gate.tanh()?)?)?)
    }

    /// The LM width this block runs at.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The media width its keys/values are computed from.
    pub fn dim_visual(&self) -> usize {
        self.dim_visual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{IndexOp, Var};

    const DIM: usize = 6;
    const DV: usize = 5;

    fn cfg(immediate: bool) -> CrossAttnConfig {
        CrossAttnConfig {
            heads: 2,
            dim_head: 3,
            ff_mult: 2,
            only_attend_immediate_media: immediate,
        }
    }

    fn tensors(seed: u64, gates: (f32, f32)) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut t =
            GatedCrossAttentionBlock::init_tensors(DIM, DV, &cfg(true), seed, &dev).unwrap();
        t.insert("attn_gate".into(), Tensor::new(&[gates.0], &dev).unwrap());
        t.insert("ff_gate".into(), Tensor::new(&[gates.1], &dev).unwrap());
        // Non-trivial norm affine parameters, so the test exercises them too.
        let mut rng = InitRng::new(seed + 100);
        for name in ["attn.norm", "ff.0"] {
            let w = ((rng.randn(1, DIM, &dev).unwrap().squeeze(0).unwrap() * 0.1).unwrap() + 1.0)
                .unwrap();
            let b = (rng.randn(1, DIM, &dev).unwrap().squeeze(0).unwrap() * 0.1).unwrap();
            t.insert(format!("{name}.weight"), w);
            t.insert(format!("{name}.bias"), b);
        }
        t
    }

    fn block(tensors: HashMap<String, Tensor>, immediate: bool) -> GatedCrossAttentionBlock {
        let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
        GatedCrossAttentionBlock::load(&w, DIM, DV, &cfg(immediate)).unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        InitRng::new(seed)
            .randn(1, n, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn mat(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
    }

    fn matvec(w: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
        w.iter()
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn layer_norm(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        x.iter()
            .zip(w.iter().zip(b))
            .map(|(v, (w, b))| (v - mean) / (var + LN_EPS).sqrt() * w + b)
            .collect()
    }

    fn vec1(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
    }

    /// A per-token, per-head loop transcription of the reference's MaskedCrossAttention
    /// (spec §3.4), in f64, returning the attention branch before its gate.
    fn naive_attention(
        t: &HashMap<String, Tensor>,
        x: &[f64],
        media: &[Vec<f64>], // T_img·n rows of width DV
        n: usize,
        text_time: u32,
        immediate: bool,
    ) -> Vec<f64> {
        let (heads, dh) = (2, 3);
        let inner = heads * dh;
        let xn = layer_norm(
            x,
            &vec1(&t["attn.norm.weight"]),
            &vec1(&t["attn.norm.bias"]),
        );
        let q = matvec(&mat(&t["attn.to_q.weight"]), &xn);
        let kv: Vec<Vec<f64>> = media
            .iter()
            .map(|m| matvec(&mat(&t["attn.to_kv.weight"]), m))
            .collect();
        let mut merged = vec![0.0; inner];
        for h in 0..heads {
            let scores: Vec<f64> = kv
                .iter()
                .enumerate()
                .map(|(j, kvj)| {
                    let mt = (j / n) as u32 + 1;
                    let ok = if immediate {
                        text_time == mt
                    } else {
                        text_time >= mt
                    };
                    if ok {
                        (0..dh)
                            .map(|c| q[h * dh + c] / (dh as f64).sqrt() * kvj[h * dh + c])
                            .sum()
                    } else {
                        -(f32::MAX as f64)
                    }
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, kvj) in kv.iter().enumerate() {
                for c in 0..dh {
                    merged[h * dh + c] += e[j] / z * kvj[inner + h * dh + c];
                }
            }
        }
        if immediate && text_time == 0 {
            merged.iter_mut().for_each(|v| *v = 0.0);
        }
        matvec(&mat(&t["attn.to_out.weight"]), &merged)
    }

    /// Runs the block with only its attention branch open (ff gate 0), returning
    /// `(out − x) / tanh(attn_gate)` per token, i.e. the attention branch itself.
    fn attention_branch(
        t: &HashMap<String, Tensor>,
        immediate: bool,
        x: &Tensor,
        media: &Tensor,
        text_time: &[u32],
    ) -> Vec<Vec<f32>> {
        let mut t = t.clone();
        t.insert(
            "attn_gate".into(),
            Tensor::new(&[0.5f32], &Device::Cpu).unwrap(),
        );
        t.insert(
            "ff_gate".into(),
            Tensor::new(&[0f32], &Device::Cpu).unwrap(),
        );
        let blk = block(t, immediate);
        let kv = blk.media_kv(media).unwrap();
        let tt = Tensor::new(text_time, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = blk.forward(x, &kv, &tt).unwrap();
        let branch = ((out - x).unwrap() / (0.5f64).tanh()).unwrap();
        rows(&branch.i(0).unwrap())
    }

    fn media_rows(media: &Tensor) -> Vec<Vec<f64>> {
        let (_, t, n, dv) = media.dims4().unwrap();
        mat(&media.reshape((t * n, dv)).unwrap())
    }

    #[test]
    fn attention_matches_a_loop_transcription_of_the_reference_in_both_mask_modes() {
        let t = tensors(11, (0.5, 0.0));
        let x = randn(&[1, 6, DIM], 1);
        let media = randn(&[1, 3, 4, DV], 2);
        let times = [0u32, 1, 1, 2, 3, 5];
        for immediate in [true, false] {
            let got = attention_branch(&t, immediate, &x, &media, &times);
            let xs = mat(&x.i(0).unwrap());
            for (i, &tt) in times.iter().enumerate() {
                let want = naive_attention(&t, &xs[i], &media_rows(&media), 4, tt, immediate);
                for (g, w) in got[i].iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5,
                        "immediate={immediate} token {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn tokens_before_the_first_image_get_no_attention_but_still_the_gated_ff() {
        let t = tensors(3, (0.7, -0.4));
        let blk = block(t.clone(), true);
        let x = randn(&[1, 3, DIM], 4);
        let kv = blk.media_kv(&randn(&[1, 2, 4, DV], 5)).unwrap();
        let tt = Tensor::new(&[[0u32, 0, 1]], &Device::Cpu).unwrap();
        let out = blk.forward(&x, &kv, &tt).unwrap();
        // Expected for text_time 0: x + tanh(ff_gate)·ff(x), bit for bit.
        let ff = blk.ff.forward(&x).unwrap();
        let want = (&x + (ff * (-0.4f64).tanh()).unwrap()).unwrap();
        let before = out.narrow(1, 0, 2).unwrap();
        assert_eq!(max_abs(&before, &want.narrow(1, 0, 2).unwrap()), 0.0);
        // The FF really contributes, and the token after the image really attends.
        assert!(max_abs(&before, &x.narrow(1, 0, 2).unwrap()) > 1e-3);
        let after = out.narrow(1, 2, 1).unwrap();
        assert!(max_abs(&after, &want.narrow(1, 2, 1).unwrap()) > 1e-3);
    }

    #[test]
    fn the_image_token_attends_to_its_own_image() {
        // With the key rows of to_kv zeroed every score is 0, so attention is exactly the
        // mean of V over the allowed latents: which image a token sees is readable off it.
        let mut t = tensors(21, (0.5, 0.0));
        let kv_w = t["attn.to_kv.weight"].clone();
        let zeros = Tensor::zeros((6, DV), DType::F32, &Device::Cpu).unwrap();
        let v_rows = kv_w.narrow(0, 6, 6).unwrap();
        t.insert(
            "attn.to_kv.weight".into(),
            Tensor::cat(&[&zeros, &v_rows], 0).unwrap(),
        );
        let media = randn(&[1, 2, 3, DV], 22);
        let x = randn(&[1, 1, DIM], 23);
        let m = media_rows(&media);
        let wv = mat(&v_rows);
        let wo = mat(&t["attn.to_out.weight"]);
        let expected_for = |images: &[usize]| -> Vec<f64> {
            let mut mean = vec![0.0; 6];
            let rows: Vec<&Vec<f64>> = images
                .iter()
                .flat_map(|&i| m[(i - 1) * 3..i * 3].iter())
                .collect();
            for r in &rows {
                for (acc, v) in mean.iter_mut().zip(matvec(&wv, r)) {
                    *acc += v / rows.len() as f64;
                }
            }
            matvec(&wo, &mean)
        };
        let check = |got: &[f32], want: Vec<f64>, what: &str| {
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{what}: {g} vs {w}");
            }
        };
        // The <image> token of image 1 has text_time 1 (inclusive cumsum): image 1 only.
        let got = attention_branch(&t, true, &x, &media, &[1]);
        check(&got[0], expected_for(&[1]), "text_time 1, immediate");
        let got = attention_branch(&t, true, &x, &media, &[2]);
        check(&got[0], expected_for(&[2]), "text_time 2, immediate");
        // More <image> tokens than images: fully masked, uniform over ALL media (not zero).
        let got = attention_branch(&t, true, &x, &media, &[3]);
        check(&got[0], expected_for(&[1, 2]), "text_time 3 > num_media");
        // `ge` mode: every image up to and including its own.
        let got = attention_branch(&t, false, &x, &media, &[1]);
        check(&got[0], expected_for(&[1]), "text_time 1, ge");
        let got = attention_branch(&t, false, &x, &media, &[2]);
        check(&got[0], expected_for(&[1, 2]), "text_time 2, ge");
    }

    #[test]
    fn ge_mode_attends_to_all_previous_images_only() {
        let t = tensors(31, (0.5, 0.0));
        let blk = block(t, false);
        let x = randn(&[1, 1, DIM], 32);
        let media = randn(&[1, 3, 2, DV], 33);
        let tt = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
        let base = blk
            .forward(&x, &blk.media_kv(&media).unwrap(), &tt)
            .unwrap();
        // Changing image 3 (after the token) changes nothing; changing image 1 does.
        let bump = |img: usize| -> Tensor {
            let mut parts = vec![];
            for i in 0..3 {
                let p = media.narrow(1, i, 1).unwrap();
                parts.push(if i == img { (p + 1.0).unwrap() } else { p });
            }
            Tensor::cat(&parts, 1).unwrap()
        };
        let later = blk
            .forward(&x, &blk.media_kv(&bump(2)).unwrap(), &tt)
            .unwrap();
        assert_eq!(max_abs(&base, &later), 0.0);
        let earlier = blk
            .forward(&x, &blk.media_kv(&bump(0)).unwrap(), &tt)
            .unwrap();
        assert!(max_abs(&base, &earlier) > 1e-4);
    }

    #[test]
    fn zero_gates_make_the_block_the_identity() {
        let dev = Device::Cpu;
        let w = Weights::from_tensors(
            GatedCrossAttentionBlock::init_tensors(DIM, DV, &cfg(true), 9, &dev).unwrap(),
            DType::F32,
            &dev,
        );
        let blk = GatedCrossAttentionBlock::load(&w, DIM, DV, &cfg(true)).unwrap();
        let x = randn(&[2, 4, DIM], 10);
        let kv = blk.media_kv(&randn(&[2, 2, 3, DV], 11)).unwrap();
        let tt = Tensor::new(&[[0u32, 1, 1, 2], [1, 2, 2, 3]], &dev).unwrap();
        let out = blk.forward(&x, &kv, &tt).unwrap();
        assert_eq!(max_abs(&out, &x), 0.0);
    }

    #[test]
    fn every_block_parameter_receives_a_gradient_through_the_mask() {
        let dev = Device::Cpu;
        let vars: HashMap<String, Var> = tensors(41, (0.3, 0.6))
            .into_iter()
            .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
            .collect();
        let blk = block(
            vars.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
            true,
        );
        let x = randn(&[1, 4, DIM], 42);
        let kv = blk.media_kv(&randn(&[1, 2, 3, DV], 43)).unwrap();
        let tt = Tensor::new(&[[0u32, 1, 2, 2]], &dev).unwrap();
        let loss = blk
            .forward(&x, &kv, &tt)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }

    #[test]
    fn mismatched_text_time_is_an_actionable_error() {
        let blk = block(tensors(1, (0.1, 0.1)), true);
        let x = randn(&[1, 3, DIM], 2);
        let kv = blk.media_kv(&randn(&[1, 1, 2, DV], 3)).unwrap();
        let tt = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
        let err = blk.forward(&x, &kv, &tt).err().unwrap();
        assert!(err.to_string().contains("text_time"), "{err}");
    }
}
