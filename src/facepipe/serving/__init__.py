"""Online recognition: `facepipe serve` (HTTP, batched) and the `facepipe-recognize` MLflow model, on one recognizer."""
