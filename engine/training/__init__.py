"""Training on Ray Train: teacher training and student distillation (TorchTrainer, DDP), resumable."""
