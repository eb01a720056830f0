//! CLIP ViT vision tower. (To be implemented.)
