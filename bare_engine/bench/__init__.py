"""`bare-engine bench`: throughput of the engine against transformers, and decode-step measurements."""
