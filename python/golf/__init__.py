"""golf: a Tiered Residual Predictor for OpenAI's Parameter Golf challenge.

Compiled ops are reached through golf.ops only; data, byte tables and BPB live in golf.data.
"""

__version__ = "0.1.0"
