//! Pillow's resamplers, re-implemented for bit-exact output: the antialiased two-pass
//! fixed-point convolution of `libImaging/Resample.c` (bicubic, a = −0.5) and the
//! nearest-neighbour scaler `ImagingScaleAffine` of `libImaging/Geometry.c`.
//!
//! Every output pixel depends only on its own coefficient row, so computing just the
//! pixels a centre crop keeps gives exactly the bytes Pillow produces for them, at a
//! fraction of the cost (and without materialising a huge intermediate for elongated
//! images).

/// Pillow's `PRECISION_BITS` (32 − 8 − 2): coefficients are fixed point with 22
/// fractional bits, leaving room for negative lobes and sums above 1 in an `i32`.
const PRECISION_BITS: u32 = 22;

/// Borrowed interleaved 8-bit pixels.
pub(crate) struct Image<'a> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: &'a [u8],
}

/// Output pixels `[x0, x1) × [y0, y1)` of the resized image.
pub(crate) struct Window {
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
}

impl Window {
    fn width(&self) -> usize {
        self.x1 - self.x0
    }
}

/// Pillow's `bicubic_filter` (Keys' cubic convolution with a = −0.5), written with the
/// same operation order so the doubles match.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point coefficients along one axis for a run of output indices.
struct Coeffs {
    /// First input index of each output's support.
    start: Vec<usize>,
    /// Number of taps of each output.
    count: Vec<usize>,
    /// Row-major `[output][tap]`, `ksize` taps per row (unused taps are 0).
    weights: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    /// The input indices any of these outputs reads.
    fn input_span(&self) -> std::ops::Range<usize> {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = (0..self.start.len())
            .map(|i| self.start[i] + self.count[i])
            .max()
            .unwrap_or(first);
        first..last
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let k = &self.weights[i * self.ksize..i * self.ksize + self.count[i]];
        (self.start[i], k)
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output indices `outs` of a
/// resize from `in_size` to `out_size` (box = the whole input).
fn precompute_coeffs(in_size: usize, out_size: usize, outs: std::ops::Range<usize>) -> Coeffs {
    // Pillow passes the box as C floats: `in1 - in0` is a float subtraction.
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    // Downscaling widens the filter (antialiasing); upscaling keeps its natural support.
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;

    let n = outs.len();
    let mut start = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut weights = vec![0i32; n * ksize];
    let mut row = vec![0f64; ksize];
    for (i, xx) in outs.enumerate() {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negatives are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
        let taps = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, w) in row[..taps].iter_mut().enumerate() {
            *w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * inv);
            ww += *w;
        }
        let dst = &mut weights[i * ksize..i * ksize + taps];
        for (d, &w) in dst.iter_mut().zip(&row[..taps]) {
            let w = if ww != 0.0 { w / ww } else { w };
            // Round half away from zero, as `(int)(±0.5 + w * (1 << 22))` does.
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *d = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        start.push(xmin);
        count.push(taps);
    }
    Coeffs {
        start,
        count,
        weights,
        ksize,
    }
}

/// Pillow's `clip8`: drop the fraction (arithmetic shift, so negatives floor) and clamp.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding offset every accumulator starts from: adding ½ before the shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `rgbA2rgba` / `lA2la` premultiplication of one pixel: `MULDIV255(v, alpha)`.
#[inline(always)]
fn muldiv255(v: u8, a: u8) -> u8 {
    let t = u32::from(v) * u32::from(a) + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Copies the premultiplied form of `src` rows into `dst` (same layout).
fn premultiply_into(src: &[u8], dst: &mut [u8], channels: usize) {
    for (d, s) in dst
        .chunks_exact_mut(channels)
        .zip(src.chunks_exact(channels))
    {
        let a = s[channels - 1];
        for c in 0..channels - 1 {
            d[c] = muldiv255(s[c], a);
        }
        d[channels - 1] = a;
    }
}

/// The window of the image unchanged (Pillow's same-size `resize` is a copy).
pub(crate) fn copy_window(src: &Image, win: &Window) -> Vec<u8> {
    let c = src.channels;
    let mut out = Vec::with_capacity(win.width() * (win.y1 - win.y0) * c);
    for y in win.y0..win.y1 {
        let row = &src.pixels[(y * src.width + win.x0) * c..(y * src.width + win.x1) * c];
        out.extend_from_slice(row);
    }
    out
}

/// Pillow's `ImagingScaleAffine`: the source position of output `i` is the running sum
/// `scale/2 + i·scale` truncated, accumulated in a double exactly as Pillow does (the
/// rounding of the running sum decides which pixel is picked at exact boundaries).
/// Positions past the input are filled with zeros, as Pillow's `fill` does.
fn nearest_table(in_size: usize, out_size: usize, end: usize) -> Vec<Option<usize>> {
    let a = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    let mut pos = 0.0 + a * 0.5;
    let mut table = Vec::with_capacity(end);
    for _ in 0..end {
        // COORD(v): -1 for negatives, else truncation.
        let idx = if pos < 0.0 { None } else { Some(pos as usize) };
        table.push(idx.filter(|&i| i < in_size));
        pos += a;
    }
    table
}

/// Nearest-neighbour resize (Pillow forces it for "P" and "1" images), window only.
pub(crate) fn nearest(src: &Image, out_w: usize, out_h: usize, win: &Window) -> Vec<u8> {
    let c = src.channels;
    let xs = nearest_table(src.width, out_w, win.x1);
    let ys = nearest_table(src.height, out_h, win.y1);
    let mut out = vec![0u8; win.width() * (win.y1 - win.y0) * c];
    for (orow, sy) in out.chunks_exact_mut(win.width() * c).zip(&ys[win.y0..]) {
        let Some(sy) = *sy else { continue };
        let srow = &src.pixels[sy * src.width * c..(sy + 1) * src.width * c];
        for (o, sx) in orow.chunks_exact_mut(c).zip(&xs[win.x0..]) {
            if let Some(sx) = *sx {
                o.copy_from_slice(&srow[sx * c..(sx + 1) * c]);
            }
        }
    }
    out
}

/// The order of the two passes of Pillow's `ImagingResampleInner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PassOrder {
    /// Pillow ≥ 13.0: horizontal first, except when the height shrinks by more than twice
    /// as many pixels as the width (`in_h - out_h > 2 * (in_w - out_w)`), which runs the
    /// vertical pass first. For an aspect-preserving resize that is a downscale of a
    /// portrait image taller than about 2:1. The 8-bit rounding between the passes makes
    /// the two orders differ by a few steps in such images.
    Pillow13,
    /// Pillow ≤ 12.x: always horizontal, then vertical (the Pillow of the released
    /// OpenFlamingo checkpoints' era, so the default: the released models were trained on
    /// images resized this way).
    #[default]
    HorizontalFirst,
}

impl PassOrder {
    fn horizontal_first(self, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
        match self {
            PassOrder::HorizontalFirst => true,
            PassOrder::Pillow13 => {
                let dy = in_h as i64 - out_h as i64;
                let dx = in_w as i64 - out_w as i64;
                !(dy > 0 && dy > dx * 2)
            }
        }
    }
}

/// Pillow's `ImagingResampleInner` with the bicubic filter, for the window only. Each pass
/// runs only if its axis changes size; the 8-bit intermediate holds only the rows (or
/// columns) the second pass reads. With `premultiply`, the source is premultiplied first
/// (alpha in the last channel), as `Image.resize` does for RGBA and LA; the caller undoes it.
pub(crate) fn bicubic(
    src: &Image,
    out_w: usize,
    out_h: usize,
    win: &Window,
    premultiply: bool,
    order: PassOrder,
) -> Vec<u8> {
    let c = src.channels;
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    let hc = need_h.then(|| precompute_coeffs(src.width, out_w, win.x0..win.x1));
    let vc = need_v.then(|| precompute_coeffs(src.height, out_h, win.y0..win.y1));

    // The source region the window depends on, copied compactly (and premultiplied).
    let cols = hc.as_ref().map_or(win.x0..win.x1, Coeffs::input_span);
    let rows = vc.as_ref().map_or(win.y0..win.y1, Coeffs::input_span);
    let (rw, rh) = (cols.len(), rows.len());
    let mut region = vec![0u8; rw * rh * c];
    for (dst, y) in region.chunks_exact_mut(rw * c).zip(rows.clone()) {
        let s = &src.pixels[(y * src.width + cols.start) * c..(y * src.width + cols.end) * c];
        if premultiply {
            premultiply_into(s, dst, c);
        } else {
            dst.copy_from_slice(s);
        }
    }

    let (ww, wh) = (win.width(), win.y1 - win.y0);
    let h_pass = |input: &[u8], in_w: usize, hc: &Coeffs, n_rows: usize| {
        let mut out = vec![0u8; n_rows * ww * c];
        match c {
            1 => horizontal::<1>(input, in_w, hc, cols.start, &mut out),
            2 => horizontal::<2>(input, in_w, hc, cols.start, &mut out),
            3 => horizontal::<3>(input, in_w, hc, cols.start, &mut out),
            _ => horizontal::<4>(input, in_w, hc, cols.start, &mut out),
        }
        out
    };
    let v_pass = |input: &[u8], row_len: usize, vc: &Coeffs| {
        let mut out = vec![0u8; wh * row_len];
        vertical(input, row_len, vc, rows.start, &mut out);
        out
    };

    if order.horizontal_first(src.width, src.height, out_w, out_h) {
        let tmp = match &hc {
            Some(hc) => h_pass(&region, rw, hc, rh),
            None => region,
        };
        match &vc {
            Some(vc) => v_pass(&tmp, ww * c, vc),
            None => tmp,
        }
    } else {
        let tmp = match &vc {
            Some(vc) => v_pass(&region, rw * c, vc),
            None => region,
        };
        match &hc {
            Some(hc) => h_pass(&tmp, rw, hc, wh),
            None => tmp,
        }
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc` for `C` interleaved channels. `rows` holds
/// rows `in_w` pixels wide whose first pixel is input column `base`.
fn horizontal<const C: usize>(rows: &[u8], in_w: usize, hc: &Coeffs, base: usize, out: &mut [u8]) {
    let out_w = hc.start.len();
    for (src, dst) in rows
        .chunks_exact(in_w * C)
        .zip(out.chunks_exact_mut(out_w * C))
    {
        for (i, px) in dst.chunks_exact_mut(C).enumerate() {
            let (start, k) = hc.taps(i);
            let start = start - base;
            let mut acc = [HALF; C];
            for (s, &w) in src[start * C..(start + k.len()) * C].chunks_exact(C).zip(k) {
                for ch in 0..C {
                    acc[ch] += i32::from(s[ch]) * w;
                }
            }
            for ch in 0..C {
                px[ch] = clip8(acc[ch]);
            }
        }
    }
}

/// Pillow's `ImagingResampleVertical_8bpc` over whole rows of `row_len` bytes (all
/// channels at once); row `r` of `input` is input row `base + r`. Integer sums are exact,
/// so accumulating a row per tap gives Pillow's bytes.
fn vertical(input: &[u8], row_len: usize, vc: &Coeffs, base: usize, out: &mut [u8]) {
    let mut acc = vec![0i32; row_len];
    for (i, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = vc.taps(i);
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let r = start + t - base;
            for (a, &s) in acc.iter_mut().zip(&input[r * row_len..(r + 1) * row_len]) {
                *a += i32::from(s) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_coefficients_sum_to_one_in_fixed_point() {
        for (inn, out) in [(320, 298), (240, 224), (100, 280), (7, 3), (3, 7)] {
            let c = precompute_coeffs(inn, out, 0..out);
            for i in 0..out {
                let s: i32 = c.taps(i).1.iter().sum();
                assert!((s - (1 << 22)).abs() < 16, "{inn}->{out} row {i}: {s}");
            }
        }
    }

    #[test]
    fn premultiply_matches_pillow_muldiv255() {
        // MULDIV255 is exact division by 255 with rounding.
        for v in 0..=255u32 {
            for a in 0..=255u32 {
                let exact = ((v * a) as f64 / 255.0).round() as u32;
                assert_eq!(u32::from(muldiv255(v as u8, a as u8)), exact, "{v} {a}");
            }
        }
    }
}
