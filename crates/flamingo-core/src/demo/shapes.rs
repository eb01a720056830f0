//! Procedural shape scenes and their captions: the demo task's data (issue: "the demo that
//! learns for real"). A closed grammar — `"{one|two|three} {colour} {shape}[s]"`, e.g.
//! `"two red circles"` — over 3 counts × 8 colours × 4 shapes = 96 captions, and a renderer
//! that draws a matching image with varied object sizes, positions, rotations, shades and
//! backgrounds.
//!
//! Everything is a pure function of a seed: sample `i` of a data set is drawn from its own
//! generator (seeded from the set's seed and `i`), so a sample never depends on how many
//! were drawn before it, and train / held-out sets differ only by their seeds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Side of the square images the default model was trained on (pixels).
pub const IMAGE_SIZE: usize = 64;

/// Object counts a caption can state, as words (index 0 is one object).
pub const COUNT_WORDS: [&str; 3] = ["one", "two", "three"];

/// The object colours. All objects of a scene share one colour and one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The nominal RGB value; scenes jitter it a little per image.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 225],
            Colour::Yellow => [240, 220, 40],
            Colour::Purple => [145, 55, 185],
            Colour::Orange => [245, 140, 25],
            Colour::White => [250, 250, 250],
            Colour::Black => [12, 12, 12],
        }
    }

    pub fn index(self) -> usize {
        Colour::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    pub fn from_word(word: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.word() == word)
    }
}

/// The object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    pub fn singular(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
        }
    }

    pub fn index(self) -> usize {
        Shape::ALL.iter().position(|&s| s == self).unwrap_or(0)
    }

    /// The shape and whether the word was plural.
    pub fn from_word(word: &str) -> Option<(Shape, bool)> {
        Shape::ALL.into_iter().find_map(|s| {
            if s.singular() == word {
                Some((s, false))
            } else if s.plural() == word {
                Some((s, true))
            } else {
                None
            }
        })
    }
}

/// One sentence of the grammar: `count` objects (1–3) of one colour and shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Caption {
    pub count: usize,
    pub colour: Colour,
    pub shape: Shape,
}

/// Number of distinct captions (3 × 8 × 4).
pub const NUM_CAPTIONS: usize = COUNT_WORDS.len() * Colour::ALL.len() * Shape::ALL.len();

impl Caption {
    /// Every caption of the grammar, in `index` order.
    pub fn all() -> Vec<Caption> {
        (0..NUM_CAPTIONS).map(Caption::from_index).collect()
    }

    /// A dense index in `0..NUM_CAPTIONS` (count-major, then colour, then shape).
    pub fn index(&self) -> usize {
        ((self.count - 1) * Colour::ALL.len() + self.colour.index()) * Shape::ALL.len()
            + self.shape.index()
    }

    /// The caption at `index % NUM_CAPTIONS`.
    pub fn from_index(index: usize) -> Caption {
        let index = index % NUM_CAPTIONS;
        let shapes = Shape::ALL.len();
        let colours = Colour::ALL.len();
        Caption {
            count: index / (shapes * colours) + 1,
            colour: Colour::ALL[(index / shapes) % colours],
            shape: Shape::ALL[index % shapes],
        }
    }

    /// The caption text, e.g. `"one red circle"`, `"three black stars"`.
    pub fn text(&self) -> String {
        let noun = if self.count == 1 {
            self.shape.singular()
        } else {
            self.shape.plural()
        };
        format!(
            "{} {} {noun}",
            COUNT_WORDS[self.count - 1],
            self.colour.word()
        )
    }

    /// Parses a caption of the grammar after [`normalize_caption`]; `None` for anything
    /// else (an unknown word, a wrong number agreement such as `"two red circle"`, extra
    /// words).
    pub fn parse(text: &str) -> Option<Caption> {
        let norm = normalize_caption(text);
        let words: Vec<&str> = norm.split(' ').collect();
        let [count, colour, noun] = words.as_slice() else {
            return None;
        };
        let count = COUNT_WORDS.iter().position(|w| w == count)? + 1;
        let colour = Colour::from_word(colour)?;
        let (shape, plural) = Shape::from_word(noun)?;
        if plural != (count > 1) {
            return None;
        }
        Some(Caption {
            count,
            colour,
            shape,
        })
    }
}

/// The normal form exact-match accuracy compares: lower case, words separated by single
/// spaces, no surrounding whitespace and no trailing full stop.
pub fn normalize_caption(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let joined = words.join(" ");
    joined.trim_end_matches('.').trim_end().to_string()
}

/// How a scene's background is painted. Backgrounds are muted (greyish) tones, so they never
/// read as one of the saturated object colours, and always far from the objects' colour.
#[derive(Clone, Debug, PartialEq)]
pub enum Background {
    Solid([u8; 3]),
    /// A linear blend from `from` to `to`, top to bottom or left to right.
    Gradient {
        from: [u8; 3],
        to: [u8; 3],
        vertical: bool,
    },
}

/// One drawn object: centre and circumradius in pixels, rotation in radians.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub cx: f32,
    pub cy: f32,
    pub radius: f32,
    pub rotation: f32,
}

/// Everything the renderer needs to draw one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub caption: Caption,
    pub size: usize,
    /// The objects' colour (the caption colour, jittered).
    pub rgb: [u8; 3],
    pub background: Background,
    pub objects: Vec<Object>,
    /// Seeds the per-pixel noise.
    pub noise_seed: u64,
    /// Amplitude of the uniform per-pixel noise, in 8-bit steps.
    pub noise: u8,
}

/// Smallest and largest object circumradius, as fractions of the image side.
const MIN_RADIUS: f32 = 0.09;
const MAX_RADIUS: f32 = 0.18;
/// Minimum Euclidean RGB distance between the background and the objects' colour.
const MIN_CONTRAST: f32 = 110.0;

fn jitter(rng: &mut StdRng, rgb: [u8; 3], amount: i32) -> [u8; 3] {
    rgb.map(|c| (c as i32 + rng.random_range(-amount..=amount)).clamp(0, 255) as u8)
}

fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (x as f32 - y as f32).powi(2))
        .sum::<f32>()
        .sqrt()
}

fn muted_tone(rng: &mut StdRng) -> [u8; 3] {
    let grey: i32 = rng.random_range(55..=185);
    [0; 3].map(|_| (grey + rng.random_range(-28..=28)).clamp(0, 255) as u8)
}

impl Scene {
    /// A random scene showing `caption`: the objects get independent sizes, positions and
    /// rotations and never overlap; the background contrasts with the objects.
    pub fn random(caption: Caption, size: usize, rng: &mut StdRng) -> Scene {
        let rgb = jitter(rng, caption.colour.rgb(), 12);
        let background = loop {
            let from = muted_tone(rng);
            let bg = if rng.random_bool(0.5) {
                Background::Solid(from)
            } else {
                Background::Gradient {
                    from,
                    to: jitter(rng, from, 45),
                    vertical: rng.random_bool(0.5),
                }
            };
            let ends = match &bg {
                Background::Solid(c) => [*c, *c],
                Background::Gradient { from, to, .. } => [*from, *to],
            };
            if ends.iter().all(|&c| distance(c, rgb) >= MIN_CONTRAST) {
                break bg;
            }
        };
        let s = size as f32;
        let objects = 'placement: loop {
            let mut objects: Vec<Object> = Vec::with_capacity(caption.count);
            for _ in 0..caption.count {
                let mut placed = false;
                for _ in 0..100 {
                    let radius = rng.random_range(MIN_RADIUS * s..=MAX_RADIUS * s);
                    let lo = radius + 1.0;
                    let hi = s - radius - 1.0;
                    let o = Object {
                        cx: rng.random_range(lo..=hi),
                        cy: rng.random_range(lo..=hi),
                        radius,
                        rotation: rng.random_range(-0.3f32..=0.3),
                    };
                    let clear = objects.iter().all(|p| {
                        let d = ((p.cx - o.cx).powi(2) + (p.cy - o.cy).powi(2)).sqrt();
                        d >= p.radius + o.radius + 2.0
                    });
                    if clear {
                        objects.push(o);
                        placed = true;
                        break;
                    }
                }
                if !placed {
                    continue 'placement;
                }
            }
            break objects;
        };
        Scene {
            caption,
            size,
            rgb,
            background,
            objects,
            noise_seed: rng.random(),
            noise: 6,
        }
    }

    /// Draws the scene: RGB, 8 bits per channel, row-major, `size × size × 3` bytes. Object
    /// edges are anti-aliased with 4×4 samples per pixel.
    pub fn render(&self) -> Vec<u8> {
        let n = self.size;
        let mut out = vec![0u8; n * n * 3];
        let mut noise = StdRng::seed_from_u64(self.noise_seed);
        let amp = self.noise as i32;
        let fg = self.rgb.map(|c| c as f32);
        let outlines: Vec<Outline> = self
            .objects
            .iter()
            .map(|o| Outline::new(self.caption.shape, o))
            .collect();
        for y in 0..n {
            for x in 0..n {
                let bg = self.background_at(x, y);
                let cover = coverage(&outlines, x, y);
                let px = &mut out[(y * n + x) * 3..(y * n + x) * 3 + 3];
                for c in 0..3 {
                    let v = bg[c] * (1.0 - cover) + fg[c] * cover;
                    let jittered = v.round() as i32 + noise.random_range(-amp..=amp);
                    px[c] = jittered.clamp(0, 255) as u8;
                }
            }
        }
        out
    }

    fn background_at(&self, x: usize, y: usize) -> [f32; 3] {
        match &self.background {
            Background::Solid(c) => c.map(|v| v as f32),
            Background::Gradient { from, to, vertical } => {
                let along = if *vertical { y } else { x } as f32;
                let t = along / (self.size.max(2) - 1) as f32;
                [0, 1, 2].map(|c| from[c] as f32 * (1.0 - t) + to[c] as f32 * t)
            }
        }
    }
}

/// Fraction of pixel `(x, y)` covered by an object (4×4 supersampling).
fn coverage(outlines: &[Outline], x: usize, y: usize) -> f32 {
    let (px, py) = (x as f32, y as f32);
    let mut hits = 0u32;
    for o in outlines.iter().filter(|o| o.near(px + 0.5, py + 0.5)) {
        for sy in 0..4 {
            for sx in 0..4 {
                let qx = px + (sx as f32 + 0.5) / 4.0;
                let qy = py + (sy as f32 + 0.5) / 4.0;
                if o.contains(qx, qy) {
                    hits += 1;
                }
            }
        }
    }
    (hits as f32 / 16.0).min(1.0)
}

/// An object ready for point tests: its frame and, for polygons, its vertices. Shapes are
/// scaled so that their areas are comparable at one circumradius.
struct Outline {
    shape: Shape,
    object: Object,
    sin: f32,
    cos: f32,
    polygon: Vec<(f32, f32)>,
}

impl Outline {
    fn new(shape: Shape, o: &Object) -> Self {
        let (sin, cos) = o.rotation.sin_cos();
        let r = o.radius;
        let polygon = match shape {
            Shape::Triangle => regular_polygon(3, r, r),
            Shape::Star => regular_polygon(5, r, 0.45 * r),
            Shape::Circle | Shape::Square => Vec::new(),
        };
        Self {
            shape,
            object: *o,
            sin,
            cos,
            polygon,
        }
    }

    /// Whether the pixel centred at `(x, y)` can touch the object.
    fn near(&self, x: f32, y: f32) -> bool {
        let o = &self.object;
        (o.cx - x).abs() <= o.radius + 1.0 && (o.cy - y).abs() <= o.radius + 1.0
    }

    /// Whether point `(x, y)` (pixel coordinates, y down) lies inside the object.
    fn contains(&self, x: f32, y: f32) -> bool {
        let o = &self.object;
        // Into the object's frame: centred, unrotated, y up.
        let (dx, dy) = (x - o.cx, o.cy - y);
        let (s, c) = (self.sin, self.cos);
        let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
        let r = o.radius;
        match self.shape {
            Shape::Circle => u * u + v * v <= (0.85 * r) * (0.85 * r),
            Shape::Square => u.abs() <= 0.7 * r && v.abs() <= 0.7 * r,
            Shape::Triangle | Shape::Star => in_polygon(&self.polygon, u, v),
        }
    }
}

/// Vertices of a regular polygon (`inner == outer`) or star (`inner < outer`) with `points`
/// points, the first pointing up.
fn regular_polygon(points: usize, outer: f32, inner: f32) -> Vec<(f32, f32)> {
    let star = inner < outer;
    let n = if star { 2 * points } else { points };
    (0..n)
        .map(|k| {
            let angle = std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::TAU / n as f32;
            let radius = if star && k % 2 == 1 { inner } else { outer };
            (radius * angle.cos(), radius * angle.sin())
        })
        .collect()
}

/// Even-odd rule (works for the non-convex star).
fn in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// One image with its caption.
#[derive(Clone, Debug)]
pub struct Sample {
    pub caption: Caption,
    /// RGB8, row-major, `size × size × 3`.
    pub pixels: Vec<u8>,
    pub size: usize,
    /// Where the objects were drawn (for dense training targets).
    pub objects: Vec<Object>,
}

/// The generator of sample `index` of the set with `seed` (SplitMix64 of both, so nearby
/// seeds and indices give unrelated streams).
fn sample_rng(seed: u64, index: u64) -> StdRng {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index)
        .wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Sample `index` of the set with `seed`: a uniformly random caption and a scene for it.
pub fn sample(seed: u64, index: u64, size: usize) -> Sample {
    let mut rng = sample_rng(seed, index);
    let caption = Caption::from_index(rng.random_range(0..NUM_CAPTIONS));
    sample_for(caption, &mut rng, size)
}

/// A random scene for a given caption, rendered.
pub fn sample_for(caption: Caption, rng: &mut StdRng, size: usize) -> Sample {
    let scene = Scene::random(caption, size, rng);
    Sample {
        caption,
        pixels: scene.render(),
        size,
        objects: scene.objects,
    }
}

/// Samples `start..start + n` of the set with `seed`.
pub fn samples(seed: u64, start: u64, n: usize, size: usize) -> Vec<Sample> {
    (start..start + n as u64)
        .map(|i| sample(seed, i, size))
        .collect()
}
