"""Kubernetes operator for UnlearningJob resources (kopf). It never imports torch."""

__version__ = "0.1.0"
