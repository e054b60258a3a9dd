"""The model store: folders with manifests, the embedded default, GGUF import and conversion."""
