"""Native CPU kernels, compiled from C at first use (build.py): products on GGML-quantized
weights as stored in GGUF files (ggml.py)."""
