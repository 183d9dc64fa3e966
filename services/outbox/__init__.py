"""The transactional outbox relay: what the database committed, the broker receives."""
