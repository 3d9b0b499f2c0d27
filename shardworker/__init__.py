"""The Pulse worker: a supervisor that owns the broker connection and shards
that process messages, one repository always on the same shard."""
