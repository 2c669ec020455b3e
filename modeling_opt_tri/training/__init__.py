"""Pre-training loop pieces: the accelerate loop, atomic checkpoints, retrieval evaluation."""
