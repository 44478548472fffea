"""Examples that use jattn end to end (`examples.llama`: a small Llama-style decoder in flax nnx)."""
