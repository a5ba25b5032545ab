"""Experiment tracking (--track): metrics.jsonl followed from the launcher into TensorBoard, W&B, MLflow."""
