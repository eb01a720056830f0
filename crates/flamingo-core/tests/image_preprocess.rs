//! The CLIP eval transform against the reference's golden outputs, and decoding behaviour.
//!
//! Golden provenance: `shared/golden/preprocess/` was made by
//! `GOLDEN_PREPROCESS=1 python3 tools/make_golden.py OUT` (open_flamingo 2.0.1's
//! transform: torchvision `Resize(224, BICUBIC)`, `CenterCrop(224)`, `convert("RGB")`,
//! `ToTensor`, `Normalize(CLIP mean, std)` on PIL images, PyTorch 2.11, CPU, float32).

use std::path::PathBuf;

use flamingo_core::image::{
    center_crop_offset, decode, hflip_chw, preprocess, preprocess_bytes, preprocess_raw, resize,
    resized_size, transform_rgb8, DecodedImage, PassOrder, PixelMode, PreprocessConfig, CLIP_MEAN,
    CLIP_STD,
};
use flamingo_core::Error;

fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden/preprocess"
    ))
}

fn read(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference_cfg() -> PreprocessConfig {
    // The reference ignores EXIF orientation; the golden PNGs carry none anyway.
    PreprocessConfig {
        apply_exif_orientation: false,
        ..PreprocessConfig::default()
    }
}

/// Deterministic test pattern with structure at every scale.
fn pattern(w: usize, h: usize, c: usize) -> Vec<u8> {
    let mut px = Vec::with_capacity(w * h * c);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let v = (x * 37 + y * 11 + ch * 71 + (x * y) % 13 * 17) % 256;
                px.push(v as u8);
            }
        }
    }
    px
}

fn expect_invalid_input<T: std::fmt::Debug>(r: flamingo_core::Result<T>, needle: &str) -> String {
    match r {
        Err(Error::InvalidInput(msg)) => {
            assert!(
                msg.contains(needle),
                "error message {msg:?} should mention {needle:?}"
            );
            msg
        }
        other => panic!("expected InvalidInput mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn golden_images_match_the_reference_transform() {
    let expected = candle_core::safetensors::load(
        golden_dir().join("expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("golden expected.safetensors");
    let cfg = reference_cfg();
    for (name, mode) in [
        ("wide", PixelMode::Rgb),
        ("tall", PixelMode::Rgb),
        ("small_gray", PixelMode::L),
        ("rgba", PixelMode::Rgba),
    ] {
        let bytes = read(&format!("{name}.png"));
        let img = decode(&bytes, &cfg).unwrap();
        assert_eq!(img.mode(), mode, "{name}: decoded mode");
        let ours = preprocess(&img, &cfg).unwrap();
        let want = expected[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(expected[name].dims(), &[3, 224, 224]);
        assert_eq!(ours.len(), want.len());
        let (mut max, mut sum, mut differing) = (0f32, 0f64, 0usize);
        for (a, b) in ours.iter().zip(&want) {
            let d = (a - b).abs();
            max = max.max(d);
            sum += f64::from(d);
            differing += usize::from(d > 0.0);
        }
        let mean = sum / want.len() as f64;
        println!("{name}: max abs diff {max:e}, mean abs diff {mean:e}, {differing} values differ");
        // The bar is 0.02 / 0.002; an 8-bit step is ~0.015, so 1e-6 means every byte
        // before normalisation equals Pillow's.
        assert!(max <= 1e-6, "{name}: max abs diff {max}");
        assert!(mean <= 1e-7, "{name}: mean abs diff {mean}");
    }
}

#[test]
fn transparent_pixels_come_out_black_after_premultiplied_resize() {
    // rgba.png's first column has alpha 0 (alpha = 3x mod 256); the reference shows black
    // there because RGBA is resized as premultiplied RGBa.
    let img = decode(&read("rgba.png"), &reference_cfg()).unwrap();
    let w = img.width();
    let source_column: Vec<&[u8]> = (0..img.height())
        .map(|y| &img.pixels()[y * w * 4..][..4])
        .collect();
    assert!(
        source_column.iter().all(|p| p[3] == 0),
        "column 0 is fully transparent"
    );
    assert!(
        source_column.iter().any(|p| p[..3] != [0, 0, 0]),
        "with non-black colours"
    );
    let rgb = transform_rgb8(&img, &reference_cfg()).unwrap();
    for y in 0..224 {
        assert_eq!(&rgb[y * 224 * 3..][..3], &[0, 0, 0], "row {y}");
    }
}

#[test]
fn same_size_rgba_is_not_premultiplied() {
    // Pillow's resize to the same size is a copy, so no alpha round trip happens and a
    // transparent pixel keeps its colour.
    let mut px = pattern(224, 224, 4);
    for p in px.chunks_exact_mut(4) {
        p[3] = 0;
    }
    let rgb = preprocess_raw(&px, 224, 224, 4, &reference_cfg()).unwrap();
    let img = DecodedImage::new(224, 224, PixelMode::Rgba, px.clone()).unwrap();
    let direct = transform_rgb8(&img, &reference_cfg()).unwrap();
    for (d, s) in direct.chunks_exact(3).zip(px.chunks_exact(4)) {
        assert_eq!(d, &s[..3]);
    }
    assert_eq!(rgb, preprocess(&img, &reference_cfg()).unwrap());
}

#[test]
fn resize_rule_sets_short_side_and_truncates_long_side() {
    assert_eq!(resized_size(320, 240, 224), (298, 224)); // 298.67 truncated
    assert_eq!(resized_size(150, 300, 224), (224, 448));
    assert_eq!(resized_size(100, 80, 224), (280, 224));
    assert_eq!(resized_size(224, 500, 224), (224, 500)); // short side already 224: no-op
    assert_eq!(resized_size(301, 200, 224), (337, 224)); // 337.12
    assert_eq!(resized_size(1, 3, 224), (224, 672));
}

#[test]
fn center_crop_offset_rounds_half_to_even() {
    assert_eq!(center_crop_offset(224, 224), 0);
    assert_eq!(center_crop_offset(225, 224), 0); // round(0.5) = 0
    assert_eq!(center_crop_offset(227, 224), 2); // round(1.5) = 2
    assert_eq!(center_crop_offset(229, 224), 2); // round(2.5) = 2
    assert_eq!(center_crop_offset(231, 224), 4); // round(3.5) = 4
    assert_eq!(center_crop_offset(337, 224), 56); // round(56.5) = 56
    assert_eq!(center_crop_offset(298, 224), 37);
    // Smaller than the crop: torchvision pads (crop - len) // 2 zeros before the image.
    assert_eq!(center_crop_offset(221, 224), -1);
}

#[test]
fn crop_landing_on_half_pixel_takes_the_even_offset() {
    let cfg = reference_cfg();
    // 227x229 with the short side 227 != 224 would resize; keep the short side at 224 so
    // the crop alone decides: 227 wide -> offset round(1.5) = 2; 229 tall -> round(2.5) = 2.
    for (w, h, ox, oy) in [(227, 224, 2, 0), (224, 229, 0, 2), (225, 224, 0, 0)] {
        let px = pattern(w, h, 3);
        let img = DecodedImage::new(w, h, PixelMode::Rgb, px.clone()).unwrap();
        let rgb = transform_rgb8(&img, &cfg).unwrap();
        for y in 0..224 {
            let got = &rgb[y * 224 * 3..(y + 1) * 224 * 3];
            let src = &px[((y + oy) * w + ox) * 3..((y + oy) * w + ox + 224) * 3];
            assert_eq!(got, src, "{w}x{h} row {y}");
        }
    }
    // With a resize: 301x200 -> 337x224, crop offset 56.5 -> 56. The windowed computation
    // must equal resizing the whole image and cropping it.
    let img = DecodedImage::new(301, 200, PixelMode::Rgb, pattern(301, 200, 3)).unwrap();
    let full = resize(&img, 337, 224, cfg.pass_order).unwrap();
    let rgb = transform_rgb8(&img, &cfg).unwrap();
    for y in 0..224 {
        let src = &full.pixels()[(y * 337 + 56) * 3..(y * 337 + 56 + 224) * 3];
        assert_eq!(&rgb[y * 224 * 3..(y + 1) * 224 * 3], src, "row {y}");
    }
}

#[test]
fn windowed_resize_equals_full_resize_then_crop_for_every_mode_and_pass_order() {
    for order in [PassOrder::Pillow13, PassOrder::HorizontalFirst] {
        let cfg = PreprocessConfig {
            pass_order: order,
            ..reference_cfg()
        };
        windowed_equals_full(&cfg);
    }
}

fn windowed_equals_full(cfg: &PreprocessConfig) {
    for mode in [
        PixelMode::L,
        PixelMode::La,
        PixelMode::Rgb,
        PixelMode::Rgba,
        PixelMode::Palette,
        PixelMode::Bilevel,
    ] {
        // (250, 600) shrinks the height by more than twice the width: Pillow 13 runs the
        // vertical pass first there.
        for (w, h) in [(300, 250), (90, 130), (640, 230), (250, 600)] {
            let mut px = pattern(w, h, mode.channels());
            if mode == PixelMode::Bilevel {
                px.iter_mut()
                    .for_each(|v| *v = if *v > 127 { 255 } else { 0 });
            }
            let img = DecodedImage::new(w, h, mode, px).unwrap();
            let (rw, rh) = resized_size(w, h, 224);
            let full = resize(&img, rw, rh, cfg.pass_order).unwrap();
            let (ox, oy) = (
                center_crop_offset(rw, 224) as usize,
                center_crop_offset(rh, 224) as usize,
            );
            let crop: Vec<u8> = (0..224)
                .flat_map(|y| {
                    let c = mode.channels();
                    full.pixels()[((y + oy) * rw + ox) * c..((y + oy) * rw + ox + 224) * c].to_vec()
                })
                .collect();
            let cropped = DecodedImage::new(224, 224, mode, crop).unwrap();
            assert_eq!(
                transform_rgb8(&img, cfg).unwrap(),
                transform_rgb8(&cropped, cfg).unwrap(),
                "{mode:?} {w}x{h} {:?}",
                cfg.pass_order
            );
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The test pattern as an image of a Pillow mode, built the same way as on the Python side.
fn pattern_image(mode: PixelMode, w: usize, h: usize) -> DecodedImage {
    let px = match mode {
        PixelMode::Bilevel => pattern(w, h, 1)
            .into_iter()
            .map(|v| if v > 127 { 255 } else { 0 })
            .collect(),
        PixelMode::Palette => pattern(w, h, 1)
            .into_iter()
            .flat_map(|v| {
                let i = v % 16;
                [i * 16, 255 - i * 16, ((u32::from(i) * 37) % 256) as u8]
            })
            .collect(),
        m => pattern(w, h, m.channels()),
    };
    DecodedImage::new(w, h, mode, px).unwrap()
}

#[test]
fn transform_matches_pillow_checksums_for_every_mode_and_both_pass_orders() {
    // Expected values: FNV-1a-64 of the 224x224 RGB bytes of
    // `img.resize(torchvision size, BICUBIC).crop(centre).convert("RGB")` computed with
    // Pillow 13.0.0 and Pillow 12.3.0 on the same pattern (x*37 + y*11 + c*71 +
    // (x*y % 13)*17 mod 256; "1" thresholded at 127; "P" = 16-entry palette indexed by
    // v % 16). The tall downscales are where Pillow 13 runs the vertical pass first.
    let cases: [(PixelMode, usize, usize, u64, u64); 8] = [
        (
            PixelMode::Rgb,
            250,
            600,
            0xc8a86d96da0fff08,
            0x566159033f589a20,
        ),
        (
            PixelMode::Rgba,
            250,
            600,
            0x70fdcc779ba530c7,
            0xfa6dd154334f10e0,
        ),
        (
            PixelMode::L,
            251,
            700,
            0xb6df96d93e6e14bf,
            0xcca2f2833ab3102f,
        ),
        (
            PixelMode::La,
            300,
            250,
            0x1b4824b76fe0287b,
            0x1b4824b76fe0287b,
        ),
        (
            PixelMode::Palette,
            300,
            250,
            0x28555865ceb7627b,
            0x28555865ceb7627b,
        ),
        (
            PixelMode::Bilevel,
            250,
            600,
            0xc23f8979521b4ca6,
            0xc23f8979521b4ca6,
        ),
        (
            PixelMode::Rgb,
            97,
            60,
            0x2ebcde1bcc796972,
            0x2ebcde1bcc796972,
        ),
        (
            PixelMode::Rgba,
            301,
            200,
            0x6dc81127447dd142,
            0x6dc81127447dd142,
        ),
    ];
    for (mode, w, h, pillow13, pillow12) in cases {
        let img = pattern_image(mode, w, h);
        for (order, want) in [
            (PassOrder::Pillow13, pillow13),
            (PassOrder::HorizontalFirst, pillow12),
        ] {
            let cfg = PreprocessConfig {
                pass_order: order,
                ..reference_cfg()
            };
            let got = fnv1a64(&transform_rgb8(&img, &cfg).unwrap());
            assert_eq!(got, want, "{mode:?} {w}x{h} {order:?}: {got:#x}");
        }
    }
}

#[test]
fn normalisation_uses_clip_mean_and_std() {
    let cfg = reference_cfg();
    let px = vec![255u8; 224 * 224 * 3];
    let out = preprocess_raw(&px, 224, 224, 3, &cfg).unwrap();
    assert_eq!(out.len(), 3 * 224 * 224);
    for c in 0..3 {
        let want = (1.0f32 - CLIP_MEAN[c]) / CLIP_STD[c];
        assert_eq!(out[c * 224 * 224], want);
        assert_eq!(out[(c + 1) * 224 * 224 - 1], want);
    }
}

#[test]
fn grey_raw_input_is_expanded_after_the_crop() {
    let cfg = reference_cfg();
    let grey = pattern(300, 260, 1);
    let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v, v]).collect();
    let a = preprocess_raw(&grey, 300, 260, 1, &cfg).unwrap();
    let b = preprocess_raw(&rgb, 300, 260, 3, &cfg).unwrap();
    // Identical channels resize identically, so grey-then-expand equals expand-then-resize.
    let plane = 224 * 224;
    for c in 0..3 {
        assert_eq!(&a[c * plane..(c + 1) * plane].len(), &plane);
    }
    let to_u8 = |v: &[f32], c: usize| -> Vec<u8> {
        v[c * plane..(c + 1) * plane]
            .iter()
            .map(|x| ((x * CLIP_STD[c] + CLIP_MEAN[c]) * 255.0).round() as u8)
            .collect()
    };
    for c in 0..3 {
        assert_eq!(to_u8(&a, c), to_u8(&b, c), "channel {c}");
    }
}

#[test]
fn hflip_reverses_every_row_of_every_channel() {
    let size = 4;
    let mut data: Vec<f32> = (0..3 * size * size).map(|v| v as f32).collect();
    hflip_chw(&mut data, size);
    assert_eq!(&data[..4], &[3.0, 2.0, 1.0, 0.0]);
    assert_eq!(&data[44..48], &[47.0, 46.0, 45.0, 44.0]);
    hflip_chw(&mut data, size);
    assert_eq!(data, (0..48).map(|v| v as f32).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- decoding and modes

fn encode_png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    encode_png_with(w, h, color, depth, data, |_| {})
}

fn encode_png_with(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    setup: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>),
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        setup(&mut enc);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}

#[test]
fn palette_png_is_resized_with_nearest_neighbour() {
    let palette = [10u8, 20, 30, 200, 100, 50, 0, 255, 0, 90, 90, 250];
    let (w, h) = (300u32, 250u32);
    let idx: Vec<u8> = pattern(w as usize, h as usize, 1)
        .iter()
        .map(|v| v % 4)
        .collect();
    let bytes = encode_png_with(
        w,
        h,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &idx,
        |e| {
            e.set_palette(palette.to_vec());
            // A tRNS chunk must not turn the image into RGBA (Pillow keeps "P").
            e.set_trns(vec![0u8, 255, 255, 255]);
        },
    );
    let cfg = reference_cfg();
    let img = decode(&bytes, &cfg).unwrap();
    assert_eq!(img.mode(), PixelMode::Palette);
    assert_eq!(&img.pixels()[..3], &palette[usize::from(idx[0]) * 3..][..3]);
    let rgb = transform_rgb8(&img, &cfg).unwrap();
    // Nearest neighbour never invents colours.
    for px in rgb.chunks_exact(3) {
        assert!(
            palette.chunks_exact(3).any(|p| p == px),
            "{px:?} is not a palette colour"
        );
    }
}

#[test]
fn rgb_png_with_trns_stays_rgb() {
    let data = pattern(40, 30, 3);
    let bytes = encode_png_with(
        40,
        30,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &data,
        |e| {
            e.set_trns(vec![0u8, data[0], 0, data[1], 0, data[2]]);
        },
    );
    let img = decode(&bytes, &reference_cfg()).unwrap();
    assert_eq!(img.mode(), PixelMode::Rgb);
    assert_eq!(img.pixels(), &data[..]);
}

#[test]
fn low_bit_depth_grey_png_matches_pillow_modes() {
    // 1-bit grey is Pillow's bilevel "1" (nearest); 4-bit grey is "L" with values * 17.
    let one_bit = vec![0b1010_0000u8, 0b0101_0000];
    let img = decode(
        &encode_png(
            4,
            2,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            &one_bit,
        ),
        &reference_cfg(),
    )
    .unwrap();
    assert_eq!(img.mode(), PixelMode::Bilevel);
    assert_eq!(img.pixels(), &[255, 0, 255, 0, 0, 255, 0, 255]);

    let four_bit = vec![0x0F, 0x81];
    let img = decode(
        &encode_png(
            4,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Four,
            &four_bit,
        ),
        &reference_cfg(),
    )
    .unwrap();
    assert_eq!(img.mode(), PixelMode::L);
    assert_eq!(img.pixels(), &[0, 255, 136, 17]);
}

#[test]
fn sixteen_bit_png_keeps_the_high_byte() {
    let samples: [u16; 6] = [0x1234, 0xABCD, 0x00FF, 0xFF00, 0x8080, 0x7FFF];
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_be_bytes()).collect();
    let rgb = decode(
        &encode_png(2, 1, png::ColorType::Rgb, png::BitDepth::Sixteen, &data),
        &reference_cfg(),
    )
    .unwrap();
    assert_eq!(rgb.mode(), PixelMode::Rgb);
    assert_eq!(rgb.pixels(), &[0x12, 0xAB, 0x00, 0xFF, 0x80, 0x7F]);
    // 16-bit grey: Pillow's "I;16" would saturate in convert("RGB"); we use the high byte.
    let grey = decode(
        &encode_png(
            3,
            2,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &data,
        ),
        &reference_cfg(),
    )
    .unwrap();
    assert_eq!(grey.mode(), PixelMode::L);
    assert_eq!(grey.pixels(), &[0x12, 0xAB, 0x00, 0xFF, 0x80, 0x7F]);
}

#[test]
fn grey_alpha_png_is_premultiplied_like_rgba() {
    let (w, h) = (260usize, 240usize);
    let la = pattern(w, h, 2);
    let bytes = encode_png(
        w as u32,
        h as u32,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &la,
    );
    let img = decode(&bytes, &reference_cfg()).unwrap();
    assert_eq!(img.mode(), PixelMode::La);
    // LA resizes exactly like RGBA with three equal colour channels.
    let rgba: Vec<u8> = la
        .chunks_exact(2)
        .flat_map(|p| [p[0], p[0], p[0], p[1]])
        .collect();
    let as_rgba = DecodedImage::new(w, h, PixelMode::Rgba, rgba).unwrap();
    assert_eq!(
        transform_rgb8(&img, &reference_cfg()).unwrap(),
        transform_rgb8(&as_rgba, &reference_cfg()).unwrap()
    );
}

#[test]
fn gif_first_frame_is_palette_or_grey_like_pillow() {
    let encode = |palette: &[u8], idx: &[u8], w: u16, h: u16| {
        let mut out = Vec::new();
        {
            let mut enc = gif::Encoder::new(&mut out, w, h, palette).unwrap();
            let frame = gif::Frame {
                width: w,
                height: h,
                buffer: std::borrow::Cow::Borrowed(idx),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).unwrap();
        }
        out
    };
    let idx: Vec<u8> = pattern(30, 20, 1).iter().map(|v| v % 4).collect();
    let colour = encode(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9], &idx, 30, 20);
    let img = decode(&colour, &reference_cfg()).unwrap();
    assert_eq!(img.mode(), PixelMode::Palette);
    assert_eq!((img.width(), img.height()), (30, 20));
    // An identity grey palette makes Pillow open the GIF as "L".
    let grey = encode(&[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], &idx, 30, 20);
    let img = decode(&grey, &reference_cfg()).unwrap();
    assert_eq!(img.mode(), PixelMode::L);
    assert_eq!(img.pixels(), &idx[..]);
}

#[test]
fn bmp_jpeg_and_webp_decode_to_rgb() {
    let (w, h) = (64u32, 48u32);
    let px = pattern(w as usize, h as usize, 3);
    let cfg = reference_cfg();

    let mut bmp = Vec::new();
    ::image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .encode(&px, w, h, ::image::ExtendedColorType::Rgb8)
        .unwrap();
    let img = decode(&bmp, &cfg).unwrap();
    assert_eq!(img.mode(), PixelMode::Rgb);
    assert_eq!(img.pixels(), &px[..]);

    let mut webp = Vec::new();
    ::image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(&px, w, h, ::image::ExtendedColorType::Rgb8)
        .unwrap();
    let img = decode(&webp, &cfg).unwrap();
    assert_eq!(img.mode(), PixelMode::Rgb);
    assert_eq!(img.pixels(), &px[..]);

    let flat = vec![120u8; (w * h * 3) as usize];
    let jpeg = encode_jpeg(&flat, w, h, ::image::ExtendedColorType::Rgb8);
    let img = decode(&jpeg, &cfg).unwrap();
    assert_eq!(img.mode(), PixelMode::Rgb);
    assert_eq!((img.width(), img.height()), (64, 48));
    assert!(img.pixels().iter().all(|&v| v.abs_diff(120) <= 2));
    let out = preprocess_bytes(&jpeg, &cfg).unwrap();
    assert_eq!(out.len(), 3 * 224 * 224);
}

#[test]
fn grey_jpeg_decodes_as_l() {
    let grey = vec![77u8; 32 * 16];
    let jpeg = encode_jpeg(&grey, 32, 16, ::image::ExtendedColorType::L8);
    let img = decode(&jpeg, &reference_cfg()).unwrap();
    assert_eq!(img.mode(), PixelMode::L);
}

fn encode_jpeg(px: &[u8], w: u32, h: u32, color: ::image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode(px, w, h, color)
        .unwrap();
    out
}

/// Inserts an APP1 Exif segment holding only an orientation tag right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF header (little endian), IFD0 with one entry: tag 0x0112 SHORT count 1.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied_by_default_and_can_be_disabled() {
    // 48x16: left half red, right half blue (JPEG keeps flat 8x8-aligned blocks clean).
    let (w, h) = (48u32, 16u32);
    let mut px = Vec::new();
    for _y in 0..h {
        for x in 0..w {
            px.extend_from_slice(if x < 24 { &[255, 0, 0] } else { &[0, 0, 255] });
        }
    }
    let jpeg = encode_jpeg(&px, w, h, ::image::ExtendedColorType::Rgb8);
    let is_red = |p: &[u8]| p[0] > 200 && p[2] < 60;
    let is_blue = |p: &[u8]| p[2] > 200 && p[0] < 60;

    // Orientation 6: the stored image must be rotated 90° clockwise for display, so the
    // left (red) half ends up on top.
    let rotated = with_exif_orientation(&jpeg, 6);
    let img = decode(&rotated, &PreprocessConfig::default()).unwrap();
    assert_eq!((img.width(), img.height()), (16, 48));
    let at = |img: &DecodedImage, x: usize, y: usize| {
        let c = img.mode().channels();
        img.pixels()[(y * img.width() + x) * c..][..c].to_vec()
    };
    assert!(is_red(&at(&img, 8, 4)), "{:?}", at(&img, 8, 4));
    assert!(is_blue(&at(&img, 8, 44)), "{:?}", at(&img, 8, 44));

    // Orientation 8 (90° counter-clockwise): the red half ends up at the bottom.
    let img = decode(
        &with_exif_orientation(&jpeg, 8),
        &PreprocessConfig::default(),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (16, 48));
    assert!(is_blue(&at(&img, 8, 4)) && is_red(&at(&img, 8, 44)));

    // Orientation 3 (180°): same size, halves swapped.
    let img = decode(
        &with_exif_orientation(&jpeg, 3),
        &PreprocessConfig::default(),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (48, 16));
    assert!(is_blue(&at(&img, 4, 8)) && is_red(&at(&img, 44, 8)));

    // The reference ignores the tag.
    let img = decode(&rotated, &reference_cfg()).unwrap();
    assert_eq!((img.width(), img.height()), (48, 16));
    assert!(is_red(&at(&img, 4, 8)) && is_blue(&at(&img, 44, 8)));
}

// ---------------------------------------------------------------- bad input

/// A PNG signature and an IHDR chunk claiming `w`x`h`, with a correct CRC, and nothing else.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    out
}

#[test]
fn huge_png_header_is_refused_before_decoding() {
    let bytes = png_header_only(50_000, 50_000);
    let start = std::time::Instant::now();
    let msg = expect_invalid_input(decode(&bytes, &PreprocessConfig::default()), "max_pixels");
    assert!(msg.contains("50000x50000"), "{msg}");
    assert!(
        start.elapsed().as_millis() < 500,
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn pixel_limit_is_configurable() {
    let cfg = PreprocessConfig {
        max_pixels: 10_000,
        ..reference_cfg()
    };
    expect_invalid_input(decode(&read("wide.png"), &cfg), "over the limit of 10000");
    expect_invalid_input(
        preprocess_raw(&pattern(200, 100, 3), 200, 100, 3, &cfg),
        "over the limit",
    );
    // Absurdly elongated images are refused too: 1x2000 resizes to 224x448000.
    let cfg = PreprocessConfig::default();
    expect_invalid_input(
        preprocess_raw(&pattern(1, 2000, 3), 1, 2000, 3, &cfg),
        "resizes to 224x448000",
    );
}

#[test]
fn zero_sized_images_are_refused() {
    expect_invalid_input(
        decode(&png_header_only(0, 0), &PreprocessConfig::default()),
        "zero size",
    );
    expect_invalid_input(
        preprocess_raw(&[], 0, 0, 3, &PreprocessConfig::default()),
        "zero size",
    );
    expect_invalid_input(DecodedImage::new(0, 5, PixelMode::Rgb, vec![]), "zero size");
}

#[test]
fn non_image_and_empty_bytes_are_refused() {
    let cfg = PreprocessConfig::default();
    expect_invalid_input(decode(&[], &cfg), "empty");
    let msg = expect_invalid_input(decode(b"hello, world", &cfg), "not a supported image");
    assert!(msg.contains("68 65 6c 6c"), "{msg}");
    expect_invalid_input(
        preprocess_bytes(b"%PDF-1.4 ...", &cfg),
        "JPEG, PNG, WebP, GIF or BMP",
    );
}

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let cfg = PreprocessConfig::default();
    let png = read("wide.png");
    expect_invalid_input(decode(&png[..png.len() / 2], &cfg), "could not decode PNG");
    expect_invalid_input(
        decode(&png_header_only(10, 10), &cfg),
        "could not decode PNG",
    );
    // Flip bytes inside the compressed data: the chunk CRC no longer matches.
    let mut bad = png.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 16] {
        *b ^= 0x5A;
    }
    expect_invalid_input(decode(&bad, &cfg), "could not decode PNG");

    let jpeg = encode_jpeg(
        &pattern(64, 64, 3),
        64,
        64,
        ::image::ExtendedColorType::Rgb8,
    );
    expect_invalid_input(decode(&jpeg[..20], &cfg), "could not decode JPEG");
    expect_invalid_input(decode(b"GIF89a\x10\x00", &cfg), "could not decode GIF");
    expect_invalid_input(decode(b"BM\x00\x00\x00", &cfg), "could not decode BMP");
    expect_invalid_input(
        decode(b"RIFF\x04\x00\x00\x00WEBPVP8 ", &cfg),
        "could not decode WebP",
    );
}

#[test]
fn raw_input_with_wrong_length_or_channels_is_refused() {
    let cfg = PreprocessConfig::default();
    expect_invalid_input(preprocess_raw(&[0; 10], 2, 2, 3, &cfg), "needs 12");
    expect_invalid_input(preprocess_raw(&[0; 20], 2, 2, 5, &cfg), "channels");
    let bad_cfg = PreprocessConfig {
        std: [0.2, 0.0, 0.2],
        ..PreprocessConfig::default()
    };
    expect_invalid_input(preprocess_raw(&[0; 12], 2, 2, 3, &bad_cfg), "std[1]");
}
