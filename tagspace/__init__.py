"""#TagSpace: convolutional post embeddings trained on hashtags with the WARP loss.

The pure model library (Weston, Chopra, Adams, EMNLP 2014): text processing, vocabularies,
the CNN and WSABIE encoders, WARP, Hogwild training, baselines, evaluation and checkpoints.
It never imports the daemon or any Kafka, Redis, HTTP or metrics code.
"""

__version__ = "0.1.0"
