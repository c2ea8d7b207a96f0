"""aha: the DeepSeek-R1 recipe — reasoning from RL with verifiable rewards — on any Hugging Face causal LM."""

__version__ = "0.1.0"
