"""gradguide: few-shot adaptation of language models, steered by the gradient itself."""

__version__ = "0.1.0"
