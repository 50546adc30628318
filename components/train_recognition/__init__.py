"""The train_recognition component."""
