//! Logits processors, applied per row on the host in HF's order: repetition penalty,
//! no-repeat n-gram, minimum length, banned tokens; then for sampling temperature, top-k and
//! top-p. Scores are `f32`; banned entries become −∞.

use rand::Rng;

use super::config::GenerationConfig;

/// Adjusts `scores` (one row, vocabulary-wide) given the row's tokens so far (`history`:
/// prompt + generated) and how many were generated.
pub fn process(
    scores: &mut [f32],
    history: &[u32],
    generated: usize,
    cfg: &GenerationConfig,
    eos: &[u32],
    media_token_id: u32,
) {
    if cfg.repetition_penalty != 1.0 {
        let p = cfg.repetition_penalty as f32;
        let mut seen = vec![false; scores.len()];
        for &t in history {
            let t = t as usize;
            if t < scores.len() && !seen[t] {
                seen[t] = true;
                let s = scores[t];
                scores[t] = if s < 0.0 { s * p } else { s / p };
            }
        }
    }
    if cfg.no_repeat_ngram_size > 0 {
        for t in banned_ngram_tokens(history, cfg.no_repeat_ngram_size) {
            if (t as usize) < scores.len() {
                scores[t as usize] = f32::NEG_INFINITY;
            }
        }
    }
    if generated < cfg.min_new_tokens {
        for &e in eos {
            if (e as usize) < scores.len() {
                scores[e as usize] = f32::NEG_INFINITY;
            }
        }
    }
    if !cfg.allow_media_token && (media_token_id as usize) < scores.len() {
        scores[media_token_id as usize] = f32::NEG_INFINITY;
    }
}

/// Tokens that would repeat an n-gram already present in `history` (HF `NoRepeatNGramLogitsProcessor`).
pub fn banned_ngram_tokens(history: &[u32], n: usize) -> Vec<u32> {
    // No complete n-gram exists yet: nothing to ban.
    if n == 0 || history.len() < n {
        return Vec::new();
    }
    let prefix = &history[history.len() + 1 - n..];
    let mut banned = Vec::new();
    for start in 0..=history.len() - n {
        if &history[start..start + n - 1] == prefix {
            banned.push(history[start + n - 1]);
        }
    }
    banned
}

/// Index of the largest score (the first one on ties, like `torch.argmax`).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax` of one row, in f64 for a stable sum.
pub fn log_softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = scores.iter().map(|&s| ((s - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    scores.iter().map(|&s| (s as f64 - lse) as f32).collect()
}

/// Temperature, top-k and top-p on logits, then a draw from the softmax.
pub fn sample(scores: &mut [f32], cfg: &GenerationConfig, rng: &mut impl Rng) -> u32 {
    if cfg.temperature != 1.0 {
        let t = cfg.temperature as f32;
        for s in scores.iter_mut() {
            *s /= t;
        }
    }
    if cfg.top_k > 0 && cfg.top_k < scores.len() {
        let mut sorted: Vec<f32> = scores.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let threshold = sorted[cfg.top_k - 1];
        for s in scores.iter_mut() {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if cfg.top_p < 1.0 {
        // Keep the smallest set of most likely tokens whose probability reaches top_p
        // (HF TopPLogitsWarper: drop tokens whose ascending cumulative mass is ≤ 1 − top_p).
        let probs = softmax(scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[a].total_cmp(&probs[b]));
        let mut cumulative = 0.0f64;
        let last = order.len() - 1;
        for (rank, &i) in order.iter().enumerate() {
            cumulative += probs[i] as f64;
            if cumulative <= 1.0 - cfg.top_p && rank < last {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
    let probs = softmax(scores);
    let r: f64 = rng.random::<f64>();
    let mut acc = 0.0f64;
    let mut fallback = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            fallback = i;
            acc += p as f64;
            if r < acc {
                return i as u32;
            }
        }
    }
    fallback as u32
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_ban_finds_every_continuation_of_the_current_prefix() {
        // history "1 2 3 1 2": the bigram prefix "2" was followed by 3 → ban 3 for n=2;
        // for n=3 the prefix "1 2" was followed by 3.
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 2), vec![3]);
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert_eq!(banned_ngram_tokens(&[1, 2], 3), Vec::<u32>::new());
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            allow_media_token: true,
            ..Default::default()
        };
        let mut s = vec![4.0, -4.0, 1.0];
        process(&mut s, &[0, 1, 1], 0, &cfg, &[], 99);
        assert_eq!(s, vec![2.0, -8.0, 1.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        let cfg = GenerationConfig {
            do_sample: true,
            top_p: 0.5,
            ..Default::default()
        };
        // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        for _ in 0..20 {
            let mut s = vec![3.0, 2.0, 1.0, 0.0];
            assert_eq!(sample(&mut s, &cfg, &mut rng), 0);
        }
    }
}
