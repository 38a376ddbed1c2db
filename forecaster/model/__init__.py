"""The Temporal Fusion Transformer: dataset building, artefacts and the fast inference path.

The only part of `forecaster` that imports torch and pytorch-forecasting (except `config`,
which is plain data so the service can read a model's settings before torch is loaded).
"""
