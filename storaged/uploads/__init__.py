"""Resumable uploads: the tus 1.0.0 protocol at /files/ (layout, service, api)."""
