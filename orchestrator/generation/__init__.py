"""Decoder LLMs across devices: what a decoder takes and gives (decoder.py), the whole model's
greedy decode in one process (reference.py), prompts (prompts.py) and the token-by-token drive
(drive.py). DESIGN: "Generation"."""
