//! Hyper-parameters of the Flamingo modules, with the reference's defaults (spec §3).

use serde::{Deserialize, Serialize};

/// `PerceiverResampler` settings. OpenFlamingo never changes the defaults (spec §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PerceiverConfig {
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub num_latents: usize,
    pub ff_mult: usize,
}

impl Default for PerceiverConfig {
    fn default() -> Self {
        Self {
            depth: 6,
            heads: 8,
            dim_head: 64,
            num_latents: 64,
            ff_mult: 4,
        }
    }
}

/// `GatedCrossAttentionBlock` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CrossAttnConfig {
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
    /// `true` (the releases): text attends only to the image immediately preceding it
    /// (`text_time == media_time`); `false`: to every preceding image (`>=`).
    pub only_attend_immediate_media: bool,
}

impl Default for CrossAttnConfig {
    fn default() -> Self {
        Self {
            heads: 8,
            dim_head: 64,
            ff_mult: 4,
            only_attend_immediate_media: true,
        }
    }
}
