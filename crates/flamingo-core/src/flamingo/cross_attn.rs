//! Masked and gated cross-attention (OpenFlamingo helpers.py). (To be implemented.)
