"""`bare-engine serve`: an OpenAI-compatible HTTP server over one multi-model LLMEngine.

- protocol.py: request bodies, their validation and conversion to SamplingParams; OpenAI error bodies
- responses.py: response and stream-chunk bodies
- engine_loop.py: the one thread that drives LLMEngine.step(); requests enter and leave between steps
- engine_view.py: the few engine internals the server reads (partial outputs, queue and KV counts)
- streaming.py: incremental text of a sample that never sends what a stop string may still cut
- metrics.py: Prometheus metrics
- app.py: the FastAPI routes; server.py: binding, uvicorn, graceful shutdown
"""
