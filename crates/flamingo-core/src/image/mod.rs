//! Image decoding and the CLIP ViT-L/14 eval transform of the reference (spec §5.3):
//! torchvision `Resize(224, BICUBIC)` + `CenterCrop(224)` on a PIL image, then
//! `convert("RGB")`, `ToTensor`, `Normalize(CLIP mean, std)`, reproduced bit for bit.
//!
//! What decides the last bit, and where it lives:
//! - `resample`: Pillow's two-pass fixed-point bicubic (`libImaging/Resample.c`) and its
//!   nearest-neighbour scaler (`Geometry.c`), computed only for the pixels the crop keeps.
//! - this file: torchvision's size and crop rules, Pillow's per-mode resize rules
//!   (premultiplied alpha for RGBA/LA, nearest for palette and bilevel images), the RGB
//!   conversion and the float normalisation in the order torch computes it.
//! - `decode`: JPEG, PNG, WebP, GIF and BMP into the mode Pillow would open them in,
//!   with a pixel limit checked from the header before anything is allocated.
//!
//! One deliberate difference from the reference: the reference never applies EXIF
//! orientation (`PIL.Image.open` ignores it), so a phone photo reaches the model sideways.
//! [`PreprocessConfig::apply_exif_orientation`] defaults to `true` for users; set it to
//! `false` to reproduce the reference exactly.

mod decode;
mod resample;

pub use decode::decode;
pub use resample::PassOrder;

use crate::Result;

/// How the pixels of a [`DecodedImage`] are stored, named after the Pillow mode the
/// reference would hold the image in. The mode decides how the image is resized:
/// Pillow resizes in the decoded mode and converts to RGB only after the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelMode {
    /// 8-bit grey, one byte per pixel (Pillow "L"). Resized as one channel.
    L,
    /// Grey + alpha, two bytes per pixel (Pillow "LA"). Resized with premultiplied alpha.
    La,
    /// Three bytes per pixel (Pillow "RGB").
    Rgb,
    /// Four bytes per pixel, straight alpha (Pillow "RGBA"). Resized with premultiplied
    /// alpha, so fully transparent pixels come out black.
    Rgba,
    /// A palette image (Pillow "P"), stored expanded to RGB, three bytes per pixel.
    /// Pillow always resizes "P" with nearest neighbour; picking pixels before or after the
    /// palette lookup gives the same result, so the expanded form loses nothing.
    Palette,
    /// A bilevel image (Pillow "1"), one byte per pixel, each 0 or 255. Always resized with
    /// nearest neighbour.
    Bilevel,
    /// Four bytes per pixel, C, M, Y, K (Pillow "CMYK", from CMYK/YCCK JPEGs). Resized as
    /// four plain channels, converted to RGB after the crop.
    Cmyk,
}

impl PixelMode {
    /// Bytes per pixel in [`DecodedImage::pixels`].
    pub fn channels(self) -> usize {
        match self {
            PixelMode::L | PixelMode::Bilevel => 1,
            PixelMode::La => 2,
            PixelMode::Rgb | PixelMode::Palette => 3,
            PixelMode::Rgba | PixelMode::Cmyk => 4,
        }
    }

    /// The Pillow mode name, for messages.
    pub fn pillow_name(self) -> &'static str {
        match self {
            PixelMode::L => "L",
            PixelMode::La => "LA",
            PixelMode::Rgb => "RGB",
            PixelMode::Rgba => "RGBA",
            PixelMode::Palette => "P",
            PixelMode::Bilevel => "1",
            PixelMode::Cmyk => "CMYK",
        }
    }

    fn has_alpha(self) -> bool {
        matches!(self, PixelMode::La | PixelMode::Rgba)
    }

    /// Pillow's `Image.resize` forces NEAREST for these modes whatever filter is asked.
    fn resizes_nearest(self) -> bool {
        matches!(self, PixelMode::Palette | PixelMode::Bilevel)
    }
}

/// A decoded image: row-major, interleaved 8-bit samples, `mode.channels()` per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    width: usize,
    height: usize,
    mode: PixelMode,
    pixels: Vec<u8>,
}

impl DecodedImage {
    /// Wraps pixels, checking that the buffer holds exactly `width * height` pixels.
    pub fn new(width: usize, height: usize, mode: PixelMode, pixels: Vec<u8>) -> Result<Self> {
        check_len(width, height, mode, pixels.len())?;
        Ok(Self {
            width,
            height,
            mode,
            pixels,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn mode(&self) -> PixelMode {
        self.mode
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }

    fn view(&self) -> View<'_> {
        View {
            width: self.width,
            height: self.height,
            mode: self.mode,
            pixels: &self.pixels,
        }
    }
}

/// A borrowed image, so raw input is preprocessed without a copy.
struct View<'a> {
    width: usize,
    height: usize,
    mode: PixelMode,
    pixels: &'a [u8],
}

fn check_len(width: usize, height: usize, mode: PixelMode, len: usize) -> Result<()> {
    if width == 0 || height == 0 {
        crate::invalid_input!("image has zero size ({width}x{height})");
    }
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(mode.channels()));
    if expected != Some(len) {
        crate::invalid_input!(
            "pixel buffer holds {len} bytes, but a {width}x{height} {} image needs {}",
            mode.pillow_name(),
            expected.map_or_else(|| "more than fits in memory".to_string(), |n| n.to_string())
        );
    }
    Ok(())
}

/// The CLIP eval transform's parameters. `Default` is the transform the reference uses
/// for `openai/clip-vit-large-patch14` (open_clip's `image_transform(224, is_train=False)`).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Side of the square model input: the short side is resized to this, then the centre
    /// `size`×`size` is cropped. Default 224.
    pub size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1]. Default: OpenAI CLIP's.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by. Default: OpenAI CLIP's.
    pub std: [f32; 3],
    /// Largest image (width × height) that is decoded or accepted, checked from the file
    /// header before any pixel memory is allocated. Default 100 megapixels.
    pub max_pixels: u64,
    /// Rotate/flip decoded images as their EXIF orientation tag says. Default `true`.
    /// The reference ignores the tag (`PIL.Image.open` does not apply it): set `false` to
    /// reproduce the reference's inputs exactly.
    pub apply_exif_orientation: bool,
    /// Which Pillow's bicubic pass order to reproduce. Default [`PassOrder::HorizontalFirst`]
    /// (Pillow ≤ 12, the era in which the released checkpoints were trained);
    /// [`PassOrder::Pillow13`] for current Pillow. The two differ only on downscaled
    /// portrait images taller than about 2:1, by a few 8-bit steps.
    pub pass_order: PassOrder,
}

/// OpenAI CLIP's normalisation constants (open_clip `OPENAI_DATASET_MEAN` / `_STD`), written
/// with the published digits; like torch's `Normalize`, they are rounded to f32.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            size: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            max_pixels: 100_000_000,
            apply_exif_orientation: true,
            pass_order: PassOrder::default(),
        }
    }
}

impl PreprocessConfig {
    fn validate(&self) -> Result<()> {
        if self.size == 0 {
            crate::invalid_input!("PreprocessConfig.size must be at least 1");
        }
        if let Some(c) = (0..3).find(|&c| !(self.std[c].is_finite() && self.std[c] != 0.0)) {
            crate::invalid_input!(
                "PreprocessConfig.std[{c}] is {}; it must be finite and non-zero",
                self.std[c]
            );
        }
        if let Some(c) = (0..3).find(|&c| !self.mean[c].is_finite()) {
            crate::invalid_input!(
                "PreprocessConfig.mean[{c}] is {}; it must be finite",
                self.mean[c]
            );
        }
        Ok(())
    }

    /// Refuses an image over the pixel limit (or of zero size) before it is decoded.
    pub(crate) fn check_dimensions(&self, width: u64, height: u64) -> Result<()> {
        if width == 0 || height == 0 {
            crate::invalid_input!("image has zero size ({width}x{height})");
        }
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels {
            crate::invalid_input!(
                "image is {width}x{height} = {pixels} pixels, over the limit of {} \
                 (PreprocessConfig.max_pixels); refusing it",
                self.max_pixels
            );
        }
        Ok(())
    }
}

/// torchvision `Resize(size)` with an int size: the short side becomes `size`, the long
/// side `int(size * long / short)` (truncated, computed in double precision as Python
/// does). Returns `(width, height)`. When the short side already equals `size` the result
/// is the input size and torchvision returns the image untouched.
pub fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `center_crop`'s offset along one axis of length `len` for a crop of `crop`.
/// `round((len - crop) / 2)` with Python's round-half-to-even; when the crop is larger than
/// the image, torchvision first pads `(crop - len) // 2` zeros before the image (and the
/// rest after it), which is a negative offset here.
pub fn center_crop_offset(len: usize, crop: usize) -> isize {
    if crop > len {
        return -(((crop - len) / 2) as isize);
    }
    let diff = len - crop;
    // (diff / 2) lands on .5 exactly when diff is odd; half-to-even then picks the even one
    // of diff/2 and diff/2 + 1.
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        (half + 1) as isize
    } else {
        half as isize
    }
}

/// The reference transform up to (and excluding) `ToTensor`: resize, centre crop and
/// convert to RGB. Returns `size * size * 3` bytes, row-major RGB — exactly the 8-bit
/// image the reference turns into a tensor.
pub fn transform_rgb8(img: &DecodedImage, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    transform_view(&img.view(), cfg)
}

fn transform_view(img: &View, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    cfg.validate()?;
    cfg.check_dimensions(img.width as u64, img.height as u64)?;
    let size = cfg.size;
    let (rw, rh) = resized_size(img.width, img.height, size);
    // The reference materialises the whole resized image; refuse shapes so elongated that
    // it would be absurd (only the cropped window is computed here, but the nearest-neighbour
    // tables still walk the long axis).
    let resized_pixels = (rw as u64).saturating_mul(rh as u64);
    if resized_pixels > cfg.max_pixels {
        crate::invalid_input!(
            "a {}x{} image resizes to {rw}x{rh} (short side {size}) = {resized_pixels} pixels, \
             over the limit of {} (PreprocessConfig.max_pixels); the aspect ratio is too extreme",
            img.width,
            img.height,
            cfg.max_pixels
        );
    }

    let ox = center_crop_offset(rw, size);
    let oy = center_crop_offset(rh, size);
    // The part of the crop that lies inside the resized image; the rest would be
    // torchvision's zero padding. After Resize(size) the crop always fits, but keeping the
    // general rule makes this function correct on its own terms.
    let x0 = ox.max(0) as usize;
    let y0 = oy.max(0) as usize;
    let x1 = ((ox + size as isize) as usize).min(rw);
    let y1 = ((oy + size as isize) as usize).min(rh);
    let window = resample::Window { x0, x1, y0, y1 };

    let resized = resize_window(img, rw, rh, &window, cfg.pass_order);
    let c = img.mode.channels();
    let ww = x1 - x0;
    let mut out = vec![0u8; size * size * 3];
    for (wy, row) in resized.chunks_exact(ww * c).enumerate() {
        let oy_out = (y0 as isize - oy) as usize + wy;
        let ox_out = (x0 as isize - ox) as usize;
        let dst = &mut out[(oy_out * size + ox_out) * 3..(oy_out * size + ox_out + ww) * 3];
        to_rgb(img.mode, row, dst);
    }
    Ok(out)
}

/// Pillow's `Image.resize((width, height), BICUBIC)` with its mode rules: RGBA and LA go
/// through premultiplied alpha, palette and bilevel images use nearest neighbour, and a
/// same-size resize is a copy. The result keeps the input's mode.
pub fn resize(
    img: &DecodedImage,
    width: usize,
    height: usize,
    order: PassOrder,
) -> Result<DecodedImage> {
    if width == 0 || height == 0 {
        crate::invalid_input!("cannot resize to zero size ({width}x{height})");
    }
    let window = resample::Window {
        x0: 0,
        x1: width,
        y0: 0,
        y1: height,
    };
    let pixels = resize_window(&img.view(), width, height, &window, order);
    DecodedImage::new(width, height, img.mode, pixels)
}

/// The pixels of `window` of the image resized to `rw`×`rh`, in the image's mode.
fn resize_window(
    img: &View,
    rw: usize,
    rh: usize,
    window: &resample::Window,
    order: PassOrder,
) -> Vec<u8> {
    let c = img.mode.channels();
    let src = resample::Image {
        width: img.width,
        height: img.height,
        channels: c,
        pixels: img.pixels,
    };
    if rw == img.width && rh == img.height {
        // Pillow returns a copy: no premultiply round trip, so transparent pixels keep
        // their colour here.
        return resample::copy_window(&src, window);
    }
    if img.mode.resizes_nearest() {
        return resample::nearest(&src, rw, rh, window);
    }
    if img.mode.has_alpha() {
        // Image.resize: RGBA -> RGBa -> resize -> RGBA (and LA -> La -> LA).
        let mut out = resample::bicubic(&src, rw, rh, window, true, order);
        unpremultiply(&mut out, c);
        return out;
    }
    resample::bicubic(&src, rw, rh, window, false, order)
}

/// Pillow's `rgba2rgbA` / `la2lA`: alpha 0 and 255 leave the colour as it is, otherwise
/// `clip(255 * v / alpha)` with integer division.
fn unpremultiply(pixels: &mut [u8], channels: usize) {
    for px in pixels.chunks_exact_mut(channels) {
        let (colour, alpha) = px.split_at_mut(channels - 1);
        let a = u32::from(alpha[0]);
        if a == 0 || a == 255 {
            continue;
        }
        for v in colour {
            *v = ((255 * u32::from(*v)) / a).min(255) as u8;
        }
    }
}

/// Pillow's `convert("RGB")` for one row: grey is replicated, alpha is dropped.
fn to_rgb(mode: PixelMode, src: &[u8], dst: &mut [u8]) {
    match mode {
        PixelMode::L | PixelMode::Bilevel => {
            for (d, &v) in dst.chunks_exact_mut(3).zip(src) {
                d.fill(v);
            }
        }
        PixelMode::La => {
            for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(2)) {
                d.fill(s[0]);
            }
        }
        PixelMode::Rgb | PixelMode::Palette => dst.copy_from_slice(src),
        PixelMode::Rgba => {
            for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
                d.copy_from_slice(&s[..3]);
            }
        }
        PixelMode::Cmyk => {
            // Pillow's cmyk2rgb: nk = 255 - k; channel = nk - MULDIV255(c, nk).
            for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
                let nk = 255 - u32::from(s[3]);
                for (o, &v) in d.iter_mut().zip(&s[..3]) {
                    let t = u32::from(v) * nk + 128;
                    *o = (nk - (((t >> 8) + t) >> 8)) as u8;
                }
            }
        }
    }
}

/// The full reference transform: [`transform_rgb8`], then `ToTensor` (`/255` in f32) and
/// `Normalize` (`(x - mean) / std` in f32, the order torch computes it). Returns the
/// `(3, size, size)` tensor in CHW order.
pub fn preprocess(img: &DecodedImage, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let rgb = transform_rgb8(img, cfg)?;
    Ok(normalize_chw(&rgb, cfg))
}

fn normalize_chw(rgb: &[u8], cfg: &PreprocessConfig) -> Vec<f32> {
    let plane = cfg.size * cfg.size;
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        // A 256-entry table: the same f32 operations as torch, done once per value.
        let mut lut = [0f32; 256];
        for (v, slot) in lut.iter_mut().enumerate() {
            *slot = (v as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
        for (o, px) in out[c * plane..(c + 1) * plane]
            .iter_mut()
            .zip(rgb.chunks_exact(3))
        {
            *o = lut[px[c] as usize];
        }
    }
    out
}

/// [`decode`] then [`preprocess`].
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let img = decode(bytes, cfg)?;
    preprocess(&img, cfg)
}

/// Preprocesses raw 8-bit pixels, row-major and interleaved: `channels` 3 is RGB, 4 is RGBA
/// (straight alpha, resized premultiplied like a PIL "RGBA" image), 1 is grey, 2 grey+alpha.
pub fn preprocess_raw(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>> {
    cfg.validate()?;
    let mode = match channels {
        1 => PixelMode::L,
        2 => PixelMode::La,
        3 => PixelMode::Rgb,
        4 => PixelMode::Rgba,
        _ => crate::invalid_input!(
            "raw pixels must have 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got {channels}"
        ),
    };
    cfg.check_dimensions(width as u64, height as u64)?;
    check_len(width, height, mode, pixels.len())?;
    let rgb = transform_view(
        &View {
            width,
            height,
            mode,
            pixels,
        },
        cfg,
    )?;
    Ok(normalize_chw(&rgb, cfg))
}

/// The reference's training augmentation: a horizontal flip of a `(C, H, W)` tensor whose
/// width is `size` (every row of every channel is reversed).
pub fn hflip_chw(data: &mut [f32], size: usize) {
    if size == 0 {
        return;
    }
    for row in data.chunks_exact_mut(size) {
        row.reverse();
    }
}
