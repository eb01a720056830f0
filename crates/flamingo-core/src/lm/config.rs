//! Reading HF `config.json` files: both the transformers-4 and -5 spellings.

use std::path::Path;

use crate::{Error, Result};

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON ({e})")))
}

/// Deserialises a family's config struct, mapping serde errors to a config error on `path`.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, raw: &serde_json::Value) -> Result<T> {
    serde_json::from_value(raw.clone()).map_err(|e| Error::config(path, e.to_string()))
}

/// RoPE base and partial-rotary fraction from either form: transformers 4 keeps `rope_theta`
/// (and `rotary_pct`/`partial_rotary_factor`) at the top level, transformers 5 nests them in
/// a `rope_parameters` object.
pub fn rope_settings(raw: &serde_json::Value) -> (f64, f64) {
    let params = raw.get("rope_parameters");
    let pick = |names: &[&str]| -> Option<f64> {
        for n in names {
            if let Some(v) = params.and_then(|p| p.get(*n)).and_then(|v| v.as_f64()) {
                return Some(v);
            }
            if let Some(v) = raw.get(*n).and_then(|v| v.as_f64()) {
                return Some(v);
            }
        }
        None
    };
    let theta = pick(&["rope_theta", "rotary_emb_base"]).unwrap_or(10_000.0);
    let fraction = pick(&["partial_rotary_factor", "rotary_pct"]).unwrap_or(1.0);
    (theta, fraction)
}
