"""The storage tier: replication of the tree to an S3-compatible bucket, eviction, read-through.

See :mod:`storaged.tier.service` for the protocol.
"""
