//! The benchmark presets of ../shared/bench/reference_bench.py (`PRESETS`), field for field, so
//! that both programs time the same work: vision tower, LM shape, cross-attention interval,
//! batch sizes and token counts.

/// A CLIP vision tower (HF `CLIPVisionConfig` fields).
#[derive(Clone, Debug)]
pub struct VisionDims {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

/// `VIT_L14` in reference_bench.py: ViT-L/14 at 224, QuickGELU.
pub const VIT_L14: VisionDims = VisionDims {
    hidden_size: 1024,
    intermediate_size: 4096,
    num_hidden_layers: 24,
    num_attention_heads: 16,
    image_size: 224,
    patch_size: 14,
};

/// `VIT_B16` in reference_bench.py: ViT-B/16 at 224, QuickGELU.
pub const VIT_B16: VisionDims = VisionDims {
    hidden_size: 768,
    intermediate_size: 3072,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    image_size: 224,
    patch_size: 16,
};

/// The language model of a preset, as the reference constructs it.
#[derive(Clone, Debug)]
pub enum LmDims {
    /// `OPTConfig(hidden_size, ffn_dim, num_hidden_layers, num_attention_heads, vocab_size,
    /// word_embed_proj_dim, max_position_embeddings)`, other fields at HF defaults (ReLU,
    /// pre-LN, biases, tied head).
    Opt {
        hidden_size: usize,
        ffn_dim: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        vocab_size: usize,
        word_embed_proj_dim: usize,
        max_position_embeddings: usize,
    },
    /// `MptConfig(expansion_ratio=4, max_seq_len=2048, vocab_size=50432,
    /// attn_config={"alibi": True}, no_bias=True, d_model, n_heads, n_layers)`.
    Mpt {
        d_model: usize,
        n_heads: usize,
        n_layers: usize,
        expansion_ratio: usize,
        max_seq_len: usize,
        vocab_size: usize,
    },
}

impl LmDims {
    pub fn num_layers(&self) -> usize {
        match self {
            LmDims::Opt {
                num_hidden_layers, ..
            } => *num_hidden_layers,
            LmDims::Mpt { n_layers, .. } => *n_layers,
        }
    }
}

/// One training workload: `(batch, images per sample, text tokens)`.
#[derive(Clone, Debug)]
pub struct TrainShape {
    pub label: &'static str,
    pub batch: usize,
    pub images: usize,
    pub tokens: usize,
}

#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    /// The device the reference runs the preset on ("cpu" in f32, "cuda" in bf16).
    pub device: &'static str,
    pub vision: VisionDims,
    pub lm: LmDims,
    /// `cross_attn_every_n_layers`: a block before LM layer `i` when `(i + 1) % n == 0`.
    pub every_n: usize,
    pub encode_batch: usize,
    pub generate_batches: Vec<usize>,
    pub train: Vec<TrainShape>,
}

impl Preset {
    /// The LM layers that get a gated cross-attention block (flamingo_lm.py `init_flamingo`).
    pub fn cross_attn_layers(&self) -> Vec<usize> {
        (0..self.lm.num_layers())
            .filter(|i| (i + 1) % self.every_n == 0)
            .collect()
    }
}

/// `<|endofchunk|>` and `<image>` ids: "any ids inside the vocabulary", as in the reference.
pub const EOC: u32 = 3;
pub const MEDIA: u32 = 4;
/// Text tokens are drawn from `[10, 30000)` (`torch.randint(10, 30000, ...)`).
pub const TOKEN_RANGE: (u32, u32) = (10, 30000);
/// The generate workload: a 16-token prompt with one `<image>`, 32 new tokens.
pub const GENERATE_PROMPT_TOKENS: usize = 16;
pub const GENERATE_NEW_TOKENS: usize = 32;
/// The prefill workload: 1 image + 64 tokens.
pub const PREFILL_TOKENS: usize = 64;

fn mpt(d_model: usize, n_heads: usize, n_layers: usize) -> LmDims {
    LmDims::Mpt {
        d_model,
        n_heads,
        n_layers,
        expansion_ratio: 4,
        max_seq_len: 2048,
        vocab_size: 50432,
    }
}

fn gpu_train() -> Vec<TrainShape> {
    vec![
        TrainShape {
            label: "laion_b16_img1_tok32",
            batch: 16,
            images: 1,
            tokens: 32,
        },
        TrainShape {
            label: "mmc4_b4_img5_tok256",
            batch: 4,
            images: 5,
            tokens: 256,
        },
    ]
}

pub fn all() -> Vec<Preset> {
    vec![
        Preset {
            name: "small-cpu",
            device: "cpu",
            vision: VIT_B16,
            lm: LmDims::Opt {
                hidden_size: 768,
                ffn_dim: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                vocab_size: 50272,
                word_embed_proj_dim: 768,
                max_position_embeddings: 2048,
            },
            every_n: 1,
            encode_batch: 4,
            generate_batches: vec![1, 4],
            train: vec![TrainShape {
                label: "laion_b4_img1_tok32",
                batch: 4,
                images: 1,
                tokens: 32,
            }],
        },
        Preset {
            name: "3B-vitl-mpt1b",
            device: "cuda",
            vision: VIT_L14,
            lm: mpt(2048, 16, 24),
            every_n: 1,
            encode_batch: 64,
            generate_batches: vec![1, 8],
            train: gpu_train(),
        },
        Preset {
            name: "9B-vitl-mpt7b",
            device: "cuda",
            vision: VIT_L14,
            lm: mpt(4096, 32, 32),
            every_n: 4,
            encode_batch: 64,
            generate_batches: vec![1, 8],
            train: gpu_train(),
        },
        // Not in reference_bench.py: a seconds-long smoke run of the harness itself (tests,
        // `scripts/gpu/run.sh --dry-run` checks), with an MPT LM like the GPU presets.
        Preset {
            name: "tiny",
            device: "cpu",
            vision: VisionDims {
                hidden_size: 48,
                intermediate_size: 96,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                image_size: 32,
                patch_size: 8,
            },
            lm: LmDims::Mpt {
                d_model: 64,
                n_heads: 4,
                n_layers: 4,
                expansion_ratio: 4,
                max_seq_len: 2048,
                vocab_size: 30016,
            },
            every_n: 2,
            encode_batch: 4,
            generate_batches: vec![1, 2],
            train: vec![TrainShape {
                label: "tiny_b2_img1_tok32",
                batch: 2,
                images: 1,
                tokens: 32,
            }],
        },
    ]
}

pub fn by_name(name: &str) -> Option<Preset> {
    all().into_iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_attention_every_n_follows_the_reference_rule() {
        let p = by_name("9B-vitl-mpt7b").unwrap();
        assert_eq!(p.cross_attn_layers(), vec![3, 7, 11, 15, 19, 23, 27, 31]);
        let p = by_name("3B-vitl-mpt1b").unwrap();
        assert_eq!(p.cross_attn_layers(), (0..24).collect::<Vec<_>>());
    }
}
