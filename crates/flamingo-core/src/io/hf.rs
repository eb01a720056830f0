//! HF model folder layouts. (To be implemented.)
