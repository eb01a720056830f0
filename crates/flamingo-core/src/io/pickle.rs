//! PyTorch `.pt`/`.bin` files (zip + pickle), parsed without executing anything.
//! (To be implemented.)
