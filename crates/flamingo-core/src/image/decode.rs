//! Decoding JPEG, PNG, WebP, GIF (first frame) and BMP into the mode Pillow opens them in
//! (`PIL.Image.open`, Pillow 13), because the mode decides how the reference resizes.
//!
//! PNG and GIF are read with their format crates directly: `image` would expand palettes
//! and turn a tRNS chunk into an alpha channel, and Pillow does neither (a palette PNG is
//! "P" and resized nearest-neighbour; an RGB PNG with tRNS stays "RGB"). JPEG, WebP and BMP
//! is read with `jpeg-decoder` (keeping CMYK as CMYK, as Pillow does); WebP and BMP go
//! through `image`'s decoders, with the BMP palette rule read from the header.
//!
//! Deliberate differences from Pillow, each the closest sound behaviour:
//! - 16-bit grey PNGs: Pillow opens them as "I;16", resizes in 16 bits and its
//!   `convert("RGB")` saturates every value above 255, so the reference sees an almost
//!   white image. Here they become "L" from the high byte of each sample, which is what
//!   Pillow itself does for 16-bit RGB, RGBA and grey+alpha PNGs.
//! - JPEG pixels come from a pure-Rust decoder, not libjpeg-turbo: its IDCT and chroma
//!   upsampling round differently, so a few percent of samples differ from Pillow's by
//!   1–3 steps (after the resize: mean ≈ 0.1 step on 4:2:0 photos). Lossy WebP decoded
//!   bit-identically to libwebp in our checks.
//! - EXIF orientation is applied unless `apply_exif_orientation` is false (the reference
//!   ignores it).

use std::io::Cursor;

use ::image::{ColorType, ImageDecoder};

use super::{DecodedImage, PixelMode, PreprocessConfig};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
    Gif,
    WebP,
    Bmp,
}

impl Format {
    fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Format::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else if bytes.starts_with(b"BM") {
            Some(Format::Bmp)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Gif => "GIF",
            Format::WebP => "WebP",
            Format::Bmp => "BMP",
        }
    }
}

fn corrupt(format: Format, err: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!(
        "could not decode {} image (corrupt or truncated?): {err}",
        format.name()
    ))
}

/// Decodes an image file held in memory, keeping the mode that decides how Pillow would
/// resize it. The pixel limit is checked from the header before pixel memory is allocated.
pub fn decode(bytes: &[u8], cfg: &PreprocessConfig) -> Result<DecodedImage> {
    if bytes.is_empty() {
        crate::invalid_input!("image data is empty");
    }
    let Some(format) = Format::sniff(bytes) else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        crate::invalid_input!(
            "not a supported image: expected JPEG, PNG, WebP, GIF or BMP data, \
             but the first bytes are {}",
            head.join(" ")
        );
    };
    let (img, orientation) = match format {
        Format::Png => decode_png(bytes, cfg)?,
        Format::Gif => (decode_gif(bytes, cfg)?, 1),
        Format::Jpeg => decode_jpeg(bytes, cfg)?,
        Format::WebP => {
            let dec = ::image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
                .map_err(|e| corrupt(format, e))?;
            decode_with_image(format, dec, cfg, None)?
        }
        Format::Bmp => {
            let palette_mode = bmp_palette_mode(bytes);
            let dec = ::image::codecs::bmp::BmpDecoder::new(Cursor::new(bytes))
                .map_err(|e| corrupt(format, e))?;
            decode_with_image(format, dec, cfg, palette_mode)?
        }
    };
    if cfg.apply_exif_orientation && orientation != 1 {
        Ok(apply_orientation(&img, orientation))
    } else {
        Ok(img)
    }
}

/// Decodes through an `image` decoder (JPEG, WebP, BMP). Returns the EXIF orientation.
/// `palette_mode` overrides the mode of an image whose pixels the decoder expanded from a
/// palette (BMP).
fn decode_with_image(
    format: Format,
    mut dec: impl ImageDecoder,
    cfg: &PreprocessConfig,
    palette_mode: Option<PixelMode>,
) -> Result<(DecodedImage, u8)> {
    let (w, h) = dec.dimensions();
    cfg.check_dimensions(u64::from(w), u64::from(h))?;
    let orientation = if cfg.apply_exif_orientation {
        // A malformed EXIF block is not worth refusing the image for.
        dec.orientation().map(|o| o.to_exif()).unwrap_or(1)
    } else {
        1
    };
    let color = dec.color_type();
    let total = usize::try_from(dec.total_bytes())
        .map_err(|_| corrupt(format, "image does not fit in memory"))?;
    let mut limits = ::image::Limits::default();
    // Our pixel limit is the guard; let the decoder allocate what that allows.
    limits.max_alloc = Some((total as u64).saturating_mul(2).max(64 << 20));
    dec.set_limits(limits).map_err(|e| corrupt(format, e))?;
    let mut buf = vec![0u8; total];
    dec.read_image(&mut buf).map_err(|e| corrupt(format, e))?;
    let (w, h) = (w as usize, h as usize);

    let (mode, pixels) = match color {
        ColorType::L8 => (PixelMode::L, buf),
        ColorType::La8 => (PixelMode::La, buf),
        ColorType::Rgb8 => (PixelMode::Rgb, buf),
        ColorType::Rgba8 => (PixelMode::Rgba, buf),
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => {
            // Native-endian u16 samples: keep the high byte, as Pillow's 16-bit unpackers do.
            let hi: Vec<u8> = buf
                .chunks_exact(2)
                .map(|s| (u16::from_ne_bytes([s[0], s[1]]) >> 8) as u8)
                .collect();
            let mode = match color {
                ColorType::L16 => PixelMode::L,
                ColorType::La16 => PixelMode::La,
                ColorType::Rgb16 => PixelMode::Rgb,
                _ => PixelMode::Rgba,
            };
            (mode, hi)
        }
        other => {
            return Err(corrupt(
                format,
                format!("unsupported pixel format {other:?}"),
            ))
        }
    };
    let img = match (palette_mode, mode) {
        // Palette BMPs arrive expanded to RGB.
        (Some(PixelMode::Palette), PixelMode::Rgb) => {
            DecodedImage::new(w, h, PixelMode::Palette, pixels)?
        }
        (Some(m @ (PixelMode::L | PixelMode::Bilevel)), PixelMode::Rgb) => {
            let grey = pixels.chunks_exact(3).map(|p| p[0]).collect();
            DecodedImage::new(w, h, m, grey)?
        }
        _ => DecodedImage::new(w, h, mode, pixels)?,
    };
    Ok((img, orientation))
}

/// JPEG in Pillow's modes: "L", "RGB", or "CMYK" (inverted, as Pillow assumes Adobe
/// conventions for every CMYK JPEG). Returns the EXIF orientation.
fn decode_jpeg(bytes: &[u8], cfg: &PreprocessConfig) -> Result<(DecodedImage, u8)> {
    let format = Format::Jpeg;
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    dec.read_info().map_err(|e| corrupt(format, e))?;
    let info = dec
        .info()
        .ok_or_else(|| corrupt(format, "no frame header"))?;
    cfg.check_dimensions(u64::from(info.width), u64::from(info.height))?;
    let pixels = dec.decode().map_err(|e| corrupt(format, e))?;
    let orientation = if cfg.apply_exif_orientation {
        dec.exif_data()
            .and_then(::image::metadata::Orientation::from_exif_chunk)
            .map_or(1, |o| o.to_exif())
    } else {
        1
    };
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    let img = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => DecodedImage::new(w, h, PixelMode::L, pixels)?,
        jpeg_decoder::PixelFormat::L16 => {
            // 12/16-bit precision JPEGs: native-endian u16, keep the high byte.
            let hi = pixels
                .chunks_exact(2)
                .map(|s| (u16::from_ne_bytes([s[0], s[1]]) >> 8) as u8)
                .collect();
            DecodedImage::new(w, h, PixelMode::L, hi)?
        }
        jpeg_decoder::PixelFormat::RGB24 => DecodedImage::new(w, h, PixelMode::Rgb, pixels)?,
        jpeg_decoder::PixelFormat::CMYK32 => DecodedImage::new(w, h, PixelMode::Cmyk, pixels)?,
    };
    Ok((img, orientation))
}

/// Pillow's BMP rule for 1/4/8-bit images: a palette whose first `colors` entries are the
/// grey ramp (`0, 255` for two colours) makes the image "1" (≤ 2 colours) or "L";
/// otherwise it is "P". `None` for true-colour BMPs or headers this cannot read (the
/// decoder then reports the problem).
fn bmp_palette_mode(bytes: &[u8]) -> Option<PixelMode> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let header = u32_at(14)? as usize;
    let (bits, colors_used, entry) = if header == 12 {
        (u16_at(24)?, 0, 3)
    } else {
        (u16_at(28)?, u32_at(46)?, 4)
    };
    if bits > 8 {
        return None;
    }
    let colors = if colors_used == 0 {
        1usize << bits
    } else {
        colors_used as usize
    };
    let palette = bytes.get(14 + header..)?;
    let ramp: Vec<u8> = if colors == 2 {
        vec![0, 255]
    } else {
        (0..colors).map(|i| i as u8).collect()
    };
    let grey = colors <= 256
        && ramp.iter().enumerate().all(|(i, &v)| {
            // Entries are stored B, G, R(, reserved); grey means all three equal v.
            palette
                .get(i * entry..i * entry + 3)
                .is_some_and(|bgr| bgr.iter().all(|&c| c == v))
        });
    Some(if !grey {
        PixelMode::Palette
    } else if colors <= 2 {
        PixelMode::Bilevel
    } else {
        PixelMode::L
    })
}

/// PNG in Pillow's modes (PngImagePlugin `_MODES`). Returns the EXIF orientation.
fn decode_png(bytes: &[u8], cfg: &PreprocessConfig) -> Result<(DecodedImage, u8)> {
    let format = Format::Png;
    // The IHDR sits at a fixed place: read the size from it so that a zero or huge size gets
    // a clear message before the decoder allocates anything.
    if let Some(ihdr) = bytes.get(12..24).filter(|h| &h[..4] == b"IHDR") {
        let w = u32::from_be_bytes([ihdr[4], ihdr[5], ihdr[6], ihdr[7]]);
        let h = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
        cfg.check_dimensions(u64::from(w), u64::from(h))?;
    }
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::IDENTITY);
    dec.set_ignore_text_chunk(true);
    {
        let info = dec.read_header_info().map_err(|e| corrupt(format, e))?;
        cfg.check_dimensions(u64::from(info.width), u64::from(info.height))?;
    }
    let mut reader = dec.read_info().map_err(|e| corrupt(format, e))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt(format, "image does not fit in memory"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| corrupt(format, e))?;
    let info = reader.info();
    let (w, h) = (frame.width as usize, frame.height as usize);
    let line = frame.line_size;
    let depth = frame.bit_depth as u8;
    let orientation = if cfg.apply_exif_orientation {
        info.exif_metadata
            .as_deref()
            .and_then(::image::metadata::Orientation::from_exif_chunk)
            .map_or(1, |o| o.to_exif())
    } else {
        1
    };

    use png::ColorType as Ct;
    let rows = buf.chunks_exact(line).take(h);
    let img = match frame.color_type {
        Ct::Grayscale if depth < 8 => {
            // 1-bit grey is Pillow's bilevel "1"; 2- and 4-bit grey are "L" with the values
            // stretched to 0..255 (`L;2`, `L;4` unpackers: v * 0x55, v * 0x11).
            let max = (1u16 << depth) - 1;
            let mut px = Vec::with_capacity(w * h);
            for row in rows {
                px.extend(unpack_bits(row, depth, w).map(|v| (u16::from(v) * 255 / max) as u8));
            }
            let mode = if depth == 1 {
                PixelMode::Bilevel
            } else {
                PixelMode::L
            };
            DecodedImage::new(w, h, mode, px)?
        }
        Ct::Indexed => {
            let palette = info.palette.as_deref().unwrap_or(&[]);
            let mut px = Vec::with_capacity(w * h * 3);
            for row in rows {
                for idx in unpack_bits(row, depth, w) {
                    // Entries past the palette are black: Pillow's palette starts zeroed.
                    let i = usize::from(idx) * 3;
                    match palette.get(i..i + 3) {
                        Some(rgb) => px.extend_from_slice(rgb),
                        None => px.extend_from_slice(&[0, 0, 0]),
                    }
                }
            }
            DecodedImage::new(w, h, PixelMode::Palette, px)?
        }
        ct => {
            let (mode, samples) = match ct {
                Ct::Grayscale => (PixelMode::L, 1),
                Ct::GrayscaleAlpha => (PixelMode::La, 2),
                Ct::Rgb => (PixelMode::Rgb, 3),
                _ => (PixelMode::Rgba, 4),
            };
            let n = w * samples;
            let mut px = Vec::with_capacity(n * h);
            for row in rows {
                if depth == 16 {
                    // Big-endian samples; Pillow's `;16B` unpackers keep the high byte.
                    px.extend(row[..2 * n].chunks_exact(2).map(|s| s[0]));
                } else {
                    px.extend_from_slice(&row[..n]);
                }
            }
            DecodedImage::new(w, h, mode, px)?
        }
    };
    Ok((img, orientation))
}

/// The first `w` samples of a packed row of `depth`-bit values (MSB first).
fn unpack_bits(row: &[u8], depth: u8, w: usize) -> impl Iterator<Item = u8> + '_ {
    let per_byte = 8 / usize::from(depth.min(8));
    let mask = ((1u16 << depth.min(8)) - 1) as u8;
    (0..w).map(move |x| {
        if depth >= 8 {
            row[x]
        } else {
            let byte = row[x / per_byte];
            let shift = 8 - usize::from(depth) * (x % per_byte + 1);
            (byte >> shift) & mask
        }
    })
}

/// GIF first frame as Pillow's GifImagePlugin builds it: a canvas the size of the logical
/// screen (grown to fit the frame), filled with the transparent index if the frame has one
/// and index 0 otherwise, the frame's indices pasted at its offset. The image is "P" unless
/// the frame's palette (local, else global) is the identity grey ramp or absent, which
/// makes it "L" (`_is_palette_needed`).
fn decode_gif(bytes: &[u8], cfg: &PreprocessConfig) -> Result<DecodedImage> {
    let format = Format::Gif;
    if let Some(s) = bytes.get(6..10) {
        let w = u16::from_le_bytes([s[0], s[1]]);
        let h = u16::from_le_bytes([s[2], s[3]]);
        // A zero logical screen is legal when the frame has a size (Pillow grows the
        // canvas), so only the limit is checked here.
        cfg.check_dimensions(u64::from(w.max(1)), u64::from(h.max(1)))?;
    }
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    // One byte per pixel: let the decoder allocate what our pixel limit allows (its own
    // default, 50 MB, would refuse large frames with a less helpful message).
    if let Some(limit) = std::num::NonZeroU64::new(cfg.max_pixels) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(limit));
    }
    let mut dec = opts
        .read_info(Cursor::new(bytes))
        .map_err(|e| corrupt(format, e))?;
    let (sw, sh) = (usize::from(dec.width()), usize::from(dec.height()));
    let global = dec.global_palette().map(<[u8]>::to_vec);
    let frame = dec
        .next_frame_info()
        .map_err(|e| corrupt(format, e))?
        .ok_or_else(|| corrupt(format, "the file holds no image frame"))?;
    let (left, top) = (usize::from(frame.left), usize::from(frame.top));
    let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
    let transparent = frame.transparent;
    let palette = frame.palette.clone().or(global);
    let (cw, ch) = (sw.max(left + fw), sh.max(top + fh));
    cfg.check_dimensions(cw as u64, ch as u64)?;

    let mut indices = vec![0u8; fw * fh];
    dec.read_into_buffer(&mut indices)
        .map_err(|e| corrupt(format, e))?;
    let mut canvas = vec![transparent.unwrap_or(0); cw * ch];
    if fw > 0 {
        for (y, row) in indices.chunks_exact(fw).enumerate() {
            let o = (top + y) * cw + left;
            canvas[o..o + fw].copy_from_slice(row);
        }
    }

    let palette_needed = palette.as_deref().is_some_and(|p| {
        p.chunks_exact(3)
            .enumerate()
            .any(|(i, rgb)| rgb.iter().any(|&v| usize::from(v) != i))
    });
    match palette {
        Some(p) if palette_needed => {
            let mut px = Vec::with_capacity(cw * ch * 3);
            for &i in &canvas {
                let i = usize::from(i) * 3;
                px.extend_from_slice(p.get(i..i + 3).unwrap_or(&[0, 0, 0]));
            }
            DecodedImage::new(cw, ch, PixelMode::Palette, px)
        }
        _ => DecodedImage::new(cw, ch, PixelMode::L, canvas),
    }
}

/// Rotates/flips the image for display as EXIF orientation `o` (1–8) says, like Pillow's
/// `ImageOps.exif_transpose`.
fn apply_orientation(img: &DecodedImage, o: u8) -> DecodedImage {
    let (w, h, c) = (img.width, img.height, img.mode.channels());
    let swap = matches!(o, 5..=8);
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    let src = &img.pixels;
    let mut out = vec![0u8; src.len()];
    for oy in 0..oh {
        for ox in 0..ow {
            // Source pixel shown at (ox, oy).
            let (sx, sy) = match o {
                2 => (w - 1 - ox, oy),
                3 => (w - 1 - ox, h - 1 - oy),
                4 => (ox, h - 1 - oy),
                5 => (oy, ox),
                6 => (oy, h - 1 - ox),
                7 => (w - 1 - oy, h - 1 - ox),
                8 => (w - 1 - oy, ox),
                _ => (ox, oy),
            };
            let s = (sy * w + sx) * c;
            let d = (oy * ow + ox) * c;
            out[d..d + c].copy_from_slice(&src[s..s + c]);
        }
    }
    DecodedImage {
        width: ow,
        height: oh,
        mode: img.mode,
        pixels: out,
    }
}
