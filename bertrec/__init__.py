"""bertrec: recommendations from pretrained BERT-family encoders, served over gRPC."""

__version__ = "0.1.0"
