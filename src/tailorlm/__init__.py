"""tailorlm: tailor language models for an application, and measure which way of tailoring wins."""

__version__ = "0.1.0"
