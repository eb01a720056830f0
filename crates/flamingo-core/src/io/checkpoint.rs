//! OpenFlamingo checkpoints. (To be implemented.)
