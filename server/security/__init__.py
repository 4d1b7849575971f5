"""Who may call: API-key authentication, the per-key rate limit, and TLS."""
