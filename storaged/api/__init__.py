"""Shared HTTP plumbing: middleware, JSON bodies, app keys, health.  Family handlers live in their family package."""
