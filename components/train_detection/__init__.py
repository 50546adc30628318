"""The train_detection component."""
