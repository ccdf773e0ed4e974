"""The Accelerate training loop, optimisers and schedules, and run-directory checkpoints."""
