//! Image loading: file, encoded bytes or raw pixels → the CLIP-normalised `(3, S, S)` tensor
//! of the reference's eval transform (`flamingo_core::image`, spec §5.3).
//!
//! Why napi's `AsyncTask` (the libuv pool) here, when models use a dedicated engine thread:
//! one image is tens of milliseconds of CPU work with no state to keep, like the fs and zlib
//! work the pool was made for; images of a batch then decode in parallel on the pool's
//! threads, and a model's engine thread stays free for the forward pass.
//!
//! Every input is copied out of JavaScript (or read from disk) into owned memory before the
//! work is queued, so the pool thread never touches JS memory. Failures reject with one of
//! the image codes below, classified from the core's `InvalidInput` messages (the core has
//! a single code for all of them; `tests` pins each message against a real failure).

use std::path::PathBuf;

use flamingo_core::image::{
    preprocess_bytes, preprocess_raw, PassOrder, PreprocessConfig, CLIP_MEAN, CLIP_STD,
};
use napi::bindgen_prelude::{AsyncTask, Float32Array, Uint8Array};
use napi::{Env, Task};
use napi_derive::napi;

use crate::engine::guarded;
use crate::error::{BindingError, BindingResult, ERR_INVALID_INPUT};
use crate::tensor::FloatTensor;

/// The data is not an image this engine can read (or is no image at all).
pub const ERR_IMAGE_FORMAT: &str = "ERR_IMAGE_FORMAT";
/// The data looks like an image but cannot be decoded: truncated or corrupt.
pub const ERR_IMAGE_CORRUPT: &str = "ERR_IMAGE_CORRUPT";
/// The image has no pixels: empty data, or a width or height of 0.
pub const ERR_IMAGE_EMPTY: &str = "ERR_IMAGE_EMPTY";
/// The image (or its resized form) exceeds `maxPixels`; refused before pixels are allocated.
pub const ERR_IMAGE_TOO_LARGE: &str = "ERR_IMAGE_TOO_LARGE";

/// `loadImage` options, already validated by the TypeScript layer; absent fields take the
/// reference's transform (`PreprocessConfig::default()`).
#[napi(object)]
pub struct ImageOptions {
    pub size: Option<u32>,
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub max_pixels: Option<f64>,
    pub apply_exif_orientation: Option<bool>,
    /// `"pillow12"` (default) or `"pillow13"`.
    pub pass_order: Option<String>,
}

/// Raw 8-bit pixels, row-major and interleaved (1: grey, 2: grey+alpha, 3: RGB, 4: RGBA).
#[napi(object)]
pub struct RawImage {
    pub data: Uint8Array,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
}

fn triple(name: &str, values: Option<Vec<f64>>, default: [f32; 3]) -> BindingResult<[f32; 3]> {
    match values {
        None => Ok(default),
        Some(v) => match v.as_slice() {
            [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
            _ => Err(BindingError::invalid_input(format!(
                "{name} must have 3 values (R, G, B), got {}",
                v.len()
            ))),
        },
    }
}

impl ImageOptions {
    fn into_config(self) -> BindingResult<PreprocessConfig> {
        let defaults = PreprocessConfig::default();
        let max_pixels = match self.max_pixels {
            None => defaults.max_pixels,
            Some(n) if n.is_finite() && n >= 1.0 => n as u64,
            Some(n) => {
                return Err(BindingError::invalid_input(format!(
                    "maxPixels must be a positive number, got {n}"
                )))
            }
        };
        let pass_order = match self.pass_order.as_deref() {
            None | Some("pillow12") => PassOrder::HorizontalFirst,
            Some("pillow13") => PassOrder::Pillow13,
            Some(other) => {
                return Err(BindingError::invalid_input(format!(
                    "passOrder must be \"pillow12\" or \"pillow13\", got \"{other}\""
                )))
            }
        };
        Ok(PreprocessConfig {
            size: self.size.map_or(defaults.size, |s| s as usize),
            mean: triple("mean", self.mean, CLIP_MEAN)?,
            std: triple("std", self.std, CLIP_STD)?,
            max_pixels,
            apply_exif_orientation: self
                .apply_exif_orientation
                .unwrap_or(defaults.apply_exif_orientation),
            pass_order,
        })
    }
}

fn config_of(options: Option<ImageOptions>) -> BindingResult<PreprocessConfig> {
    options.map_or_else(
        || Ok(PreprocessConfig::default()),
        ImageOptions::into_config,
    )
}

/// Where the pixels come from.
enum Source {
    File(PathBuf),
    Encoded(Vec<u8>),
    Raw {
        pixels: Vec<u8>,
        width: usize,
        height: usize,
        channels: usize,
    },
}

/// Gives the core's image errors (all `InvalidInput`) their own codes. `from_file` decides
/// what a zero-size image is: a broken file, or (raw pixels) a caller's bad arguments — both
/// are "empty".
fn classify(error: flamingo_core::Error) -> BindingError {
    let flamingo_core::Error::InvalidInput(message) = &error else {
        return error.into();
    };
    let code = if message.starts_with("not a supported image") {
        ERR_IMAGE_FORMAT
    } else if message.starts_with("could not decode") {
        ERR_IMAGE_CORRUPT
    } else if message.starts_with("image data is empty")
        || message.starts_with("image has zero size")
    {
        ERR_IMAGE_EMPTY
    } else if message.contains("(PreprocessConfig.max_pixels)") {
        ERR_IMAGE_TOO_LARGE
    } else {
        ERR_INVALID_INPUT
    };
    // The core names its Rust fields; JavaScript callers set `maxPixels`.
    BindingError::new(
        code,
        message.replace("PreprocessConfig.max_pixels", "maxPixels"),
    )
}

fn preprocess(source: &Source, config: &PreprocessConfig) -> BindingResult<Vec<f32>> {
    match source {
        Source::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| flamingo_core::Error::io(path, e))?;
            preprocess_bytes(&bytes, config)
                .map_err(classify)
                .map_err(|e| {
                    BindingError::new(e.code, format!("{}: {}", path.display(), e.message))
                })
        }
        Source::Encoded(bytes) => preprocess_bytes(bytes, config).map_err(classify),
        Source::Raw {
            pixels,
            width,
            height,
            channels,
        } => preprocess_raw(pixels, *width, *height, *channels, config).map_err(classify),
    }
}

/// One image, preprocessed on a libuv pool thread.
pub struct PreprocessTask {
    /// `Err` when the options were refused on the JS thread: the Promise still rejects
    /// (rather than the call throwing), like every other failure.
    job: BindingResult<(Source, PreprocessConfig)>,
}

impl PreprocessTask {
    fn new(source: Source, options: Option<ImageOptions>) -> AsyncTask<Self> {
        let job = config_of(options).map(|config| (source, config));
        AsyncTask::new(PreprocessTask { job })
    }
}

impl Task for PreprocessTask {
    type Output = BindingResult<(Vec<f32>, u32)>;
    type JsValue = FloatTensor;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (source, config) = match &self.job {
            Ok(job) => job,
            Err(e) => return Ok(Err(BindingError::new(e.code, e.message.clone()))),
        };
        // A panic must not cross the pool thread's C frame (it would abort the process).
        let result = guarded("loadImage", || preprocess(source, config));
        Ok(result.map(|data| (data, config.size as u32)))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<FloatTensor> {
        match output {
            Ok((data, size)) => Ok(FloatTensor {
                data: Float32Array::new(data),
                shape: vec![3, size, size],
            }),
            Err(e) => Err(e.into_js(&env)),
        }
    }
}

/// Reads and preprocesses an image file (JPEG, PNG, WebP, GIF, BMP): `(3, S, S)`.
#[napi]
pub fn load_image_file(path: String, options: Option<ImageOptions>) -> AsyncTask<PreprocessTask> {
    PreprocessTask::new(Source::File(PathBuf::from(path)), options)
}

/// Preprocesses an encoded image held in memory: `(3, S, S)`.
#[napi]
pub fn load_image_bytes(
    bytes: Uint8Array,
    options: Option<ImageOptions>,
) -> AsyncTask<PreprocessTask> {
    PreprocessTask::new(Source::Encoded(bytes.to_vec()), options)
}

/// Preprocesses raw pixels: `(3, S, S)`.
#[napi]
pub fn load_image_raw(raw: RawImage, options: Option<ImageOptions>) -> AsyncTask<PreprocessTask> {
    PreprocessTask::new(
        Source::Raw {
            pixels: raw.data.to_vec(),
            width: raw.width as usize,
            height: raw.height as usize,
            channels: raw.channels as usize,
        },
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(bytes: &[u8], config: &PreprocessConfig) -> (&'static str, String) {
        let e = preprocess(&Source::Encoded(bytes.to_vec()), config).unwrap_err();
        (e.code, e.message)
    }

    /// A PNG signature and an IHDR chunk claiming `width`×`height` RGB, and nothing after.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        b.extend_from_slice(&[0, 0, 0, 0]); // CRC, never reached
        b
    }

    #[test]
    fn each_core_failure_gets_its_image_code() {
        let cfg = PreprocessConfig::default();
        assert_eq!(code_of(b"hello, world", &cfg).0, ERR_IMAGE_FORMAT);
        assert_eq!(code_of(b"", &cfg).0, ERR_IMAGE_EMPTY);
        assert_eq!(code_of(&png_header(0, 0), &cfg).0, ERR_IMAGE_EMPTY);
        let (code, message) = code_of(&png_header(50_000, 50_000), &cfg);
        assert_eq!(code, ERR_IMAGE_TOO_LARGE);
        assert!(message.contains("maxPixels"), "{message}");
        assert_eq!(code_of(&png_header(4, 4), &cfg).0, ERR_IMAGE_CORRUPT);
        assert_eq!(
            code_of(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16], &cfg).0,
            ERR_IMAGE_CORRUPT
        );
    }

    #[test]
    fn raw_pixel_mistakes_are_invalid_input() {
        let cfg = PreprocessConfig::default();
        let raw = |pixels: Vec<u8>, width, height, channels| Source::Raw {
            pixels,
            width,
            height,
            channels,
        };
        let e = preprocess(&raw(vec![0; 5], 2, 2, 3), &cfg).unwrap_err();
        assert_eq!(e.code, ERR_INVALID_INPUT);
        assert!(preprocess(&raw(vec![0; 4], 1, 1, 4), &cfg).is_ok());
        let e = preprocess(&raw(vec![], 0, 3, 3), &cfg).unwrap_err();
        assert_eq!(e.code, ERR_IMAGE_EMPTY);
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_the_path() {
        let e = preprocess(
            &Source::File(PathBuf::from("/nonexistent/cat.jpg")),
            &PreprocessConfig::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, "ERR_IO");
        assert!(e.message.contains("/nonexistent/cat.jpg"), "{}", e.message);
    }

    #[test]
    fn options_are_checked() {
        let opts = |f: fn(&mut ImageOptions)| {
            let mut o = ImageOptions {
                size: None,
                mean: None,
                std: None,
                max_pixels: None,
                apply_exif_orientation: None,
                pass_order: None,
            };
            f(&mut o);
            o.into_config()
        };
        assert_eq!(opts(|_| {}).unwrap(), PreprocessConfig::default());
        assert_eq!(
            opts(|o| o.pass_order = Some("pillow13".into()))
                .unwrap()
                .pass_order,
            PassOrder::Pillow13
        );
        assert!(opts(|o| o.mean = Some(vec![0.5])).is_err());
        assert!(opts(|o| o.pass_order = Some("pillow9".into())).is_err());
        assert!(opts(|o| o.max_pixels = Some(0.0)).is_err());
    }
}
