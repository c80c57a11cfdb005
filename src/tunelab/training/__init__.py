"""Training: the configuration of a training run (and LoRA), and the Trainer plumbing."""
