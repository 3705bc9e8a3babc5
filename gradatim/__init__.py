"""Gradatim: a Kubernetes-native operator that runs multi-stage LLM post-training recipes, step by step."""

__version__ = "0.1.0"
