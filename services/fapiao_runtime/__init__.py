"""Shared service runtime: configuration, logging, gRPC bootstrap, Kafka, PostgreSQL, outbox and inbox.

Every Fapiao service builds on these pieces so that reliability patterns (transactional outbox,
idempotent consumers, graceful shutdown) are written once.
"""
