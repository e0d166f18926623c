"""The audit trail: append-only, hash-chained per entity, checkpointed with an HMAC."""
