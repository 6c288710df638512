"""The engine core: the step loop and its two strategies, request intake, the scheduler and KV block pool, output processing."""
