//! Perceiver resampler (OpenFlamingo helpers.py `PerceiverResampler`). (To be implemented.)
