"""Models: resolving model.name (folder, hub id, .gguf) and loading model and tokenizer."""
