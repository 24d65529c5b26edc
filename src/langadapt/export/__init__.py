"""Export to other runtimes: GGUF files for llama.cpp (`export gguf`)."""
