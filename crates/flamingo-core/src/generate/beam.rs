//! Finished-hypothesis bookkeeping for beam search, as HF's `BeamHypotheses`.

/// A finished (or, at the end, still running) beam.
#[derive(Clone, Debug)]
pub struct Hypothesis {
    /// Length-normalised score: `sum_logprobs / generated_len ^ length_penalty`.
    pub score: f32,
    /// Generated tokens (prompt excluded), including the stop token when it ended on one.
    pub tokens: Vec<u32>,
}

/// The best `capacity` hypotheses of one sample.
#[derive(Clone, Debug)]
pub struct BeamHypotheses {
    capacity: usize,
    length_penalty: f64,
    early_stopping: bool,
    pub hyps: Vec<Hypothesis>,
}

impl BeamHypotheses {
    pub fn new(capacity: usize, length_penalty: f64, early_stopping: bool) -> Self {
        Self {
            capacity,
            length_penalty,
            early_stopping,
            hyps: Vec::with_capacity(capacity + 1),
        }
    }

    fn normalise(&self, sum_logprobs: f32, generated_len: usize) -> f32 {
        // HF divides by generated_len ** length_penalty; a stop token as the very first
        // token would divide by 0 ** lp, so count at least one token.
        let len = generated_len.max(1) as f64;
        (sum_logprobs as f64 / len.powf(self.length_penalty)) as f32
    }

    fn worst(&self) -> f32 {
        self.hyps
            .iter()
            .map(|h| h.score)
            .fold(f32::INFINITY, f32::min)
    }

    /// Offers a hypothesis; keeps it if there is room or it beats the worst kept one.
    pub fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f32, generated_len: usize) {
        let score = self.normalise(sum_logprobs, generated_len);
        if self.hyps.len() < self.capacity || score > self.worst() {
            self.hyps.push(Hypothesis { score, tokens });
            if self.hyps.len() > self.capacity {
                let (worst_idx, _) = self
                    .hyps
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.score.total_cmp(&b.1.score))
                    .expect("non-empty");
                self.hyps.remove(worst_idx);
            }
        }
    }

    /// Whether no running beam can still beat the kept hypotheses (HF `is_done` with
    /// `early_stopping` True or False).
    pub fn is_done(&self, best_running_sum_logprobs: f32, generated_len: usize) -> bool {
        if self.hyps.len() < self.capacity {
            return false;
        }
        if self.early_stopping {
            return true;
        }
        let best_attainable = self.normalise(best_running_sum_logprobs, generated_len);
        self.worst() >= best_attainable
    }

    /// Hypotheses, best first.
    pub fn sorted(&self) -> Vec<Hypothesis> {
        let mut h = self.hyps.clone();
        h.sort_by(|a, b| b.score.total_cmp(&a.score));
        h
    }
}
