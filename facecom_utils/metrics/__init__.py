"""Metrics: binary classification (Task A), identity scoring and the top-1 rule, verification (Task B)."""
