"""The running bridge: pollers, the announcer, saved state and the composition root."""
