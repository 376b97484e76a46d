"""Fine-tuning the encoder on interactions (contrastive two-tower training)."""
