"""Encoders: text tokenising, batching and feature extraction (with the feature cache), CLIP
prompts and image scoring, and the CPU image tower."""
