"""The public F2LLM-v2 training data (Hugging Face dataset codefuse-ai/F2LLM-v2)."""
