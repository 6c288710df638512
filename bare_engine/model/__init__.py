"""The model: config, decoder, weight loading, LoRA, sources, tokenizer, GGUF import, layers."""
