//! (To be implemented.)
