"""forecaster package."""
