//! The demo task's data: the caption grammar and the procedural renderer
//! (`flamingo_core::demo::shapes`).

use std::collections::HashSet;

use flamingo_core::demo::shapes::{
    normalize_caption, sample, sample_for, samples, Caption, Colour, Scene, Shape, IMAGE_SIZE,
    NUM_CAPTIONS,
};
use flamingo_core::demo::{tokenizer_config_json, tokenizer_json, VOCAB};
use flamingo_core::text::FlamingoTokenizer;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn the_grammar_has_96_distinct_captions_that_parse_back() {
    let all = Caption::all();
    assert_eq!(all.len(), NUM_CAPTIONS);
    assert_eq!(NUM_CAPTIONS, 3 * 8 * 4);
    let texts: HashSet<String> = all.iter().map(Caption::text).collect();
    assert_eq!(texts.len(), NUM_CAPTIONS);
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.index(), i);
        assert_eq!(Caption::from_index(i), *c);
        assert_eq!(Caption::parse(&c.text()), Some(*c), "{}", c.text());
    }
}

#[test]
fn captions_agree_in_number() {
    let one = Caption {
        count: 1,
        colour: Colour::Red,
        shape: Shape::Circle,
    };
    let three = Caption {
        count: 3,
        colour: Colour::Black,
        shape: Shape::Star,
    };
    assert_eq!(one.text(), "one red circle");
    assert_eq!(three.text(), "three black stars");
    assert_eq!(Caption::parse("two red circle"), None);
    assert_eq!(Caption::parse("one red circles"), None);
    assert_eq!(Caption::parse("two red circles please"), None);
    assert_eq!(Caption::parse("four red circles"), None);
    assert_eq!(Caption::parse("two pink circles"), None);
}

#[test]
fn normalisation_ignores_case_spacing_and_a_final_full_stop() {
    assert_eq!(normalize_caption("  Two  RED circles. "), "two red circles");
    assert_eq!(
        Caption::parse(" Three Blue Squares.").map(|c| c.text()),
        Some("three blue squares".to_string())
    );
}

#[test]
fn samples_are_deterministic_per_seed_and_index() {
    let a = sample(7, 42, IMAGE_SIZE);
    let b = sample(7, 42, IMAGE_SIZE);
    assert_eq!(a.caption, b.caption);
    assert_eq!(a.pixels, b.pixels);
    // A sample does not depend on which samples were drawn with it.
    let batch = samples(7, 40, 5, IMAGE_SIZE);
    assert_eq!(batch[2].pixels, a.pixels);
    // Another seed or index gives another image.
    assert_ne!(sample(8, 42, IMAGE_SIZE).pixels, a.pixels);
    assert_ne!(sample(7, 43, IMAGE_SIZE).pixels, a.pixels);
    assert_eq!(a.pixels.len(), IMAGE_SIZE * IMAGE_SIZE * 3);
}

#[test]
fn every_caption_is_reachable_from_a_random_set() {
    let seen: HashSet<Caption> = samples(3, 0, 2000, 16)
        .into_iter()
        .map(|s| s.caption)
        .collect();
    assert_eq!(seen.len(), NUM_CAPTIONS);
}

#[test]
fn objects_fit_the_image_and_never_overlap() {
    let mut rng = StdRng::seed_from_u64(11);
    for caption in Caption::all() {
        for _ in 0..5 {
            let scene = Scene::random(caption, IMAGE_SIZE, &mut rng);
            assert_eq!(scene.objects.len(), caption.count);
            let s = IMAGE_SIZE as f32;
            for (i, o) in scene.objects.iter().enumerate() {
                assert!(o.cx - o.radius >= 0.0 && o.cx + o.radius <= s, "{o:?}");
                assert!(o.cy - o.radius >= 0.0 && o.cy + o.radius <= s, "{o:?}");
                for p in &scene.objects[i + 1..] {
                    let d = ((p.cx - o.cx).powi(2) + (p.cy - o.cy).powi(2)).sqrt();
                    assert!(d >= p.radius + o.radius, "{o:?} overlaps {p:?}");
                }
            }
        }
    }
}

/// Counts 8-connected regions of pixels close to the objects' colour (closer than half the
/// minimum background contrast): one per object.
fn count_blobs(pixels: &[u8], size: usize, rgb: [u8; 3]) -> usize {
    let close = |i: usize| {
        (0..3)
            .map(|c| (pixels[i * 3 + c] as f32 - rgb[c] as f32).powi(2))
            .sum::<f32>()
            .sqrt()
            < 50.0
    };
    let mut seen = vec![false; size * size];
    let mut blobs = 0;
    for start in 0..size * size {
        if seen[start] || !close(start) {
            continue;
        }
        blobs += 1;
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % size, i / size);
            let mut next = Vec::new();
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if (0..size as i64).contains(&nx) && (0..size as i64).contains(&ny) {
                        next.push(ny as usize * size + nx as usize);
                    }
                }
            }
            for j in next {
                if !seen[j] && close(j) {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    blobs
}

#[test]
fn the_image_shows_as_many_objects_of_the_caption_colour_as_the_caption_says() {
    let mut rng = StdRng::seed_from_u64(5);
    for caption in Caption::all().into_iter().cycle().take(4 * 96) {
        let scene = Scene::random(caption, IMAGE_SIZE, &mut rng);
        let pixels = scene.render();
        assert_eq!(
            count_blobs(&pixels, IMAGE_SIZE, scene.rgb),
            caption.count,
            "{}",
            caption.text()
        );
    }
}

#[test]
fn shapes_differ_in_area_by_less_than_a_factor_of_two() {
    // A fixed object drawn as each shape: no shape is recognisable by its size alone.
    let mut rng = StdRng::seed_from_u64(1);
    let areas: Vec<usize> = Shape::ALL
        .iter()
        .map(|&shape| {
            let caption = Caption {
                count: 1,
                colour: Colour::White,
                shape,
            };
            let mut scene = Scene::random(caption, IMAGE_SIZE, &mut rng);
            scene.objects[0].radius = 10.0;
            scene.objects[0].cx = 32.0;
            scene.objects[0].cy = 32.0;
            scene.noise = 0;
            let px = scene.render();
            px.chunks(3).filter(|p| p.iter().all(|&v| v > 200)).count()
        })
        .collect();
    let (lo, hi) = (
        *areas.iter().min().unwrap() as f64,
        *areas.iter().max().unwrap() as f64,
    );
    assert!(hi / lo < 2.0, "areas {areas:?}");
}

#[test]
fn sample_for_draws_the_requested_caption() {
    let mut rng = StdRng::seed_from_u64(9);
    let c = Caption::from_index(77);
    assert_eq!(sample_for(c, &mut rng, IMAGE_SIZE).caption, c);
}

#[test]
fn the_demo_tokenizer_covers_the_grammar_and_the_prompt_format() {
    let dir = std::env::temp_dir().join(format!("flamingo-demo-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tokenizer_json().to_string().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config_json().to_string().as_bytes(),
    )
    .unwrap();
    let tok = FlamingoTokenizer::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(tok.len(), VOCAB.len() + 3);
    assert_eq!(tok.end_of_chunk_token_id() as usize, VOCAB.len());
    assert_eq!(tok.media_token_id() as usize, VOCAB.len() + 1);
    let unk = 1;
    for c in Caption::all() {
        let ids = tok.encode(&c.text(), false).unwrap();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&unk), "{}", c.text());
        assert_eq!(tok.decode(&ids, true).unwrap(), c.text());
    }
    let ids = tok
        .encode("<image>Output:two red circles<|endofchunk|>", false)
        .unwrap();
    assert_eq!(ids.len(), 7);
    assert_eq!(ids[0], tok.media_token_id());
    assert_eq!(ids[6], tok.end_of_chunk_token_id());
}
