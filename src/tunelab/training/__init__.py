"""Training: the configuration of a training run (and LoRA), the Trainer plumbing for
text and images, and parameter counts and memory estimates."""
